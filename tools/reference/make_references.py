#!/usr/bin/env python3
"""Run diffusers (CPU, float32) on tests/fixtures/tiny-sdxl and dump reference tensors.

    /opt/refenv/bin/python tools/reference/make_references.py

Writes tests/fixtures/reference/{<case>.safetensors, cases.json, init_256.png,
text_encoders.safetensors, unet_single.safetensors, vae.safetensors}.
"""
import json
import os
import platform
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")
TINY = os.path.join(FIX, "tiny-sdxl")
OUT = os.path.join(FIX, "reference")

CASES = [
    dict(name="txt2img_cfg", pipeline="txt2img", prompt="a photograph of an astronaut riding a horse", negative_prompt="",
         seed=42, steps=5, guidance_scale=7.5, width=256, height=256, batch=1),
    dict(name="txt2img_nocfg", pipeline="txt2img", prompt="a photograph of an astronaut riding a horse", negative_prompt=None,
         seed=7, steps=5, guidance_scale=1.0, width=256, height=256, batch=1),
    dict(name="txt2img_nonsquare_negative", pipeline="txt2img",
         prompt="a watercolor painting of a fox in the snow, highly detailed", negative_prompt="blurry, low quality",
         seed=1234, steps=4, guidance_scale=5.0, width=384, height=256, batch=1),
    dict(name="txt2img_batch2", pipeline="txt2img", prompt="a red cube on a blue table", negative_prompt=None,
         seed=100, steps=3, guidance_scale=6.0, width=256, height=256, batch=2),
    dict(name="img2img", pipeline="img2img", prompt="a castle on a hill at sunset", negative_prompt=None,
         seed=21, steps=5, guidance_scale=7.5, width=256, height=256, batch=1, strength=0.6,
         init_image="init_256.png"),
    dict(name="txt2img_micro", pipeline="txt2img", prompt="a photograph of an astronaut riding a horse", negative_prompt="",
         seed=42, steps=5, guidance_scale=7.5, width=256, height=256, batch=1,
         original_size=(512, 384), crops_coords_top_left=(16, 32), target_size=(256, 256)),
]


def make_init_image(path):
    """Deterministic 256x256 RGB test picture: smooth gradients + a few hard-edged shapes."""
    h = w = 256
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255.0 * x / (w - 1)
    g = 255.0 * y / (h - 1)
    b = 127.5 + 127.5 * np.sin(2 * np.pi * (x + y) / 256.0)
    img = np.stack([r, g, b], -1)
    sky = y < 100
    img[sky] = img[sky] * 0.5 + np.array([60.0, 110.0, 200.0]) * 0.5
    circle = (x - 180) ** 2 + (y - 60) ** 2 < 28 ** 2  # sun
    img[circle] = [250, 210, 60]
    rect = (x > 40) & (x < 120) & (y > 120) & (y < 220)  # castle wall
    img[rect] = [120, 110, 100]
    tri = (y > 70) & (y <= 120) & (np.abs(x - 80) < (y - 70) * 0.9)  # roof
    img[tri] = [150, 40, 40]
    ring = np.abs(np.hypot(x - 190, y - 190) - 30) < 5
    img[ring] = [20, 160, 60]
    arr = np.clip(np.round(img), 0, 255).astype(np.uint8)
    Image.fromarray(arr, "RGB").save(path, optimize=False)
    return arr


class Recorder:
    """Captures the raw randn draws, VAE-encoded image latents and the first UNet call."""

    def __init__(self, pipe):
        import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl as m1
        import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img as m2

        self.randn = []
        self.retrieved = []
        self.unet_calls = []
        self.steps = []
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

        def hook(mod, args, kwargs, out):
            if not self.unet_calls:
                self.unet_calls.append(dict(sample=args[0].clone(), timestep=torch.as_tensor(args[1]).clone(),
                                            out=out[0].clone() if isinstance(out, tuple) else out.sample.clone()))

        pipe.unet.register_forward_hook(hook, with_kwargs=True)
        self.prepared = []

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
        self.unet_calls.clear()
        self.steps.clear()
        self.prepared.clear()

    def callback(self, pipe, i, t, kw):
        self.steps.append(dict(i=i, t=float(t), **{k: v.clone() for k, v in kw.items()}))
        return kw


