#!/usr/bin/env python3
"""Tiny LoRA fixtures for tests/fixtures/tiny-sdxl and diffusers' images with them applied.

    /opt/refenv/bin/python tools/reference/make_lora_references.py     (needs `pip install peft`)

Writes
  tests/fixtures/lora/tiny_lora_peft.safetensors    LoRA "x", diffusers/PEFT layout, written by
                                                    StableDiffusionXLPipeline.save_lora_weights with
                                                    its adapter metadata (r=4, lora_alpha=8)
  tests/fixtures/lora/tiny_lora_kohya.safetensors   the same tensors in kohya's SDXL layout
                                                    (lora_unet_<SGM name>, lora_te1_/lora_te2_, .alpha = 8)
  tests/fixtures/lora/tiny_lora_second.safetensors  LoRA "y", PEFT layout, rank 2, no alpha (alpha = rank)
  tests/fixtures/reference/lora.safetensors         uint8 images [1,128,128,3] per case, metadata `cases` (JSON)

and asserts that diffusers gives the same image from the kohya file as from the PEFT file,
that every adapter actually changed the weights it targets (text encoders included), and that
unfusing brings the weights back.
"""
import json
import os
import struct
import sys
import tempfile

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_config as C  # noqa: E402
from make_tiny_sdxl import unet_diffusers_to_sgm  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")
TINY = os.path.join(FIX, "tiny-sdxl")
LORA_DIR = os.path.join(FIX, "lora")
OUT = os.path.join(FIX, "reference", "lora.safetensors")

PROMPT = "a cozy cabin in a snowy forest at dusk"
RUN = dict(negative_prompt=None, num_inference_steps=3, guidance_scale=5.0, width=128, height=128, seed=11)

# LoRA "x": rank 4, alpha 8 (scale 2 per unit weight). UNet attention of several blocks, one resnet
# conv as LoCon (3x3 down, 1x1 up), q/v projections of both text encoders.
X_UNET = [
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0",
    "mid_block.attentions.0.transformer_blocks.1.attn2.to_k",
    "mid_block.attentions.0.transformer_blocks.1.attn2.to_v",
    "up_blocks.1.attentions.2.transformer_blocks.0.attn1.to_q",
    "up_blocks.1.attentions.2.transformer_blocks.0.attn1.to_out.0",
    "down_blocks.0.resnets.1.conv1",
]
# out_proj too: diffusers 0.42.1 recognises a kohya text-encoder state dict only by its
# `to_out_lora` keys (convert_state_dict_to_diffusers), and real kohya files always have them.
X_TE1 = ["text_model.encoder.layers.0.self_attn.q_proj", "text_model.encoder.layers.1.self_attn.v_proj",
         "text_model.encoder.layers.1.self_attn.out_proj"]
X_TE2 = ["text_model.encoder.layers.3.self_attn.q_proj", "text_model.encoder.layers.9.self_attn.v_proj",
         "text_model.encoder.layers.9.self_attn.out_proj"]
X_RANK, X_ALPHA = 4, 8.0

# LoRA "y": rank 2, no alpha. Overlaps x on one layer (the deltas must add), plus feed-forward,
# proj_in, a time-embedding projection and an MLP layer of the second encoder.
Y_UNET = [
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.2.attentions.1.transformer_blocks.1.ff.net.0.proj",
    "up_blocks.0.attentions.0.proj_in",
    "up_blocks.0.resnets.2.time_emb_proj",
]
Y_TE1 = []
# With an attention projection beside fc1: diffusers 0.42.1 infers a text-encoder state dict's
# type from its q/k/v/out_proj keys only.
Y_TE2 = ["text_model.encoder.layers.8.self_attn.k_proj", "text_model.encoder.layers.8.mlp.fc1"]
Y_RANK = 2


def module(root, name):
    m = root
    for part in name.split("."):
        m = getattr(m, part)
    return m


def te_module(encoder, name):
    """transformers 5 flattened CLIPTextModel (no `text_model.` level); LoRA files keep the old names."""
    try:
        return module(encoder, name)
    except AttributeError:
        return module(encoder, name.removeprefix("text_model."))


def make_factors(root, names, rank, seed, get=module):
    """Deterministic A (down) / B (up) per layer, fp16-representable so every reader gets the same values."""
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for name in names:
        w = get(root, name).weight
        out_f, in_f = w.shape[0], w.shape[1]
        if w.dim() == 4:
            kh, kw = w.shape[2], w.shape[3]
            a = torch.randn(rank, in_f, kh, kw, generator=g) * (0.6 / (in_f * kh * kw) ** 0.5)
            b = torch.randn(out_f, rank, 1, 1, generator=g) * (0.6 / rank**0.5)
        else:
            a = torch.randn(rank, in_f, generator=g) * (0.6 / in_f**0.5)
            b = torch.randn(out_f, rank, generator=g) * (0.6 / rank**0.5)
        factors[name] = (a.half().float(), b.half().float())
    return factors


