#!/usr/bin/env python3
"""Tiny SDXL refiner and a second (fp16-fix) VAE, and diffusers references for the base + refiner
ensemble, the refiner as img2img, a custom VAE and VAE tiling.

    /opt/refenv/bin/python tools/reference/make_refiner_vae_references.py

Needs tests/fixtures/tiny-sdxl/ (make_tiny_sdxl.py) and tests/fixtures/reference/{init_256.png,vae.safetensors}
(make_references.py).

Writes
  tests/fixtures/tiny-sdxl-refiner/            diffusers folder of a tiny stabilityai/stable-diffusion-xl-refiner-1.0:
                                               model_index.json, unet/ (new random weights), scheduler/, and
                                               text_encoder_2/, tokenizer_2/, vae/ as byte copies of tiny-sdxl's
  tests/fixtures/tiny-sdxl-refiner.safetensors the same refiner in the SGM single-file layout (sd_xl_refiner_1.0)
  tests/fixtures/tiny-vae-fp16-fix/            config.json + diffusion_pytorch_model.safetensors (madebyollin's config, shrunk)
  tests/fixtures/tiny-vae-fp16-fix.safetensors the same VAE in the original (LDM) layout without prefix (sdxl_vae.safetensors)
  tests/fixtures/reference/refiner.safetensors + refiner_cases.json
  tests/fixtures/reference/vae_custom.safetensors + vae_custom_cases.json

Every fixture is fp16; every reference runs diffusers on CPU in float32 from the reloaded fp16 weights.
"""
import hashlib
import os
import platform
import shutil
import sys
import tempfile

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_config as C  # noqa: E402
from make_references import to_u8  # noqa: E402
from make_tiny_sdxl import (  # noqa: E402
    perturb_,
    te2_diffusers_to_openclip,
    unet_diffusers_to_sgm,
    vae_diffusers_to_sgm,
    write_json,
)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")
TINY = os.path.join(FIX, "tiny-sdxl")
REFINER = os.path.join(FIX, "tiny-sdxl-refiner")
REFINER_FILE = os.path.join(FIX, "tiny-sdxl-refiner.safetensors")
VAE_FIX = os.path.join(FIX, "tiny-vae-fp16-fix")
VAE_FIX_FILE = os.path.join(FIX, "tiny-vae-fp16-fix.safetensors")
OUT = os.path.join(FIX, "reference")

ST = "diffusion_pytorch_model.safetensors"
SHARED = ("text_encoder_2", "tokenizer_2", "vae")  # the refiner's copies of the base's folders

ENSEMBLE_PROMPT = "a lighthouse on a cliff at dawn"
REFINER_CASES = [
    dict(name="ensemble_euler", prompt=ENSEMBLE_PROMPT, negative_prompt=None, seed=5, steps=10, guidance_scale=5.0,
         width=128, height=128, batch=1, scheduler="EulerDiscreteScheduler", denoising_end=0.8, denoising_start=0.8),
    dict(name="ensemble_dpmpp2m", prompt=ENSEMBLE_PROMPT, negative_prompt="blurry, low quality", seed=6, steps=10,
         guidance_scale=5.0, width=128, height=128, batch=1, scheduler="DPMSolverMultistepScheduler",
         denoising_end=0.8, denoising_start=0.8),
    dict(name="img2img_strength03", prompt=ENSEMBLE_PROMPT, negative_prompt=None, seed=7, steps=10, guidance_scale=5.0,
         width=128, height=128, batch=1, scheduler="EulerDiscreteScheduler", denoising_end=None, denoising_start=None,
         strength=0.3),
    dict(name="ensemble_batch2", prompt=ENSEMBLE_PROMPT, negative_prompt=None, seed=9, steps=10, guidance_scale=5.0,
         width=128, height=128, batch=2, scheduler="EulerDiscreteScheduler", denoising_end=0.8, denoising_start=0.8),
]
AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5  # StableDiffusionXLImg2ImgPipeline's defaults, passed explicitly

TILE = dict(tile_sample_min_size=64, tile_latent_min_size=8, tile_overlap_factor=0.25)


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def same_weights(a, b, what):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys(), (what, sorted(set(sa) ^ set(sb))[:5])
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), (what, k)


def check_config(loaded, published, what):
    for k, v in published.items():
        if not k.startswith("_"):
            got = loaded[k]
            got = list(got) if isinstance(got, tuple) else got
            assert got == v, (what, k, got, v)


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------
def build_refiner_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(20)
    unet = UNet2DConditionModel(**C.REFINER_UNET_ARGS)
    perturb_(unet, 21)
    # as in make_tiny_sdxl.py: make the text and time conditioning visible in the output
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if n.endswith(("attn2.to_v.weight", "attn2.to_out.0.weight")):
                p.mul_(8.0 ** 0.5)
            elif n.endswith("time_emb_proj.weight"):
                p.mul_(3.0)
    return unet


def build_vae_fix():
    from diffusers import AutoencoderKL

    torch.manual_seed(22)
    vae = AutoencoderKL(**C.VAE_FP16_FIX_ARGS)
    perturb_(vae, 23)
    return vae


def save_model_fp16(model, folder, config, sort_keys):
    """save_pretrained (fp16 safetensors), then the published config instead of diffusers' own."""
    tmp = tempfile.mkdtemp()
    model.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    os.makedirs(folder, exist_ok=True)
    shutil.copyfile(os.path.join(tmp, ST), os.path.join(folder, ST))
    shutil.rmtree(tmp)
    write_json(os.path.join(folder, "config.json"), config, sort_keys=sort_keys)
    d = load_file(os.path.join(folder, ST))
    assert all(v.dtype == torch.float16 for v in d.values()), folder
    return d


def write_refiner_folder(unet):
    if os.path.isdir(REFINER):
        shutil.rmtree(REFINER)
    os.makedirs(REFINER)
    # every file as published: keys in the published order (the unet file is sorted, model_index.json is not)
    write_json(os.path.join(REFINER, "model_index.json"), C.REFINER_MODEL_INDEX_CONFIG, sort_keys=False)
    sd = save_model_fp16(unet, os.path.join(REFINER, "unet"), C.REFINER_UNET_CONFIG, sort_keys=False)
    os.makedirs(os.path.join(REFINER, "scheduler"))
    write_json(os.path.join(REFINER, "scheduler", "scheduler_config.json"), C.REFINER_SCHEDULER_CONFIG, sort_keys=False)
    for sub in SHARED:
        os.makedirs(os.path.join(REFINER, sub))
        for fn in sorted(os.listdir(os.path.join(TINY, sub))):
            shutil.copyfile(os.path.join(TINY, sub, fn), os.path.join(REFINER, sub, fn))
            assert sha(os.path.join(TINY, sub, fn)) == sha(os.path.join(REFINER, sub, fn))
    # the published refiner's scheduler file is the base's; so is ours
    assert sha(os.path.join(TINY, "scheduler", "scheduler_config.json")) == sha(
        os.path.join(REFINER, "scheduler", "scheduler_config.json"))
    n = sum(v.numel() for v in sd.values())
    print(f"tiny-sdxl-refiner: unet {len(sd)} tensors, {n} params; {', '.join(SHARED)} byte copies of tiny-sdxl")
    return n


