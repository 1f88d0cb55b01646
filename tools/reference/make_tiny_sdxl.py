#!/usr/bin/env python3
"""Create the tiny random-weight SDXL fixtures.

    /opt/refenv/bin/python tools/reference/make_tiny_sdxl.py

Needs tests/fixtures/tiny-sdxl/tokenizer{,_2}/ from tools/tokenizer/build_clip_tokenizer.py.

Writes
  tests/fixtures/tiny-sdxl/                 diffusers folder (fp16 safetensors, real SDXL repo layout)
  tests/fixtures/tiny-sdxl.safetensors      same weights, single-file SGM/LDM layout (Civitai/A1111 style), fp16
  tests/fixtures/not-sdxl.safetensors       tiny SD1.5-layout single file
  tests/fixtures/truncated.safetensors      a small valid safetensors file cut to 60% of its bytes
and asserts that StableDiffusionXLPipeline.from_single_file reloads the single file bit-identically.

Every config file of the folder (tokenizer json files included) is stabilityai/stable-diffusion-xl-base-1.0's
published file with only widths/depths shrunk (tiny_config.py), legacy CLIP ids bos 0 / eos 2 / pad 1 included.
"""
import json
import math
import os
import shutil
import sys
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_config as C  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")
TINY = os.path.join(FIX, "tiny-sdxl")
SINGLE = os.path.join(FIX, "tiny-sdxl.safetensors")

# keys of a transformers config.json that describe the file, not the model
CONFIG_FILE_ONLY = ("architectures", "model_type", "torch_dtype", "transformers_version")