def peft_layers(factors):
    return {f"{n}.lora_A.weight": a.half() for n, (a, _) in factors.items()} | {
        f"{n}.lora_B.weight": b.half() for n, (_, b) in factors.items()
    }


def adapter_metadata(names, rank, alpha):
    """The LoraConfig a training script would save. Text encoders list module suffixes, as
    diffusers' training scripts do: diffusers strips `text_model.` from the keys under
    transformers 5 but not from target_modules."""
    from peft import LoraConfig

    if all(n.startswith("text_model.") for n in names):
        names = sorted({n.rsplit(".", 1)[1] for n in names})
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=names).to_dict()
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}


def save_peft(path, pipe_cls, unet_f, te1_f, te2_f, rank, alpha):
    with tempfile.TemporaryDirectory() as tmp:
        kwargs = dict(
            unet_lora_layers=peft_layers(unet_f),
            text_encoder_lora_layers=peft_layers(te1_f) if te1_f else None,
            text_encoder_2_lora_layers=peft_layers(te2_f) if te2_f else None,
        )
        if alpha is not None:
            kwargs.update(
                unet_lora_adapter_metadata=adapter_metadata(list(unet_f), rank, alpha),
                text_encoder_lora_adapter_metadata=adapter_metadata(list(te1_f), rank, alpha) if te1_f else None,
                text_encoder_2_lora_adapter_metadata=adapter_metadata(list(te2_f), rank, alpha) if te2_f else None,
            )
        pipe_cls.save_lora_weights(tmp, safe_serialization=True, **kwargs)
        os.replace(os.path.join(tmp, "pytorch_lora_weights.safetensors"), path)