def check_refiner_folder(refiner, unet_fp16):
    assert refiner.text_encoder is None and refiner.tokenizer is None
    assert refiner.config.requires_aesthetics_score is True
    assert refiner.config.force_zeros_for_empty_prompt is False
    assert refiner.watermark is None, "invisible_watermark is installed: the pipeline would watermark the references"
    a = unet_fp16.state_dict()
    b = refiner.unet.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k].float(), b[k]), k
    check_config(refiner.unet.config, C.REFINER_UNET_CONFIG, "refiner unet")
    check_config(refiner.scheduler.config, C.REFINER_SCHEDULER_CONFIG, "refiner scheduler")
    assert refiner.unet.config.transformer_layers_per_block == 2  # an int, as published
    assert refiner.unet.add_embedding.linear_1.in_features == C.REFINER_TIME_IDS * C.ADD_TIME_DIM + C.TE2_PROJ
    print("tiny-sdxl-refiner: folder reload identical (fp16 values); every published field reads back; "
          "requires_aesthetics_score True, force_zeros_for_empty_prompt False, text_encoder/tokenizer None")


def write_refiner_single_file(refiner_cfg_unet, refiner_cfg_vae):
    sd = {}
    unet_sd = load_file(os.path.join(REFINER, "unet", ST))
    vae_sd = load_file(os.path.join(REFINER, "vae", ST))
    te2_sd = load_file(os.path.join(REFINER, "text_encoder_2", "model.safetensors"))
    sd.update(unet_diffusers_to_sgm(unet_sd, refiner_cfg_unet))
    sd.update(vae_diffusers_to_sgm(vae_sd, refiner_cfg_vae))
    # sd_xl_refiner_1.0.safetensors has one text encoder, bigG, as embedders.0 (OpenCLIP names)
    for k, v in te2_diffusers_to_openclip(te2_sd, C.TE2_LAYERS).items():
        assert k.startswith("conditioner.embedders.1.model.")
        sd["conditioner.embedders.0.model." + k[len("conditioner.embedders.1.model."):]] = v
    sd = {k: v.contiguous() for k, v in sorted(sd.items())}
    assert all(v.dtype == torch.float16 for v in sd.values())
    save_file(sd, REFINER_FILE)
    print(f"tiny-sdxl-refiner.safetensors: {len(sd)} tensors")
    return sd


def check_refiner_single_file(refiner):
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    file_sd = load_file(REFINER_FILE)
    keys = set(file_sd)
    # what diffusers 0.42.1 uses to tell a refiner file: CHECKPOINT_KEY_NAMES["xl_refiner"] (no
    # embedders.1 resblocks.9 key, i.e. not xl_base) and, for the text encoder,
    # CHECKPOINT_KEY_NAMES["open_clip_sdxl_refiner"]
    assert "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias" in keys
    assert "conditioner.embedders.0.model.text_projection" in keys
    assert not any(k.startswith("conditioner.embedders.1.") for k in keys)
    assert infer_diffusers_model_type(file_sd) == "xl_refiner"
    sf = StableDiffusionXLImg2ImgPipeline.from_single_file(REFINER_FILE, config=REFINER, local_files_only=True,
                                                            torch_dtype=torch.float32)
    for comp in ("unet", "vae", "text_encoder_2"):
        same_weights(getattr(refiner, comp), getattr(sf, comp), comp)
    assert sf.text_encoder is None and sf.tokenizer is None
    assert sf.config.requires_aesthetics_score is True and sf.config.force_zeros_for_empty_prompt is False
    assert dict(sf.scheduler.config) == dict(refiner.scheduler.config)
    print("tiny-sdxl-refiner.safetensors: from_single_file(config=tiny-sdxl-refiner) reloads unet, vae, "
          "text_encoder_2 bit-identically (model type inferred: xl_refiner)")


def write_vae_fix(vae):
    if os.path.isdir(VAE_FIX):
        shutil.rmtree(VAE_FIX)
    # madebyollin's config.json is not sorted (force_upcast is last): keep its key order
    sd = save_model_fp16(vae, VAE_FIX, C.VAE_FP16_FIX_CONFIG, sort_keys=False)
    # original layout, no prefix (as stabilityai/sdxl-vae's sdxl_vae.safetensors and the fp16-fix's sdxl_vae.safetensors)
    single = {}
    for k, v in vae_diffusers_to_sgm(sd, C.VAE_FP16_FIX_CONFIG).items():
        assert k.startswith("first_stage_model.")
        single[k[len("first_stage_model."):]] = v.contiguous()
    single = dict(sorted(single.items()))
    c = C.VAE_FP16_FIX_CONFIG["block_out_channels"][-1]
    assert single["encoder.mid.attn_1.q.weight"].shape == (c, c, 1, 1)
    for k in ("encoder.down.0.block.0.norm1.weight", "decoder.up.3.block.0.conv1.weight", "quant_conv.weight",
              "post_quant_conv.weight", "decoder.mid.attn_1.proj_out.weight"):
        assert k in single, k
    save_file(single, VAE_FIX_FILE)
    print(f"tiny-vae-fp16-fix: {len(sd)} tensors, {sum(v.numel() for v in sd.values())} params; "
          f"single file {len(single)} tensors")