def to_u8(img):
    return (img * 255).round().astype("uint8")


def main():
    import diffusers
    import transformers
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)
    init_arr = make_init_image(os.path.join(OUT, "init_256.png"))
    init_img = Image.open(os.path.join(OUT, "init_256.png")).convert("RGB")
    assert np.array_equal(np.asarray(init_img), init_arr)

    pipe = StableDiffusionXLPipeline.from_pretrained(TINY, torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    i2i = StableDiffusionXLImg2ImgPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2, tokenizer=pipe.tokenizer,
        tokenizer_2=pipe.tokenizer_2, unet=pipe.unet, scheduler=pipe.scheduler,
        requires_aesthetics_score=False, force_zeros_for_empty_prompt=True,
    )
    i2i.set_progress_bar_config(disable=True)
    assert all(p.dtype == torch.float32 for p in pipe.unet.parameters())
    rec = Recorder(pipe)
    rec.wrap_prepare_latents(pipe)
    rec.wrap_prepare_latents(i2i)
    sf = pipe.vae.config.scaling_factor

    meta_cases = []
    for c in CASES:
        rec.reset()
        B = c["batch"]
        gens = [torch.Generator("cpu").manual_seed(c["seed"] + i) for i in range(B)]
        cfg = c["guidance_scale"] > 1.0
        kw = dict(prompt=c["prompt"], negative_prompt=c["negative_prompt"], num_inference_steps=c["steps"],
                  guidance_scale=c["guidance_scale"], num_images_per_prompt=B, generator=gens, output_type="np",
                  callback_on_step_end=rec.callback,
                  callback_on_step_end_tensor_inputs=["latents", "prompt_embeds", "add_text_embeds", "add_time_ids"])
        for k in ("original_size", "crops_coords_top_left", "target_size"):
            if k in c:
                kw[k] = tuple(c[k])
        with torch.no_grad():
            if c["pipeline"] == "img2img":
                out = i2i(image=init_img, strength=c["strength"], **kw)
            else:
                out = pipe(height=c["height"], width=c["width"], **kw)
        images = out.images
        s0, sl = rec.steps[0], rec.steps[-1]
        pe, te, tid = s0["prompt_embeds"], s0["add_text_embeds"], s0["add_time_ids"]
        t = {}
        if cfg:
            assert pe.shape[0] == 2 * B
            t["negative_prompt_embeds"], t["prompt_embeds"] = pe[:B], pe[B:]
            t["negative_pooled_prompt_embeds"], t["pooled_prompt_embeds"] = te[:B], te[B:]
            t["negative_add_time_ids"], t["add_time_ids"] = tid[:B], tid[B:]
            zero = c["negative_prompt"] is None  # force_zeros_for_empty_prompt applies to None only, not ""
            assert bool((t["negative_prompt_embeds"] == 0).all()) == zero, c["name"]
            assert bool((t["negative_pooled_prompt_embeds"] == 0).all()) == zero, c["name"]
        else:
            assert pe.shape[0] == B
            t["prompt_embeds"], t["pooled_prompt_embeds"], t["add_time_ids"] = pe, te, tid
        if c["pipeline"] == "img2img":
            assert len(rec.randn) == 1 and len(rec.retrieved) == B
            t["noise"] = rec.randn[0]  # raw randn drawn after the VAE-encode sampling
            t["image_latents"] = torch.cat(rec.retrieved) * sf
            # the noised start latents (output of prepare_latents) = image_latents + noise * sigma_start
            assert len(rec.prepared) == 1
            t["initial_latents"] = rec.prepared[0]
        else:
            assert len(rec.randn) == 1
            t["initial_latents"] = rec.randn[0]  # raw randn, BEFORE * init_noise_sigma
            assert torch.equal(rec.prepared[0], rec.randn[0] * pipe.scheduler.init_noise_sigma)
        t["init_noise_sigma"] = torch.tensor([float(pipe.scheduler.init_noise_sigma)], dtype=torch.float32)
        t["latents_step1"] = rec.steps[0]["latents"]
        t["final_latents"] = sl["latents"]
        t["unet_output_step0"] = rec.unet_calls[0]["out"]
        sch0 = (i2i if c["pipeline"] == "img2img" else pipe).scheduler
        s0_sigma = sch0.sigmas[list(sch0.timesteps.tolist()).index(rec.steps[0]["t"])]
        exp_in = rec.prepared[0] / ((s0_sigma**2 + 1) ** 0.5)
        exp_in = torch.cat([exp_in, exp_in]) if cfg else exp_in
        assert torch.allclose(rec.unet_calls[0]["sample"], exp_in, rtol=1e-6, atol=0), "unet input formula"
        t["image"] = torch.from_numpy(to_u8(images))
        t["timesteps"] = torch.tensor([s["t"] for s in rec.steps], dtype=torch.float32)
        sch = (i2i if c["pipeline"] == "img2img" else pipe).scheduler
        t["scheduler_timesteps"] = sch.timesteps.to(torch.float32).clone()
        t["scheduler_sigmas"] = sch.sigmas.to(torch.float32).clone()
        t = {k: v.detach().contiguous() for k, v in t.items()}
        for k, v in t.items():
            assert v.dtype in (torch.float32, torch.uint8), (k, v.dtype)
        save_file(t, os.path.join(OUT, c["name"] + ".safetensors"))
        if cfg:
            d = (t["unet_output_step0"][B:] - t["unet_output_step0"][:B]).abs().mean().item()
        else:
            d = float("nan")
        print(f"{c['name']}: image {tuple(t['image'].shape)} mean {images.mean():.3f} std {images.std():.3f} "
              f"sat {(images <= 0).mean() + (images >= 1).mean():.4f}; final latents std {t['final_latents'].std():.3f}; "
              f"unet out std {t['unet_output_step0'].std():.3f} |cond-uncond| {d:.4f}; timesteps {t['timesteps'].tolist()}; "
              f"time_ids {t['add_time_ids'][0].tolist()}")
        mc = dict(c)
        mc.update(scheduler="EulerDiscreteScheduler", file=c["name"] + ".safetensors",
                  generators=f"[torch.Generator('cpu').manual_seed({c['seed']} + i) for i in range({B})]",
                  keys=sorted(t.keys()))
        if c["pipeline"] == "img2img":
            mc["requires_aesthetics_score"] = False
        meta_cases.append(mc)

    # ---- text encoders separately (prompt of txt2img_cfg) ---------------------------------------
    prompt = CASES[0]["prompt"]
    with torch.no_grad():
        ids1 = pipe.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        ids2 = pipe.tokenizer_2(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        o1 = pipe.text_encoder(ids1, output_hidden_states=True)
        o2 = pipe.text_encoder_2(ids2, output_hidden_states=True)
    te = {
        "input_ids_1": ids1.to(torch.int64),
        "input_ids_2": ids2.to(torch.int64),
        "te1_penultimate": o1.hidden_states[-2],
        "te1_last_hidden_state": o1.last_hidden_state,  # after final_layer_norm (not used by SDXL)
        "te2_penultimate": o2.hidden_states[-2],
        "te2_pooled": o2.text_embeds,
    }
    ref_cfg = dict(__import__("safetensors.torch", fromlist=["load_file"]).load_file(os.path.join(OUT, "txt2img_cfg.safetensors")))
    assert torch.allclose(torch.cat([te["te1_penultimate"], te["te2_penultimate"]], -1), ref_cfg["prompt_embeds"], atol=0, rtol=0)
    assert torch.equal(te["te2_pooled"], ref_cfg["pooled_prompt_embeds"])
    save_file({k: v.detach().contiguous() for k, v in te.items()}, os.path.join(OUT, "text_encoders.safetensors"))
    print("text_encoders: penultimate/pooled match the pipeline's prompt_embeds exactly")

    # ---- one UNet call --------------------------------------------------------------------------
    g = torch.Generator("cpu").manual_seed(2024)
    cad = pipe.unet.config.cross_attention_dim
    u = {
        "sample": torch.randn(2, 4, 32, 32, generator=g),
        "encoder_hidden_states": torch.randn(2, 77, cad, generator=g),
        "text_embeds": torch.randn(2, pipe.text_encoder_2.config.projection_dim, generator=g),
        "time_ids": torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0], [512.0, 384.0, 16.0, 32.0, 256.0, 256.0]]),
    }
    with torch.no_grad():
        for ts in (999.0, 500.0):
            y = pipe.unet(u["sample"], torch.tensor(ts), encoder_hidden_states=u["encoder_hidden_states"],
                          added_cond_kwargs={"text_embeds": u["text_embeds"], "time_ids": u["time_ids"]}).sample
            u[f"noise_pred_t{int(ts)}"] = y
    u["timesteps"] = torch.tensor([999.0, 500.0])
    save_file({k: v.contiguous() for k, v in u.items()}, os.path.join(OUT, "unet_single.safetensors"))
    print(f"unet_single: out std {u['noise_pred_t999'].std():.3f} / {u['noise_pred_t500'].std():.3f}")

    # ---- VAE ------------------------------------------------------------------------------------
    g = torch.Generator("cpu").manual_seed(77)
    # non-square (H=16, W=24 -> 128x192 image) to catch H/W mix-ups and to keep the file small
    z = torch.randn(1, 4, 16, 24, generator=g) / sf  # what the pipeline feeds the decoder (latents / scaling_factor)
    x = torch.from_numpy(init_arr.astype(np.float32) / 255.0).permute(2, 0, 1)[None] * 2.0 - 1.0
    with torch.no_grad():
        dec = pipe.vae.decode(z).sample
        dist = pipe.vae.encode(x).latent_dist
    pp = pipe.image_processor.preprocess(init_img)
    assert torch.equal(pp, x), "init image preprocessing formula"
    v = {"latent": z, "decoded": dec, "encode_mean": dist.mean, "encode_std": dist.std, "encode_logvar": dist.logvar}
    save_file({k: t.contiguous() for k, t in v.items()}, os.path.join(OUT, "vae.safetensors"))
    print(f"vae: decoded range [{dec.min():.2f}, {dec.max():.2f}] std {dec.std():.3f}; mean std {dist.mean.std():.3f}")

    meta = dict(
        versions=dict(diffusers=diffusers.__version__, torch=torch.__version__, transformers=transformers.__version__,
                      numpy=np.__version__, python=platform.python_version(),
                      cpu_capability=torch.backends.cpu.get_cpu_capability()),
        model="tests/fixtures/tiny-sdxl (fp16 weights, run in float32 on CPU)",
        image_to_uint8="(np_image * 255).round().astype(uint8), np_image = pipeline(output_type='np')",
        notes={
            "initial_latents": "txt2img: raw randn_tensor output (before * init_noise_sigma). img2img: the noised start "
                               "latents scheduler.add_noise(image_latents, noise, timesteps[0]); `noise` is the raw randn "
                               "(drawn from the same generator AFTER the VAE latent_dist.sample draw).",
            "image_latents": "scaling_factor * vae.encode(preprocessed init image).latent_dist.sample(generator)",
            "latents_step1": "latents after the first scheduler.step (callback_on_step_end at i=0)",
            "final_latents": "latents after the last step, before / scaling_factor and VAE decode",
            "unet_output_step0": "first UNet call's raw output (CFG: [uncond; cond] rows, before the guidance combination); its "
                                 "input is cat([l, l]) (CFG) or l, with l = initial latents (txt2img: randn * init_noise_sigma) / "
                                 "sqrt(sigma_0^2 + 1)",
            "negative_*": "CFG cases only. force_zeros_for_empty_prompt=True zeroes them only when negative_prompt is None "
                          "(txt2img_batch2, img2img); negative_prompt '' (txt2img_cfg, txt2img_micro) is encoded like a prompt",
            "timesteps": "timesteps actually iterated (img2img: the tail after strength)",
            "text_encoders.safetensors": "txt2img_cfg prompt; te*_penultimate = hidden_states[-2]; te2_pooled = text_embeds "
                                         "(final LN of the first EOS token @ text_projection)",
            "unet_single.safetensors": "pipe.unet(sample, timestep (0-d tensor), encoder_hidden_states, added_cond_kwargs="
                                       "{text_embeds, time_ids}) for timestep 999 and 500",
            "vae.safetensors": "decoded = vae.decode(latent).sample (latent is already divided by scaling_factor); "
                               "encode_* = vae.encode(init_256.png as float/255*2-1).latent_dist",
        },
        cases=meta_cases,
    )
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    for fn in os.listdir(OUT):
        os.chmod(os.path.join(OUT, fn), 0o644)
    print("ok")


if __name__ == "__main__":
    sys.exit(main())