def save_kohya(path, unet_f, te1_f, te2_f, alpha):
    unet_cfg = json.load(open(os.path.join(TINY, "unet", "config.json")))
    tensors = {}

    def put(stem, a, b):
        tensors[f"{stem}.lora_down.weight"] = a.half()
        tensors[f"{stem}.lora_up.weight"] = b.half()
        tensors[f"{stem}.alpha"] = torch.tensor(alpha, dtype=torch.float16)

    for name, (a, b) in unet_f.items():
        (sgm,) = unet_diffusers_to_sgm({f"{name}.weight": None}, unet_cfg)
        sgm = sgm.removeprefix("model.diffusion_model.").removesuffix(".weight")
        put("lora_unet_" + sgm.replace(".", "_"), a, b)
    for prefix, factors in (("lora_te1_", te1_f), ("lora_te2_", te2_f)):
        for name, (a, b) in factors.items():
            put(prefix + name.replace(".", "_"), a, b)
    save_file(tensors, path, metadata={"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "8"})


def canonical_header(path):
    """safetensors writes `__metadata__` in hash-map order; rewrite the header with sorted keys
    so that regenerating gives byte-identical files (offsets are relative to the data, unchanged)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + data[8 + n:])


def load_pipe():
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(TINY, torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe):
    args = dict(RUN)
    seed = args.pop("seed")
    image = pipe(PROMPT, generator=torch.Generator("cpu").manual_seed(seed), output_type="np", **args).images
    return (image * 255).round().astype("uint8")


def weights(pipe):
    """Every weight by `component.name`, `text_model.` dropped (transformers 5 flattened
    CLIPTextModel but not CLIPTextModelWithProjection)."""
    return {f"{c}.{k.removeprefix('text_model.')}": v.detach().clone() for c in ("unet", "text_encoder", "text_encoder_2")
            for k, v in getattr(pipe, c).state_dict().items()}


def changed(before, after):
    return sorted(k for k in before if k in after and not torch.equal(before[k], after[k]))


def expected_targets(unet, te1, te2):
    def te(prefix, names):
        return [f"{prefix}.{n.removeprefix('text_model.')}.weight" for n in names]

    return sorted([f"unet.{n}.weight" for n in unet] + te("text_encoder", te1) + te("text_encoder_2", te2))


def fused_image(path, scale, targets):
    pipe = load_pipe()
    before = weights(pipe)
    pipe.load_lora_weights(path, adapter_name="x")
    pipe.fuse_lora(lora_scale=scale)
    pipe.unload_lora_weights()  # keeps the fused weights, drops the LoRA modules
    after = weights(pipe)
    got = changed(before, after)
    assert got == targets, f"{os.path.basename(path)} changed {got}, expected {targets}"
    return generate(pipe)


def main():
    import diffusers
    import peft
    import transformers
    from diffusers import StableDiffusionXLPipeline

    torch.use_deterministic_algorithms(True)
    os.makedirs(LORA_DIR, exist_ok=True)
    pipe = load_pipe()
    x_unet = make_factors(pipe.unet, X_UNET, X_RANK, 101)
    x_te1 = make_factors(pipe.text_encoder, X_TE1, X_RANK, 102, te_module)
    x_te2 = make_factors(pipe.text_encoder_2, X_TE2, X_RANK, 103, te_module)
    y_unet = make_factors(pipe.unet, Y_UNET, Y_RANK, 201)
    y_te2 = make_factors(pipe.text_encoder_2, Y_TE2, Y_RANK, 203, te_module)

    peft_path = os.path.join(LORA_DIR, "tiny_lora_peft.safetensors")
    kohya_path = os.path.join(LORA_DIR, "tiny_lora_kohya.safetensors")
    second_path = os.path.join(LORA_DIR, "tiny_lora_second.safetensors")
    save_peft(peft_path, StableDiffusionXLPipeline, x_unet, x_te1, x_te2, X_RANK, X_ALPHA)
    save_kohya(kohya_path, x_unet, x_te1, x_te2, X_ALPHA)
    save_peft(second_path, StableDiffusionXLPipeline, y_unet, {}, y_te2, Y_RANK, None)
    for path in (peft_path, kohya_path, second_path):
        canonical_header(path)
    with safe_open(peft_path, "pt") as f:
        assert "lora_adapter_metadata" in f.metadata(), "diffusers wrote no adapter metadata (alpha would be lost)"

    x_targets = expected_targets(X_UNET, X_TE1, X_TE2)
    images = {"none": generate(load_pipe())}
    for label, scale in (("0.8", 0.8), ("-1.0", -1.0)):
        images[f"x_{label}"] = fused_image(peft_path, scale, x_targets)
        from_kohya = fused_image(kohya_path, scale, x_targets)
        diff = np.abs(from_kohya.astype(int) - images[f"x_{label}"].astype(int)).max()
        assert diff == 0, f"diffusers: kohya and PEFT files give different images at {scale} (max diff {diff})"
        lora_effect = np.abs(images[f"x_{label}"].astype(int) - images["none"].astype(int)).max()
        assert lora_effect >= 20, f"LoRA x at {scale} barely changes the image (max diff {lora_effect})"

    # Two adapters at once, unfused (PEFT's per-layer x + Σ scale·B(A(x)) path), then fused
    # and unfused again: the weights must come back.
    pipe = load_pipe()
    before = weights(pipe)
    pipe.load_lora_weights(peft_path, adapter_name="x")
    pipe.load_lora_weights(second_path, adapter_name="y")
    pipe.set_adapters(["x", "y"], [0.7, 0.5])
    images["xy_0.7_0.5"] = generate(pipe)
    assert np.abs(images["xy_0.7_0.5"].astype(int) - images["x_0.8"].astype(int)).max() >= 10
    pipe.fuse_lora(adapter_names=["x", "y"])
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    after = weights(pipe)
    worst = max((before[k] - after[k]).abs().max().item() for k in before)
    assert worst < 1e-6, f"unfuse left weights off by {worst}"

    cases = {
        "none": dict(loras=[]),
        "x_0.8": dict(loras=[["tiny_lora_peft", 0.8]], diffusers="load_lora_weights + fuse_lora(lora_scale=0.8)"),
        "x_-1.0": dict(loras=[["tiny_lora_peft", -1.0]], diffusers="load_lora_weights + fuse_lora(lora_scale=-1.0)"),
        "xy_0.7_0.5": dict(loras=[["tiny_lora_peft", 0.7], ["tiny_lora_second", 0.5]],
                           diffusers="load_lora_weights x, y + set_adapters([x, y], [0.7, 0.5]), unfused"),
    }
    info = dict(
        prompt=PROMPT, scheduler="EulerDiscreteScheduler", cases=cases,
        image_to_uint8="(np_image * 255).round().astype(uint8)", **RUN,
        versions=dict(diffusers=diffusers.__version__, peft=peft.__version__, torch=torch.__version__,
                      transformers=transformers.__version__),
    )
    save_file({k: torch.from_numpy(v.copy()) for k, v in images.items()}, OUT, metadata={"cases": json.dumps(info)})
    canonical_header(OUT)
    for path in (peft_path, kohya_path, second_path, OUT):
        print(f"{os.path.relpath(path, ROOT)}: {os.path.getsize(path)} bytes")
    print("ok")


if __name__ == "__main__":
    main()