def check_vae_fix(vae_fp16):
    from diffusers import AutoencoderKL

    folder = AutoencoderKL.from_pretrained(VAE_FIX, torch_dtype=torch.float32, local_files_only=True)
    a = vae_fp16.state_dict()
    for k, v in folder.state_dict().items():
        assert torch.equal(a[k].float(), v), k
    check_config(folder.config, C.VAE_FP16_FIX_CONFIG, "fp16-fix vae")
    assert folder.config.force_upcast is False and folder.config.sample_size == 512
    sf = AutoencoderKL.from_single_file(VAE_FIX_FILE, config=VAE_FIX, local_files_only=True, torch_dtype=torch.float32)
    same_weights(folder, sf, "fp16-fix vae single file")
    check_config(sf.config, C.VAE_FP16_FIX_CONFIG, "fp16-fix vae single file")
    base_vae = AutoencoderKL.from_pretrained(TINY, subfolder="vae", torch_dtype=torch.float32, local_files_only=True)
    assert not torch.equal(base_vae.decoder.conv_out.weight, folder.decoder.conv_out.weight)
    print("tiny-vae-fp16-fix: folder reload identical; AutoencoderKL.from_single_file(config=tiny-vae-fp16-fix) "
          "bit-identical; weights differ from tiny-sdxl/vae")
    return folder


# --------------------------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------------------------
class Recorder:
    """Raw randn draws, the VAE-encoded image latents, prepare_latents outputs and first UNet calls."""

    def __init__(self):
        import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl as m1
        import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img as m2

        self.randn, self.retrieved, self.prepared, self.unet_first = [], [], [], {}
        for m in (m1, m2):
            orig = m.randn_tensor

            def rt(*a, _orig=orig, **k):
                t = _orig(*a, **k)
                self.randn.append(t.clone())
                return t

            m.randn_tensor = rt
        orig_rl = m2.retrieve_latents

        def rl(*a, **k):
            t = orig_rl(*a, **k)
            self.retrieved.append(t.clone())
            return t

        m2.retrieve_latents = rl

    def watch_unet(self, unet, tag):
        def hook(mod, args, kwargs, out):
            if tag not in self.unet_first:
                self.unet_first[tag] = dict(sample=args[0].clone(), out=(out[0] if isinstance(out, tuple) else out.sample).clone())

        return unet.register_forward_hook(hook, with_kwargs=True)

    def wrap_prepare_latents(self, p):
        orig = p.prepare_latents

        def pl(*a, **k):
            t = orig(*a, **k)
            self.prepared.append(t.clone())
            return t

        p.prepare_latents = pl

    def reset(self):
        self.randn.clear()
        self.retrieved.clear()
        self.prepared.clear()
        self.unet_first.clear()


def stepper(steps):
    def cb(pipe, i, t, kw):
        steps.append(dict(i=i, t=float(t), **{k: v.clone() for k, v in kw.items()}))
        return kw

    return cb


def split_cfg(t, step0, B):
    pe, te, tid = step0["prompt_embeds"], step0["add_text_embeds"], step0["add_time_ids"]
    assert pe.shape[0] == 2 * B
    t["negative_prompt_embeds"], t["prompt_embeds"] = pe[:B], pe[B:]
    t["negative_pooled_prompt_embeds"], t["pooled_prompt_embeds"] = te[:B], te[B:]
    t["negative_add_time_ids"], t["add_time_ids"] = tid[:B], tid[B:]