# --------------------------------------------------------------------------------------------
# model construction
# --------------------------------------------------------------------------------------------
def perturb_(model, seed):
    """Default init leaves norm weights = 1 and many biases = 0. Randomise them so that a
    loader/implementation that drops or swaps an affine parameter produces different numbers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and name.endswith("weight"):  # GroupNorm / LayerNorm scale
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1 and name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def build_components():
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**C.UNET)
    perturb_(unet, 1)
    # With default init the UNet output barely depends on the text / time conditioning. Strengthen the
    # cross-attention value/output projections and the resnet time-embedding projections so that
    # conditioning bugs show up clearly in the references.
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if n.endswith(("attn2.to_v.weight", "attn2.to_out.0.weight")):
                p.mul_(8.0 ** 0.5)
            elif n.endswith("time_emb_proj.weight"):
                p.mul_(3.0)

    torch.manual_seed(2)
    vae = AutoencoderKL(**C.VAE)
    perturb_(vae, 3)

    # the published text-encoder configs (legacy ids bos 0 / eos 2 / pad 1 included), shrunk;
    # the keys that only describe the file (class, dtype, writer version) are not constructor arguments
    te1_cfg = CLIPTextConfig(**{k: v for k, v in C.TEXT_ENCODER_CONFIG.items() if k not in CONFIG_FILE_ONLY})
    torch.manual_seed(4)
    te1 = CLIPTextModel(te1_cfg)
    perturb_(te1, 5)

    te2_cfg = CLIPTextConfig(**{k: v for k, v in C.TEXT_ENCODER_2_CONFIG.items() if k not in CONFIG_FILE_ONLY})
    torch.manual_seed(6)
    te2 = CLIPTextModelWithProjection(te2_cfg)
    perturb_(te2, 7)
    # transformers initialises the embeddings with std 0.02/0.01, which after 11 pre-LN layers gives
    # almost prompt-independent outputs; make them O(1) so prompts matter.
    with torch.no_grad():
        g = torch.Generator().manual_seed(8)
        for m in (te1, te2):
            emb = (m.text_model if hasattr(m, "text_model") else m).embeddings
            emb.token_embedding.weight.copy_(torch.randn(emb.token_embedding.weight.shape, generator=g) * 0.5)
            emb.position_embedding.weight.copy_(torch.randn(emb.position_embedding.weight.shape, generator=g) * 0.2)

    scheduler = EulerDiscreteScheduler.from_config(C.SCHEDULER_CONFIG)
    return unet, vae, te1, te2, scheduler


# --------------------------------------------------------------------------------------------
# diffusers -> SGM (original Stability "generative-models") single-file conversion.
# Equivalent to diffusers/scripts/convert_diffusers_to_original_sdxl.py, written generically
# from the configs instead of with hard-coded loops, plus the keys that real SDXL single files
# carry and that script drops (text_projection, logit_scale, position_ids).
# --------------------------------------------------------------------------------------------
RESNET_UNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
               ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]


def _sub_resnet(rest, table):
    for hf, sd in table:
        if rest.startswith(hf + "."):
            return sd + rest[len(hf):]
    raise KeyError(rest)


def unet_diffusers_to_sgm(sd, cfg):
    L = cfg["layers_per_block"]
    nblk = len(cfg["block_out_channels"])
    up_has_attn = ["CrossAttn" in t for t in cfg["up_block_types"]]
    fixed = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "add_embedding.linear_1.": "label_emb.0.0.",
        "add_embedding.linear_2.": "label_emb.0.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    }
    out = {}
    for k, v in sd.items():
        p = k.split(".")
        new = None
        for a, b in fixed.items():
            if k.startswith(a):
                new = b + k[len(a):]
        if new is None and p[0] == "down_blocks":
            i = int(p[1])
            if p[2] == "resnets":
                j = int(p[3])
                new = f"input_blocks.{i * (L + 1) + j + 1}.0." + _sub_resnet(".".join(p[4:]), RESNET_UNET)
            elif p[2] == "attentions":
                j = int(p[3])
                new = f"input_blocks.{i * (L + 1) + j + 1}.1." + ".".join(p[4:])
            elif p[2] == "downsamplers":
                assert p[3] == "0" and p[4] == "conv"
                new = f"input_blocks.{(i + 1) * (L + 1)}.0.op." + ".".join(p[5:])
        elif new is None and p[0] == "mid_block":
            j = int(p[2])
            if p[1] == "resnets":
                new = f"middle_block.{2 * j}." + _sub_resnet(".".join(p[3:]), RESNET_UNET)
            elif p[1] == "attentions":
                new = "middle_block.1." + ".".join(p[3:])
        elif new is None and p[0] == "up_blocks":
            i = int(p[1])
            if p[2] == "resnets":
                j = int(p[3])
                new = f"output_blocks.{i * (L + 1) + j}.0." + _sub_resnet(".".join(p[4:]), RESNET_UNET)
            elif p[2] == "attentions":
                j = int(p[3])
                new = f"output_blocks.{i * (L + 1) + j}.1." + ".".join(p[4:])
            elif p[2] == "upsamplers":
                assert p[3] == "0" and p[4] == "conv" and i < nblk - 1
                new = f"output_blocks.{i * (L + 1) + L}.{2 if up_has_attn[i] else 1}.conv." + ".".join(p[5:])
        if new is None:
            raise KeyError(f"unmapped unet key {k}")
        out["model.diffusion_model." + new] = v
    assert len(out) == len(sd)
    return out


def vae_diffusers_to_sgm(sd, cfg):
    n = len(cfg["block_out_channels"])
    out = {}
    for k, v in sd.items():
        p = k.split(".")
        new = None
        if k.startswith(("quant_conv.", "post_quant_conv.")):
            new = k
        elif p[1] in ("conv_in", "conv_out"):
            new = k
        elif p[1] == "conv_norm_out":
            new = f"{p[0]}.norm_out.{p[2]}"
        elif p[1] in ("down_blocks", "up_blocks"):
            i = int(p[2])
            lvl = i if p[1] == "down_blocks" else n - 1 - i
            name = "down" if p[1] == "down_blocks" else "up"
            if p[3] == "resnets":
                rest = ".".join(p[5:]).replace("conv_shortcut.", "nin_shortcut.")
                new = f"{p[0]}.{name}.{lvl}.block.{p[4]}.{rest}"
            elif p[3] in ("downsamplers", "upsamplers"):
                assert p[4] == "0" and p[5] == "conv"
                new = f"{p[0]}.{name}.{lvl}.{'downsample' if name == 'down' else 'upsample'}.conv.{p[6]}"
        elif p[1] == "mid_block":
            if p[2] == "resnets":
                rest = ".".join(p[4:]).replace("conv_shortcut.", "nin_shortcut.")
                new = f"{p[0]}.mid.block_{int(p[3]) + 1}.{rest}"
            elif p[2] == "attentions":
                assert p[3] == "0"
                sub = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}[p[4]]
                tail = p[-1]  # weight / bias  (to_out.0.weight -> proj_out.weight)
                new = f"{p[0]}.mid.attn_1.{sub}.{tail}"
                if sub in ("q", "k", "v", "proj_out") and tail == "weight":
                    v = v.reshape(*v.shape, 1, 1)  # Linear -> 1x1 conv
        if new is None:
            raise KeyError(f"unmapped vae key {k}")
        out["first_stage_model." + new] = v
    assert len(out) == len(sd)
    return out


def te1_diffusers_to_sgm(sd):
    out = {}
    for k, v in sd.items():
        if not k.startswith("text_model."):
            k = "text_model." + k  # transformers>=5.6 flattened CLIPTextModel
        out["conditioner.embedders.0.transformer." + k] = v
    # real SDXL checkpoints carry the (persistent in old transformers) position_ids buffer
    out["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    return out


def te2_diffusers_to_openclip(sd, n_layers):
    P = "conditioner.embedders.1.model."
    out = {}
    tm = "text_model."
    out[P + "token_embedding.weight"] = sd[tm + "embeddings.token_embedding.weight"]
    out[P + "positional_embedding"] = sd[tm + "embeddings.position_embedding.weight"]
    for i in range(n_layers):
        a = f"{tm}encoder.layers.{i}."
        b = f"{P}transformer.resblocks.{i}."
        out[b + "ln_1.weight"] = sd[a + "layer_norm1.weight"]
        out[b + "ln_1.bias"] = sd[a + "layer_norm1.bias"]
        out[b + "attn.in_proj_weight"] = torch.cat([sd[a + f"self_attn.{x}_proj.weight"] for x in "qkv"], 0)
        out[b + "attn.in_proj_bias"] = torch.cat([sd[a + f"self_attn.{x}_proj.bias"] for x in "qkv"], 0)
        out[b + "attn.out_proj.weight"] = sd[a + "self_attn.out_proj.weight"]
        out[b + "attn.out_proj.bias"] = sd[a + "self_attn.out_proj.bias"]
        out[b + "ln_2.weight"] = sd[a + "layer_norm2.weight"]
        out[b + "ln_2.bias"] = sd[a + "layer_norm2.bias"]
        out[b + "mlp.c_fc.weight"] = sd[a + "mlp.fc1.weight"]
        out[b + "mlp.c_fc.bias"] = sd[a + "mlp.fc1.bias"]
        out[b + "mlp.c_proj.weight"] = sd[a + "mlp.fc2.weight"]
        out[b + "mlp.c_proj.bias"] = sd[a + "mlp.fc2.bias"]
    out[P + "ln_final.weight"] = sd[tm + "final_layer_norm.weight"]
    out[P + "ln_final.bias"] = sd[tm + "final_layer_norm.bias"]
    # OpenCLIP computes x @ text_projection, so it is stored as [hidden, proj] (= Linear.weight.T)
    out[P + "text_projection"] = sd["text_projection.weight"].t().contiguous()
    out[P + "logit_scale"] = torch.tensor(math.log(100.0), dtype=sd["text_projection.weight"].dtype)
    used = 4 + 16 * n_layers + 1
    assert used == len(sd), (used, len(sd))
    return out


# --------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------
def write_json(path, obj, sort_keys):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=sort_keys, ensure_ascii=False)
        f.write("\n")


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def check_loaded_configs(pipe):
    """What diffusers/transformers load from the written files is the published value of every field."""
    for comp, cfg in (("unet", C.UNET_CONFIG), ("vae", C.VAE_CONFIG)):
        loaded = getattr(pipe, comp).config
        for k, v in cfg.items():
            if not k.startswith("_"):
                assert _norm(loaded[k]) == v, (comp, k, loaded[k], v)
    for comp, cfg in (("text_encoder", C.TEXT_ENCODER_CONFIG), ("text_encoder_2", C.TEXT_ENCODER_2_CONFIG)):
        loaded = getattr(pipe, comp).config
        for k, v in cfg.items():
            if k in CONFIG_FILE_ONLY:
                continue
            assert getattr(loaded, k) == v, (comp, k, getattr(loaded, k), v)
        assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (0, 2, 1), comp
    for k, v in C.SCHEDULER_CONFIG.items():
        if not k.startswith("_"):
            assert pipe.scheduler.config[k] == v, ("scheduler", k)
    assert pipe.config.force_zeros_for_empty_prompt is True
    assert pipe.watermark is None, "invisible_watermark is installed: the pipeline would watermark the references"
    print("configs: every published field reads back with its value (legacy CLIP ids 0/2/1 included)")


def check_tokenizers(tok1, tok2):
    """The published tokenizer configs give the ids recorded in tokenizer_cases.json (transformers 5
    tokenizers: the *_fast ids where the slow tokenizer differs)."""
    assert tok1.pad_token_id == 49407 and tok2.pad_token_id == 0
    assert tok1.bos_token_id == tok2.bos_token_id == 49406 and tok1.eos_token_id == tok2.eos_token_id == 49407
    assert tok1.model_max_length == tok2.model_max_length == 77
    with open(os.path.join(FIX, "tokenizer_cases.json"), encoding="utf-8") as f:
        cases = json.load(f)
    for c in cases:
        p = c["prompt"]
        for tok, key in ((tok1, "ids_tokenizer"), (tok2, "ids_tokenizer_2")):
            got = tok(p, padding="max_length", max_length=77, truncation=True).input_ids
            assert got == c.get(key + "_fast", c[key]), (key, p)
    print(f"tokenizers: the published tokenizer configs reproduce the ids of {len(cases)} tokenizer cases")


def check_pooling(pipe):
    """eos_token_id 2 is CLIP's legacy id: transformers then pools at input_ids.argmax(-1), which is the
    first 49407 (<|endoftext|>) for both tokenizers (tokenizer pads with 49407, tokenizer_2 with 0)."""
    prompts = ["a photograph of an astronaut riding a horse", "", "wow!!! #1 \"quoted\" words"]
    with torch.no_grad():
        for tok, te in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
            ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
            out = te(ids, output_hidden_states=True)
            first_eos = (ids == 49407).int().argmax(-1)
            assert bool((ids[torch.arange(len(prompts)), first_eos] == 49407).all())
            assert not bool((ids == 2).any()), "a prompt with id 2 would make the legacy check ambiguous"
            rows = out.last_hidden_state[torch.arange(len(prompts)), first_eos]
            if hasattr(out, "text_embeds"):  # CLIPTextModelWithProjection: pooled @ text_projection
                assert torch.equal(out.text_embeds, te.text_projection(rows)), "text_encoder_2 pooled position"
            else:
                assert torch.equal(out.pooler_output, rows), "text_encoder pooled position"
            # an implementation that looks for eos_token_id (2) itself would pool at position 0 instead
            assert not torch.allclose(rows, out.last_hidden_state[:, 0])
    print("pooling: eos_token_id 2 pools at the first 49407 (input_ids.argmax) for both text encoders")



def st_keys(path):
    with safe_open(path, "pt") as f:
        return list(f.keys())


def main():
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    torch.use_deterministic_algorithms(True)
    for sub in ("tokenizer", "tokenizer_2"):
        assert os.path.exists(os.path.join(TINY, sub, "vocab.json")), "run tools/tokenizer/build_clip_tokenizer.py first"
    # tokenizer_config.json / special_tokens_map.json as published (build_clip_tokenizer.py writes the same)
    for sub, files in C.TOKENIZER_FILES.items():
        for fn, content in files.items():
            write_json(os.path.join(TINY, sub, fn), content, sort_keys=True)
    tok1 = CLIPTokenizer.from_pretrained(os.path.join(TINY, "tokenizer"))
    tok2 = CLIPTokenizer.from_pretrained(os.path.join(TINY, "tokenizer_2"))
    check_tokenizers(tok1, tok2)

    unet, vae, te1, te2, scheduler = build_components()
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1, tokenizer_2=tok2, unet=unet,
        scheduler=scheduler, force_zeros_for_empty_prompt=True,
    )
    pipe.to(torch.float16)
    tmp = tempfile.mkdtemp()
    pipe.save_pretrained(tmp, safe_serialization=True)

    # copy everything except the tokenizer folders (kept in the transformers-4 / real-repo format)
    for name in os.listdir(tmp):
        if name.startswith("tokenizer"):
            continue
        dst = os.path.join(TINY, name)
        if os.path.isdir(dst):
            shutil.rmtree(dst)
        elif os.path.exists(dst):
            os.remove(dst)
        src = os.path.join(tmp, name)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, dst)
    shutil.rmtree(tmp)

    # Every config file as published by stabilityai/stable-diffusion-xl-base-1.0, shrunk (tiny_config.py).
    # save_pretrained writes the current libraries' view instead: diffusers adds every constructor
    # argument it knows (attention_type, dropout, latents_mean, shift_factor, use_quant_conv, ...) and its
    # own _diffusers_version; transformers 5 writes `dtype` for `torch_dtype` and its own version;
    # model_index.json gets feature_extractor/image_encoder entries and loses add_watermarker.
    for rel, cfg, sort in (("model_index.json", C.MODEL_INDEX, False),
                           ("unet/config.json", C.UNET_CONFIG, True),
                           ("vae/config.json", C.VAE_CONFIG, True),
                           ("text_encoder/config.json", C.TEXT_ENCODER_CONFIG, True),
                           ("text_encoder_2/config.json", C.TEXT_ENCODER_2_CONFIG, True),
                           ("scheduler/scheduler_config.json", C.SCHEDULER_CONFIG, True)):
        write_json(os.path.join(TINY, rel), cfg, sort_keys=sort)

    # transformers 5 saves CLIPTextModel with flattened keys; real SDXL repos use text_model.*
    p = os.path.join(TINY, "text_encoder", "model.safetensors")
    sd = load_file(p)
    if not all(k.startswith("text_model.") for k in sd):
        sd = {("text_model." + k if not k.startswith("text_model.") else k): v for k, v in sd.items()}
        save_file(sd, p, metadata={"format": "pt"})
    for comp, fn in (("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"),
                     ("text_encoder", "model.safetensors"), ("text_encoder_2", "model.safetensors")):
        d = load_file(os.path.join(TINY, comp, fn))
        assert all(v.dtype == torch.float16 for v in d.values()), comp
        print(f"{comp}: {len(d)} tensors, {sum(v.numel() for v in d.values())} params")

    # ---- reload from disk (fp16 -> fp32) and check it round-trips -----------------------------
    ref = StableDiffusionXLPipeline.from_pretrained(TINY, torch_dtype=torch.float32, local_files_only=True)
    for comp in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a = getattr(pipe, comp).state_dict()
        b = getattr(ref, comp).state_dict()
        assert a.keys() == b.keys(), comp
        for k in a:
            assert torch.equal(a[k].float(), b[k]), (comp, k)
    print("folder reload: identical (fp16 values)")
    check_loaded_configs(ref)
    check_pooling(ref)

    # ---- single file --------------------------------------------------------------------------
    file_sd = {}
    folder_sd = {}
    for comp, fn in (("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"),
                     ("text_encoder", "model.safetensors"), ("text_encoder_2", "model.safetensors")):
        folder_sd[comp] = load_file(os.path.join(TINY, comp, fn))
    file_sd.update(unet_diffusers_to_sgm(folder_sd["unet"], dict(ref.unet.config)))
    file_sd.update(vae_diffusers_to_sgm(folder_sd["vae"], dict(ref.vae.config)))
    file_sd.update(te1_diffusers_to_sgm(folder_sd["text_encoder"]))
    file_sd.update(te2_diffusers_to_openclip(folder_sd["text_encoder_2"], C.TE2_LAYERS))
    file_sd = {k: v.contiguous() for k, v in sorted(file_sd.items())}
    save_file(file_sd, SINGLE)
    print(f"single file: {len(file_sd)} tensors -> {SINGLE}")

    sf = StableDiffusionXLPipeline.from_single_file(SINGLE, config=TINY, local_files_only=True, torch_dtype=torch.float32)
    for comp in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a = getattr(ref, comp).state_dict()
        b = getattr(sf, comp).state_dict()
        assert a.keys() == b.keys(), (comp, set(a) ^ set(b))
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), (comp, k)
    for comp in ("scheduler",):
        assert dict(getattr(ref, comp).config) == dict(getattr(sf, comp).config), comp
    print("from_single_file: unet, vae, text_encoder, text_encoder_2 weights bit-identical to the folder; scheduler config equal")

    # ---- not-sdxl: SD1.5 layout ---------------------------------------------------------------
    g = torch.Generator().manual_seed(11)
    nsd = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.randn(8, 4, 3, 3, generator=g),
        "model.diffusion_model.input_blocks.0.0.bias": torch.randn(8, generator=g),
        "model.diffusion_model.time_embed.0.weight": torch.randn(16, 8, generator=g),
        "model.diffusion_model.out.2.weight": torch.randn(4, 8, 3, 3, generator=g),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.randn(32, 8, generator=g),
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": torch.randn(77, 8, generator=g),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.ones(8),
        "first_stage_model.encoder.conv_in.weight": torch.randn(8, 3, 3, 3, generator=g),
        "first_stage_model.decoder.conv_out.weight": torch.randn(3, 8, 3, 3, generator=g),
    }
    save_file({k: v.half() for k, v in nsd.items()}, os.path.join(FIX, "not-sdxl.safetensors"))

    # ---- truncated: small valid safetensors cut to 60% ----------------------------------------
    small = {"a.weight": torch.randn(16, 16, generator=g).half(), "b.bias": torch.randn(64, generator=g)}
    tp = os.path.join(FIX, "truncated.safetensors")
    save_file(small, tp)
    with open(tp, "rb") as f:
        data = f.read()
    with open(tp, "wb") as f:
        f.write(data[: int(len(data) * 0.6)])
    try:
        load_file(tp)
        raise AssertionError("truncated file loaded")
    except AssertionError:
        raise
    except Exception as e:  # noqa: BLE001
        print(f"truncated.safetensors ({int(len(data) * 0.6)} of {len(data)} bytes) fails to load as expected: {e}")
    for dp, _, fns in os.walk(TINY):
        for fn in fns:
            os.chmod(os.path.join(dp, fn), 0o644)
    for fn in ("tiny-sdxl.safetensors", "not-sdxl.safetensors", "truncated.safetensors"):
        os.chmod(os.path.join(FIX, fn), 0o644)
    print("ok")


if __name__ == "__main__":
    main()