def te2_encode(pipe, text):
    """What the refiner's encode_prompt computes with tokenizer_2 / text_encoder_2 only."""
    ids = pipe.tokenizer_2(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        o = pipe.text_encoder_2(ids, output_hidden_states=True)
    return o.hidden_states[-2], o.text_embeds


def make_scheduler(name, config):
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    return {"EulerDiscreteScheduler": EulerDiscreteScheduler,
            "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler}[name].from_config(config)


def run_refiner_cases(base, refiner, rec):
    sched_cfg = dict(base.scheduler.config)
    tensors, metas = {}, []
    for c in REFINER_CASES:
        rec.reset()
        B, name = c["batch"], c["name"]
        base.scheduler = make_scheduler(c["scheduler"], sched_cfg)
        refiner.scheduler = make_scheduler(c["scheduler"], sched_cfg)
        # the full schedule both pipelines start from (set_timesteps on a third instance)
        full = make_scheduler(c["scheduler"], sched_cfg)
        full.set_timesteps(c["steps"])
        full_ts = [float(x) for x in full.timesteps]
        gens = [torch.Generator("cpu").manual_seed(c["seed"] + i) for i in range(B)]
        common = dict(prompt=c["prompt"], negative_prompt=c["negative_prompt"], num_inference_steps=c["steps"],
                      guidance_scale=c["guidance_scale"], num_images_per_prompt=B, generator=gens)
        base_steps, ref_steps = [], []
        with torch.no_grad():
            base_lat = base(height=c["height"], width=c["width"], denoising_end=c["denoising_end"], output_type="latent",
                            callback_on_step_end=stepper(base_steps), callback_on_step_end_tensor_inputs=["latents"],
                            **common).images
            assert len(rec.randn) == 1, "base: one randn draw (the initial latents); Euler/DPM++ 2M draw none"
            base_randn = rec.randn[0]
            rec.randn.clear()
            rec.prepared.clear()
            kw = dict(image=base_lat, aesthetic_score=AESTHETIC_SCORE, negative_aesthetic_score=NEGATIVE_AESTHETIC_SCORE,
                      output_type="np", callback_on_step_end=stepper(ref_steps),
                      callback_on_step_end_tensor_inputs=["latents", "prompt_embeds", "add_text_embeds", "add_time_ids"])
            if c["denoising_start"] is not None:
                kw["denoising_start"] = c["denoising_start"]
            else:
                kw["strength"] = c["strength"]
            images = refiner(**kw, **common).images
        base_ts = [s["t"] for s in base_steps]
        ref_ts = [s["t"] for s in ref_steps]
        t = {}
        assert torch.equal(base_lat, base_steps[-1]["latents"])
        t["base_latents"] = base_lat
        t["base_timesteps"] = torch.tensor(base_ts, dtype=torch.float32)
        t["refiner_timesteps"] = torch.tensor(ref_ts, dtype=torch.float32)
        split_cfg(t, ref_steps[0], B)
        t["latents_step1"] = ref_steps[0]["latents"]
        t["final_latents"] = ref_steps[-1]["latents"]
        t["refiner_unet_output_step0"] = rec.unet_first["refiner"]["out"]
        t["refiner_scheduler_timesteps"] = refiner.scheduler.timesteps.to(torch.float32).clone()
        t["refiner_scheduler_sigmas"] = refiner.scheduler.sigmas.to(torch.float32).clone()
        t["image"] = torch.from_numpy(to_u8(images))

        # ---- checks: the timestep cut, the handover, the conditioning -----------------------------
        order1 = refiner.scheduler.order == 1
        assert order1, "both schedulers here are first order in diffusers' sense (scheduler.order == 1)"
        if c["denoising_end"] is not None:
            cutoff = int(round(1000 - c["denoising_end"] * 1000))
            assert base_ts == [x for x in full_ts if x >= cutoff], (name, base_ts, full_ts)
            assert ref_ts == [x for x in full_ts if x < cutoff], (name, ref_ts, full_ts)
            assert base_ts + ref_ts == full_ts
            assert len(rec.randn) == 0, "denoising_start: the refiner adds no noise and draws nothing"
            assert len(rec.prepared) == 1 and torch.equal(rec.prepared[0], base_lat), "handover latents unchanged"
        else:
            n_init = min(int(c["steps"] * c["strength"]), c["steps"])
            t_start = max(c["steps"] - n_init, 0)
            assert base_ts == full_ts
            assert ref_ts == full_ts[t_start:], (name, ref_ts)
            assert len(rec.randn) == 1, "strength: one randn draw (the noise), continuing each image's generator"
            noise = rec.randn[0]
            sigma0 = float(full.sigmas[t_start])
            assert torch.allclose(rec.prepared[0], base_lat + noise * sigma0, rtol=1e-6, atol=1e-6)
            t["refiner_noise"] = noise
            t["refiner_initial_latents"] = rec.prepared[0]
            # the noise continues the base's stream: it is the generator's next draw after the base's randn
            g2 = [torch.Generator("cpu").manual_seed(c["seed"] + i) for i in range(B)]
            first = torch.cat([torch.randn(base_randn.shape[1:], generator=g)[None] for g in g2])
            assert torch.equal(first, base_randn)
            second = torch.cat([torch.randn(noise.shape[1:], generator=g)[None] for g in g2])
            assert torch.equal(second, noise)
        if c["scheduler"] == "EulerDiscreteScheduler":
            s0 = float(refiner.scheduler.sigmas[full_ts.index(ref_ts[0])])
            l0 = rec.prepared[0]
            exp_in = torch.cat([l0, l0]) / ((s0 ** 2 + 1) ** 0.5)
            assert torch.allclose(rec.unet_first["refiner"]["sample"], exp_in, rtol=1e-6, atol=0)
        pe, pooled = te2_encode(refiner, c["prompt"])
        assert torch.equal(t["prompt_embeds"], pe.repeat(B, 1, 1)) and torch.equal(t["pooled_prompt_embeds"], pooled.repeat(B, 1))
        neg_text = c["negative_prompt"] or ""  # force_zeros_for_empty_prompt False: None is encoded as ""
        npe, npooled = te2_encode(refiner, neg_text)
        assert torch.equal(t["negative_prompt_embeds"], npe.repeat(B, 1, 1))
        assert torch.equal(t["negative_pooled_prompt_embeds"], npooled.repeat(B, 1))
        assert not bool((t["negative_prompt_embeds"] == 0).all())
        h, w = c["height"], c["width"]
        assert t["add_time_ids"].tolist() == [[h, w, 0, 0, AESTHETIC_SCORE]] * B
        assert t["negative_add_time_ids"].tolist() == [[h, w, 0, 0, NEGATIVE_AESTHETIC_SCORE]] * B
        assert t["prompt_embeds"].shape == (B, 77, C.TE2_HIDDEN) and t["pooled_prompt_embeds"].shape == (B, C.TE2_PROJ)

        for k, v in t.items():
            v = v.detach().contiguous()
            assert v.dtype in (torch.float32, torch.uint8), (k, v.dtype)
            tensors[f"{name}/{k}"] = v
        print(f"{name}: base {base_ts} -> refiner {ref_ts}; image mean {images.mean():.3f} std {images.std():.3f}; "
              f"time ids {t['add_time_ids'][0].tolist()} / {t['negative_add_time_ids'][0].tolist()}")
        m = dict(c)
        m.update(generators=f"[torch.Generator('cpu').manual_seed({c['seed']} + i) for i in range({B})], the same "
                            "list passed to the base and then to the refiner",
                 base=dict(pipeline="StableDiffusionXLPipeline", model="tests/fixtures/tiny-sdxl",
                           force_zeros_for_empty_prompt=True, output_type="latent", denoising_end=c["denoising_end"]),
                 refiner=dict(pipeline="StableDiffusionXLImg2ImgPipeline", model="tests/fixtures/tiny-sdxl-refiner",
                              requires_aesthetics_score=True, force_zeros_for_empty_prompt=False, image="base_latents",
                              denoising_start=c["denoising_start"], strength=c.get("strength"),
                              aesthetic_score=AESTHETIC_SCORE, negative_aesthetic_score=NEGATIVE_AESTHETIC_SCORE,
                              output_type="np"),
                 full_timesteps=full_ts, base_timesteps=base_ts, refiner_timesteps=ref_ts,
                 add_time_ids=t["add_time_ids"][0].tolist(), negative_add_time_ids=t["negative_add_time_ids"][0].tolist(),
                 keys={k: list(v.shape) for k, v in sorted(t.items())})
        if c["denoising_end"] is not None:
            m["discrete_timestep_cutoff"] = int(round(1000 - c["denoising_end"] * 1000))
        else:
            m["init_timestep"] = min(int(c["steps"] * c["strength"]), c["steps"])
            m["t_start"] = c["steps"] - m["init_timestep"]
            m["noise_sigma"] = float(full.sigmas[m["t_start"]])
        metas.append(m)
    return tensors, metas


def tile_grid(n, stride):
    return list(range(0, n, stride))


def blend_tiles(tiles, blend_extent, row_limit):
    """diffusers' blending, written out: tiles[i][j] is blended IN PLACE with the already blended tile above
    (rows) and then the already blended tile to its left (columns), then cropped to row_limit."""
    out_rows = []
    for i, row in enumerate(tiles):
        out = []
        for j, b in enumerate(row):
            if i > 0:
                a = tiles[i - 1][j]
                e = min(a.shape[2], b.shape[2], blend_extent)
                for y in range(e):
                    b[:, :, y, :] = a[:, :, -e + y, :] * (1 - y / e) + b[:, :, y, :] * (y / e)
            if j > 0:
                a = row[j - 1]
                e = min(a.shape[3], b.shape[3], blend_extent)
                for x in range(e):
                    b[:, :, :, x] = a[:, :, :, -e + x] * (1 - x / e) + b[:, :, :, x] * (x / e)
            out.append(b[:, :, :row_limit, :row_limit])
        out_rows.append(torch.cat(out, dim=3))
    return torch.cat(out_rows, dim=2)


def manual_tiled_decode(vae, z, overlap, blend_extent, row_limit):
    n = vae.tile_latent_min_size
    tiles = [[vae.decoder(vae.post_quant_conv(z[:, :, i:i + n, j:j + n])) for j in tile_grid(z.shape[3], overlap)]
             for i in tile_grid(z.shape[2], overlap)]
    return blend_tiles(tiles, blend_extent, row_limit)


def manual_tiled_encode_moments(vae, x, overlap, blend_extent, row_limit):
    n = vae.tile_sample_min_size
    tiles = [[vae.quant_conv(vae.encoder(x[:, :, i:i + n, j:j + n])) for j in tile_grid(x.shape[3], overlap)]
             for i in tile_grid(x.shape[2], overlap)]
    return blend_tiles(tiles, blend_extent, row_limit)


def run_vae_cases(base, vae_fix, rec, init_img, init_arr):
    from diffusers import AutoencoderKL, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    tensors, metas = {}, []
    sf = base.vae.config.scaling_factor
    comps = dict(text_encoder=base.text_encoder, text_encoder_2=base.text_encoder_2, tokenizer=base.tokenizer,
                 tokenizer_2=base.tokenizer_2, unet=base.unet)
    sched_cfg = dict(base.scheduler.config)

    # ---- custom VAE, txt2img ---------------------------------------------------------------------
    c = dict(name="custom_vae_txt2img", pipeline="StableDiffusionXLPipeline", vae="tests/fixtures/tiny-vae-fp16-fix",
             prompt="a red cube on a blue table", negative_prompt=None, seed=3, steps=4, guidance_scale=6.0,
             width=128, height=128, batch=1, scheduler="EulerDiscreteScheduler")
    p = StableDiffusionXLPipeline(vae=vae_fix, scheduler=make_scheduler(c["scheduler"], sched_cfg),
                                  force_zeros_for_empty_prompt=True, **comps)
    p.set_progress_bar_config(disable=True)
    assert p.watermark is None
    steps = []
    rec.reset()
    with torch.no_grad():
        img = p(prompt=c["prompt"], negative_prompt=c["negative_prompt"], num_inference_steps=c["steps"],
                guidance_scale=c["guidance_scale"], height=c["height"], width=c["width"],
                generator=[torch.Generator("cpu").manual_seed(c["seed"])], output_type="np",
                callback_on_step_end=stepper(steps), callback_on_step_end_tensor_inputs=["latents"]).images
        fl = steps[-1]["latents"]
        via_base = base.vae.decode(fl / sf).sample
        via_fix = vae_fix.decode(fl / vae_fix.config.scaling_factor).sample
    assert torch.equal(torch.from_numpy(img).permute(0, 3, 1, 2), (via_fix / 2 + 0.5).clamp(0, 1)), "decode formula"
    assert (via_base - via_fix).abs().max() > 0.05, "the custom VAE must change the image"
    t = {"image": torch.from_numpy(to_u8(img)), "final_latents": fl,
         "timesteps": torch.tensor([s["t"] for s in steps], dtype=torch.float32)}
    tensors.update({f"{c['name']}/{k}": v.contiguous() for k, v in t.items()})
    metas.append(dict(c, keys={k: list(v.shape) for k, v in sorted(t.items())},
                      timesteps=[s["t"] for s in steps],
                      generators=f"[torch.Generator('cpu').manual_seed({c['seed']})]"))
    print(f"{c['name']}: timesteps {[s['t'] for s in steps]}; image mean {img.mean():.3f}")

    # ---- custom VAE, img2img ---------------------------------------------------------------------
    c = dict(name="custom_vae_img2img", pipeline="StableDiffusionXLImg2ImgPipeline", vae="tests/fixtures/tiny-vae-fp16-fix",
             prompt="a castle on a hill at sunset", negative_prompt=None, seed=21, steps=5, guidance_scale=7.5,
             width=256, height=256, batch=1, strength=0.6, init_image="tests/fixtures/reference/init_256.png",
             requires_aesthetics_score=False, force_zeros_for_empty_prompt=True, scheduler="EulerDiscreteScheduler")
    i2i = StableDiffusionXLImg2ImgPipeline(vae=vae_fix, scheduler=make_scheduler(c["scheduler"], sched_cfg),
                                           requires_aesthetics_score=False, force_zeros_for_empty_prompt=True, **comps)
    i2i.set_progress_bar_config(disable=True)
    steps = []
    rec.reset()
    with torch.no_grad():
        img = i2i(prompt=c["prompt"], negative_prompt=c["negative_prompt"], image=init_img, strength=c["strength"],
                  num_inference_steps=c["steps"], guidance_scale=c["guidance_scale"],
                  generator=[torch.Generator("cpu").manual_seed(c["seed"])], output_type="np",
                  callback_on_step_end=stepper(steps), callback_on_step_end_tensor_inputs=["latents"]).images
    assert len(rec.retrieved) == 1 and len(rec.randn) == 1
    t = {"image": torch.from_numpy(to_u8(img)), "image_latents": rec.retrieved[0] * vae_fix.config.scaling_factor,
         "noise": rec.randn[0], "final_latents": steps[-1]["latents"],
         "timesteps": torch.tensor([s["t"] for s in steps], dtype=torch.float32)}
    assert img.shape == (1, 256, 256, 3)
    tensors.update({f"{c['name']}/{k}": v.contiguous() for k, v in t.items()})
    metas.append(dict(c, keys={k: list(v.shape) for k, v in sorted(t.items())}, timesteps=[s["t"] for s in steps],
                      generators=f"[torch.Generator('cpu').manual_seed({c['seed']})]"))
    print(f"{c['name']}: timesteps {[s['t'] for s in steps]}; image mean {img.mean():.3f}")

    # ---- tiling ---------------------------------------------------------------------------------
    vae_t = AutoencoderKL.from_pretrained(TINY, subfolder="vae", torch_dtype=torch.float32, local_files_only=True)
    defaults = dict(use_tiling=vae_t.use_tiling, tile_sample_min_size=vae_t.tile_sample_min_size,
                    tile_latent_min_size=vae_t.tile_latent_min_size, tile_overlap_factor=vae_t.tile_overlap_factor)
    assert defaults == dict(use_tiling=False, tile_sample_min_size=1024, tile_latent_min_size=128, tile_overlap_factor=0.25)
    vae_t.enable_tiling()
    for k, v in TILE.items():
        assert hasattr(vae_t, k), k
        setattr(vae_t, k, v)
    assert vae_t.use_tiling
    dec_overlap = int(TILE["tile_latent_min_size"] * (1 - TILE["tile_overlap_factor"]))
    dec_blend = int(TILE["tile_sample_min_size"] * TILE["tile_overlap_factor"])
    dec_row_limit = TILE["tile_sample_min_size"] - dec_blend
    enc_overlap = int(TILE["tile_sample_min_size"] * (1 - TILE["tile_overlap_factor"]))
    enc_blend = int(TILE["tile_latent_min_size"] * TILE["tile_overlap_factor"])
    enc_row_limit = TILE["tile_latent_min_size"] - enc_blend
    tiling_meta = dict(
        attributes="AutoencoderKL (diffusers 0.42.1) instance attributes use_tiling (enable_tiling()/disable_tiling()), "
                   "tile_sample_min_size, tile_latent_min_size, tile_overlap_factor; enable_tiling() takes no arguments",
        defaults_for_tiny_sdxl_vae=defaults,
        defaults_formula="tile_sample_min_size = config.sample_size; tile_latent_min_size = int(sample_size / "
                         "2**(len(block_out_channels) - 1)); tile_overlap_factor = 0.25",
        settings=TILE,
        decode=dict(condition="use_tiling and (z.shape[-1] > tile_latent_min_size or z.shape[-2] > tile_latent_min_size)",
                    overlap_size=dec_overlap, blend_extent=dec_blend, row_limit=dec_row_limit,
                    formula="overlap_size = int(tile_latent_min_size * (1 - f)) (latent stride); blend_extent = "
                            "int(tile_sample_min_size * f) (pixels); row_limit = tile_sample_min_size - blend_extent"),
        encode=dict(condition="use_tiling and (W > tile_sample_min_size or H > tile_sample_min_size)",
                    overlap_size=enc_overlap, blend_extent=enc_blend, row_limit=enc_row_limit,
                    formula="overlap_size = int(tile_sample_min_size * (1 - f)) (pixel stride); blend_extent = "
                            "int(tile_latent_min_size * f) (latent units, on the 8-channel moments); row_limit = "
                            "tile_latent_min_size - blend_extent"),
        algorithm="tiles start at 0, overlap_size, 2*overlap_size, ... < size (edge tiles are smaller: "
                  "x[:, :, i:i+tile, j:j+tile]); each tile goes through post_quant_conv + decoder (decode) or "
                  "encoder + quant_conv (encode) on its own; then row by row, tile (i, j) gets "
                  "blend_v(tile(i-1, j), tile, e) if i > 0, then blend_h(tile(i, j-1), tile, e) if j > 0, where the "
                  "neighbours are the ALREADY BLENDED tiles (blend_v/blend_h write into the tile in place and the "
                  "tile list keeps the blended tensors; the crop happens after) and e = min(blend_extent, both "
                  "tiles' size along that axis); blend_v: for y in range(e): b[:, :, y] = a[:, :, -e + y] * (1 - y / e) + b[:, :, y] * "
                  "(y / e) (blend_h the same along x); every tile is cropped to [:row_limit, :row_limit] and the crops "
                  "are concatenated (width within a row, then rows). The script re-implements this (blend_tiles) and "
                  "checks that it reproduces diffusers' tiled decode and encode bit for bit",
    )

    g = torch.Generator("cpu").manual_seed(77)
    z = torch.randn(1, 4, 20, 28, generator=g) / sf
    with torch.no_grad():
        tiled = vae_t.decode(z).sample
        vae_t.disable_tiling()
        untiled = vae_t.decode(z).sample
        vae_t.enable_tiling()
    assert tiled.shape == untiled.shape == (1, 3, 160, 224)
    with torch.no_grad():
        manual = manual_tiled_decode(vae_t, z, dec_overlap, dec_blend, dec_row_limit)
    assert torch.equal(manual, tiled), "the documented tiled-decode algorithm reproduces diffusers bit for bit"
    d = (tiled - untiled).abs()
    assert d.max() > 1e-3, "tiling must change the decode (blending)"
    t = {"latent": z, "tiled_decoded": tiled, "untiled_decoded": untiled}
    tensors.update({f"tiled_decode/{k}": v.contiguous() for k, v in t.items()})
    metas.append(dict(name="tiled_decode", vae="tests/fixtures/tiny-sdxl/vae", latent="torch.randn(1, 4, 20, 28, "
                      "generator=torch.Generator('cpu').manual_seed(77)) / scaling_factor", tile=TILE,
                      latent_tile_rows=tile_grid(20, dec_overlap), latent_tile_cols=tile_grid(28, dec_overlap),
                      max_abs_diff_tiled_untiled=round(float(d.max()), 6),
                      keys={k: list(v.shape) for k, v in sorted(t.items())},
                      formula="tiled_decoded = vae.decode(latent).sample with tiling on, untiled_decoded with it off "
                              "(float32, no clamp)"))
    print(f"tiled_decode: {len(tile_grid(20, dec_overlap))}x{len(tile_grid(28, dec_overlap))} tiles, "
          f"max |tiled - untiled| {d.max():.4f}, mean {d.mean():.5f}")

    x = torch.from_numpy(init_arr.astype(np.float32) / 255.0).permute(2, 0, 1)[None] * 2.0 - 1.0
    with torch.no_grad():
        dist_t = vae_t.encode(x).latent_dist
        vae_t.disable_tiling()
        dist_u = vae_t.encode(x).latent_dist
        vae_t.enable_tiling()
    with torch.no_grad():
        moments = manual_tiled_encode_moments(vae_t, x, enc_overlap, enc_blend, enc_row_limit)
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    manual = DiagonalGaussianDistribution(moments)
    assert torch.equal(manual.mean, dist_t.mean) and torch.equal(manual.std, dist_t.std), "documented tiled encode"
    ref_vae = load_file(os.path.join(OUT, "vae.safetensors"))
    assert torch.equal(dist_u.mean, ref_vae["encode_mean"]), "untiled encode = reference/vae.safetensors encode_mean"
    dm = (dist_t.mean - dist_u.mean).abs()
    assert dm.max() > 1e-3, "tiling must change the encode"
    t = {"tiled_mean": dist_t.mean, "tiled_std": dist_t.std}
    tensors.update({f"tiled_encode/{k}": v.contiguous() for k, v in t.items()})
    metas.append(dict(name="tiled_encode", vae="tests/fixtures/tiny-sdxl/vae", input="init_256.png / 255 * 2 - 1 "
                      "(NCHW float32, [1,3,256,256])", tile=TILE, pixel_tile_rows=tile_grid(256, enc_overlap),
                      pixel_tile_cols=tile_grid(256, enc_overlap), max_abs_diff_mean_tiled_untiled=round(float(dm.max()), 6),
                      untiled="the untiled latent_dist of the same input is reference/vae.safetensors encode_mean/encode_std",
                      keys={k: list(v.shape) for k, v in sorted(t.items())},
                      formula="tiled_mean / tiled_std = vae.encode(x).latent_dist.mean / .std with tiling on; the "
                              "tiles are blended on the moments (mean and logvar), std = exp(0.5 * clamp(logvar, -30, 20))"))
    print(f"tiled_encode: max |tiled - untiled| mean {dm.max():.4f}")

    c = dict(name="tiled_txt2img", pipeline="StableDiffusionXLPipeline", vae="tests/fixtures/tiny-sdxl/vae (tiled)",
             prompt="a castle on a hill at sunset", negative_prompt=None, seed=11, steps=3, guidance_scale=5.0,
             width=192, height=256, batch=1, scheduler="EulerDiscreteScheduler", tile=TILE)
    p = StableDiffusionXLPipeline(vae=vae_t, scheduler=make_scheduler(c["scheduler"], sched_cfg),
                                  force_zeros_for_empty_prompt=True, **comps)
    p.set_progress_bar_config(disable=True)
    steps = []
    with torch.no_grad():
        img = p(prompt=c["prompt"], negative_prompt=c["negative_prompt"], num_inference_steps=c["steps"],
                guidance_scale=c["guidance_scale"], height=c["height"], width=c["width"],
                generator=[torch.Generator("cpu").manual_seed(c["seed"])], output_type="np",
                callback_on_step_end=stepper(steps), callback_on_step_end_tensor_inputs=["latents"]).images
        fl = steps[-1]["latents"]
        vae_t.disable_tiling()
        untiled_img = (vae_t.decode(fl / sf).sample / 2 + 0.5).clamp(0, 1)
        vae_t.enable_tiling()
        tiled_img = (vae_t.decode(fl / sf).sample / 2 + 0.5).clamp(0, 1)
    assert img.shape == (1, 256, 192, 3)
    assert torch.equal(torch.from_numpy(img).permute(0, 3, 1, 2), tiled_img)
    assert not np.array_equal(to_u8(img), to_u8(untiled_img.permute(0, 2, 3, 1).numpy())), "tiling must change the image"
    t = {"image": torch.from_numpy(to_u8(img)), "final_latents": fl,
         "timesteps": torch.tensor([s["t"] for s in steps], dtype=torch.float32)}
    tensors.update({f"{c['name']}/{k}": v.contiguous() for k, v in t.items()})
    metas.append(dict(c, keys={k: list(v.shape) for k, v in sorted(t.items())}, timesteps=[s["t"] for s in steps],
                      latent_tile_rows=tile_grid(32, dec_overlap), latent_tile_cols=tile_grid(24, dec_overlap),
                      generators=f"[torch.Generator('cpu').manual_seed({c['seed']})]"))
    print(f"tiled_txt2img: timesteps {[s['t'] for s in steps]}; image {img.shape} mean {img.mean():.3f}")
    for k, v in tensors.items():
        assert v.dtype in (torch.float32, torch.uint8), (k, v.dtype)
    return tensors, metas, tiling_meta


def versions():
    import diffusers
    import transformers

    return dict(diffusers=diffusers.__version__, torch=torch.__version__, transformers=transformers.__version__,
                numpy=np.__version__, python=platform.python_version(),
                cpu_capability=torch.backends.cpu.get_cpu_capability())


REFINER_NOTES = {
    "denoising_end (base, StableDiffusionXLPipeline)": "cutoff = int(round(num_train_timesteps - denoising_end * "
        "num_train_timesteps)) = 200 for 0.8; the base iterates the timesteps t >= cutoff of its full schedule "
        "(timesteps[:n], n = count of t >= cutoff) and returns the latents after the last of them (output_type "
        "'latent': not divided by scaling_factor, not decoded). The scheduler is not told that the run ends early: "
        "DPM++ 2M's lower_order_final (steps < 15) only applies at its real last two steps, so the base's last step "
        "here (the 8th of 10) is second order.",
    "denoising_start (refiner, StableDiffusionXLImg2ImgPipeline.get_timesteps)": "same cutoff; n = count of t < "
        "cutoff in the refiner's own full schedule (set_timesteps(num_inference_steps)); for a scheduler with "
        "order == 2 and n even, n += 1 (not the case here: Euler and DPMSolverMultistep have order 1); t_start = "
        "len(timesteps) - n; the refiner iterates timesteps[t_start:] and calls scheduler.set_begin_index(t_start), "
        "so the scheduler's step index (sigmas[t_start], ...) continues where the base stopped. strength is ignored. "
        "prepare_latents gets image = the base latents (4 channels: used as latents, no VAE encode) with add_noise "
        "False: no randn is drawn and the latents are used unchanged (no scaling).",
    "DPM++ 2M in the refiner": "set_timesteps resets the multistep history (model_outputs, lower_order_nums = 0), so "
        "the refiner's first step is first order; its two steps (step_index 8 and 9 of 10) are both first order "
        "(lower_order_nums < 1, then lower_order_final). Sigmas of the final step use final_sigmas_type 'zero'.",
    "strength (refiner without denoising_start)": "init_timestep = min(int(num_inference_steps * strength), "
        "num_inference_steps) = 3 for 10 x 0.3; t_start = num_inference_steps - init_timestep = 7; timesteps = "
        "timesteps[t_start * order:], set_begin_index(t_start); the image (base latents, 4 channels) is used as "
        "latents without VAE encode; noise = randn_tensor(latents.shape, generator) -- the NEXT draw of each image's "
        "generator after the base's initial-latents draw (the same generator objects are reused) -- and the start "
        "latents are scheduler.add_noise(latents, noise, timesteps[0]) = latents + noise * sigmas[t_start] for Euler.",
    "add_time_ids (requires_aesthetics_score True)": "5 values [original_h, original_w, crop_top, crop_left, "
        "aesthetic_score]; negative: [negative_original_h, negative_original_w, negative_crop_top, "
        "negative_crop_left, negative_aesthetic_score]. original_size defaults to (height, width) = latents shape * "
        "vae_scale_factor (8) = (128, 128); crops (0, 0); aesthetic_score 6.0, negative_aesthetic_score 2.5. The "
        "UNet embeds each value with addition_time_embed_dim sinusoids and concatenates the pooled embedding: "
        "5 * 8 + 10 = 50 = projection_class_embeddings_input_dim.",
    "text conditioning of the refiner": "tokenizer/text_encoder are None: encode_prompt uses tokenizer_2 + "
        "text_encoder_2 only; prompt_embeds = text_encoder_2 hidden_states[-2] [B,77,12] (no CLIP-L half), pooled = "
        "text_embeds [B,10]. force_zeros_for_empty_prompt is False, so negative_prompt None is encoded as the empty "
        "string '' (real embeddings, not zeros), unlike the base (force_zeros True: zeros).",
    "CFG rows": "prompt_embeds/add_text_embeds/add_time_ids in the UNet batch are cat([negative, positive]); the "
        "*negative_* keys are the first B rows, the others the last B rows (from callback_on_step_end at step 0).",
    "generators": "[torch.Generator('cpu').manual_seed(seed + i) for i in range(batch)]; the same list object is "
        "passed to the base and then to the refiner. Euler (s_churn 0) and DPM++ 2M draw no noise in step(), so "
        "only the base's initial latents and, in img2img_strength03, the refiner's noise come from them.",
    "keys": "<case>/base_latents (handover), base_timesteps, refiner_timesteps (iterated), prompt_embeds, "
        "negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds, add_time_ids, "
        "negative_add_time_ids (refiner), latents_step1 (refiner latents after its first step), final_latents "
        "(refiner latents after its last step, before / scaling_factor), refiner_unet_output_step0 (first refiner UNet "
        "output, rows [uncond; cond]), refiner_scheduler_timesteps / refiner_scheduler_sigmas (the refiner "
        "scheduler's full schedule), image (uint8 [B,128,128,3]); img2img_strength03 also refiner_noise (raw randn) "
        "and refiner_initial_latents (noised start latents).",
}


def main():
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    torch.use_deterministic_algorithms(True)
    for p in (os.path.join(TINY, "model_index.json"), os.path.join(OUT, "init_256.png"), os.path.join(OUT, "vae.safetensors")):
        assert os.path.exists(p), f"{p} missing: run make_tiny_sdxl.py and make_references.py first"

    # ---- fixtures -----------------------------------------------------------------------------
    unet = build_refiner_unet()
    unet_params = write_refiner_folder(unet)
    unet_fp16 = unet  # save_model_fp16 converted it in place
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(REFINER, torch_dtype=torch.float32, local_files_only=True)
    refiner.set_progress_bar_config(disable=True)
    check_refiner_folder(refiner, unet_fp16)
    write_refiner_single_file(dict(refiner.unet.config), dict(refiner.vae.config))
    check_refiner_single_file(refiner)

    vae_fix_model = build_vae_fix()
    write_vae_fix(vae_fix_model)
    vae_fix = check_vae_fix(vae_fix_model)

    # ---- references ---------------------------------------------------------------------------
    base = StableDiffusionXLPipeline.from_pretrained(TINY, torch_dtype=torch.float32, local_files_only=True)
    base.set_progress_bar_config(disable=True)
    # the refiner's text_encoder_2 and vae are the base's weights (byte-identical files)
    same_weights(base.text_encoder_2, refiner.text_encoder_2, "text_encoder_2 shared")
    same_weights(base.vae, refiner.vae, "vae shared")
    rec = Recorder()
    rec.wrap_prepare_latents(refiner)
    h1 = rec.watch_unet(refiner.unet, "refiner")
    tensors, metas = run_refiner_cases(base, refiner, rec)
    h1.remove()
    save_file(dict(sorted(tensors.items())), os.path.join(OUT, "refiner.safetensors"))
    meta = dict(versions=versions(),
                models=dict(base="tests/fixtures/tiny-sdxl", refiner="tests/fixtures/tiny-sdxl-refiner (fp16 weights, "
                            "run in float32 on CPU; text_encoder_2 and vae are the base's)"),
                image_to_uint8="(np_image * 255).round().astype(uint8), np_image = refiner(output_type='np')",
                file="refiner.safetensors, keys '<case>/<name>'", notes=REFINER_NOTES, cases=metas)
    write_json(os.path.join(OUT, "refiner_cases.json"), meta, sort_keys=False)

    init_img = Image.open(os.path.join(OUT, "init_256.png")).convert("RGB")
    init_arr = np.asarray(init_img)
    rec.reset()
    vt, vmetas, tiling_meta = run_vae_cases(base, vae_fix, rec, init_img, init_arr)
    save_file(dict(sorted(vt.items())), os.path.join(OUT, "vae_custom.safetensors"))
    vmeta = dict(versions=versions(),
                 models=dict(base="tests/fixtures/tiny-sdxl", custom_vae="tests/fixtures/tiny-vae-fp16-fix (fp16 weights, "
                             "run in float32 on CPU; force_upcast false has no effect in float32)"),
                 image_to_uint8="(np_image * 255).round().astype(uint8)", file="vae_custom.safetensors, keys '<case>/<name>'",
                 tiling=tiling_meta,
                 notes={"custom VAE": "the pipeline uses the given VAE for both encode (img2img: image_latents = "
                                      "scaling_factor * vae.encode(x).latent_dist.sample(generator), scaling_factor "
                                      "0.13025 from the custom VAE's config) and decode (latents / scaling_factor)",
                        "custom_vae_img2img": "as make_references.py's img2img case (same prompt, seed, strength, "
                                              "requires_aesthetics_score False, 6 time ids) with the fp16-fix VAE; "
                                              "noise = raw randn drawn after the VAE sample"},
                 cases=vmetas)
    write_json(os.path.join(OUT, "vae_custom_cases.json"), vmeta, sort_keys=False)

    for dp, _, fns in os.walk(REFINER):
        for fn in fns:
            os.chmod(os.path.join(dp, fn), 0o644)
    for dp, _, fns in os.walk(VAE_FIX):
        for fn in fns:
            os.chmod(os.path.join(dp, fn), 0o644)
    for p in (REFINER_FILE, VAE_FIX_FILE, *(os.path.join(OUT, f) for f in ("refiner.safetensors", "refiner_cases.json",
                                                                          "vae_custom.safetensors", "vae_custom_cases.json"))):
        os.chmod(p, 0o644)
    print(f"refiner unet params {unet_params}; ok")


if __name__ == "__main__":
    sys.exit(main())
