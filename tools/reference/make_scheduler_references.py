#!/usr/bin/env python3
"""Run diffusers' ten SDXL schedulers on a synthetic model and dump their numbers.

    /opt/refenv/bin/python tools/reference/make_scheduler_references.py

Writes tests/fixtures/reference/schedulers.safetensors and schedulers.json (the option sets).
Needs scipy in the venv besides the usual ones (LMSDiscreteScheduler integrates with
scipy.integrate.quad): `/opt/refenv/bin/pip install scipy` (generated with scipy 1.17.1).

Every scheduler is created `from_config` of SDXL base's scheduler_config.json (the tiny
fixture's copy is verbatim) plus one option set, then `set_timesteps(10)`. Recorded per
"<SchedulerClass>/<set>/":
  timesteps         float64, as `scheduler.timesteps` (one per model call)
  sigmas            float32, `scheduler.sigmas` where the scheduler has them (not DDIM)
  init_noise_sigma  float64, shape [1]
  trajectory        float32 [model calls, 1, 4, 8, 8], the sample after each model call of a 10-step run:
                    x = randn(seed 0) * init_noise_sigma; for each t:
                    eps = 0.5 * tanh(scale_model_input(x, t)) + 0.1 * cos(t / 100) (float64, rounded);
                    x = step(eps, t, x, generator=Generator("cpu").manual_seed(1) where step takes one)
  add_noise         float32 [1, 4, 4, 4], add_noise(x0, noise) at model-call index 3
                    (`set_begin_index(3)`, as img2img does), x0/noise under "add_noise/…"

Also writes tests/fixtures/reference/schedulers_e2e.safetensors: each scheduler (default options,
`from_config` of the tiny pipeline's scheduler) driving the tiny SDXL pipeline
(tests/fixtures/tiny-sdxl) for 4 steps: "<SchedulerClass>/image" uint8 [1, 128, 128, 3] and
"<SchedulerClass>/final_latents" float32 [1, 4, 16, 16]; the settings are under "e2e" in
schedulers.json.
"""
import inspect
import json
import math
import os

import torch
from safetensors.torch import save_file

import diffusers
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    UniPCMultistepScheduler,
)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(FIX, "reference")
STEPS = 10
SAMPLE_SHAPE = (1, 4, 8, 8)
ADD_NOISE_SHAPE = (1, 4, 4, 4)
ADD_NOISE_INDEX = 3

KARRAS = {"use_karras_sigmas": True}
TRAILING = {"timestep_spacing": "trailing"}
LINSPACE = {"timestep_spacing": "linspace"}
V_PREDICTION = {"prediction_type": "v_prediction"}
SDE = {"algorithm_type": "sde-dpmsolver++"}
ORDER_3 = {"solver_order": 3}

# Trailing spacing is the shared spaced_timesteps of the Euler family, proven on Euler,
# EulerAncestral, LMS and DDIM; the two-call schedulers (19 samples a run) skip it to keep the
# file near 400 KB.
# (class, set name, request options (names of the engine's scheduler_options), extra
# scheduler_config.json keys). DDIM's `eta` is a step() argument in diffusers (the pipeline
# passes it), a request option for us.
CASES = [
    (EulerDiscreteScheduler, "default", {}, {}),
    (EulerDiscreteScheduler, "karras", KARRAS, {}),
    (EulerDiscreteScheduler, "trailing", TRAILING, {}),
    (EulerDiscreteScheduler, "v_prediction", V_PREDICTION, {}),
    (EulerAncestralDiscreteScheduler, "default", {}, {}),
    (EulerAncestralDiscreteScheduler, "trailing", TRAILING, {}),
    (HeunDiscreteScheduler, "default", {}, {}),
    (HeunDiscreteScheduler, "karras", KARRAS, {}),
    (KDPM2DiscreteScheduler, "default", {}, {}),
    (KDPM2DiscreteScheduler, "karras", KARRAS, {}),
    (KDPM2AncestralDiscreteScheduler, "default", {}, {}),
    (KDPM2AncestralDiscreteScheduler, "karras", KARRAS, {}),
    (LMSDiscreteScheduler, "default", {}, {}),
    (LMSDiscreteScheduler, "karras", KARRAS, {}),
    (LMSDiscreteScheduler, "trailing", TRAILING, {}),
    (DDIMScheduler, "default", {}, {}),
    (DDIMScheduler, "trailing", TRAILING, {}),
    (DDIMScheduler, "linspace", LINSPACE, {}),
    (DDIMScheduler, "eta_1", {"eta": 1.0}, {}),
    (DPMSolverMultistepScheduler, "default", {}, {}),
    (DPMSolverMultistepScheduler, "karras", KARRAS, {}),
    (DPMSolverMultistepScheduler, "trailing", TRAILING, {}),
    (DPMSolverMultistepScheduler, "v_prediction", V_PREDICTION, {}),
    (DPMSolverMultistepScheduler, "sde", SDE, {}),
    (DPMSolverMultistepScheduler, "order_3", ORDER_3, {}),
    (DPMSolverSinglestepScheduler, "default", {}, {}),
    (DPMSolverSinglestepScheduler, "karras", KARRAS, {}),
    (DPMSolverSinglestepScheduler, "sde", SDE, {}),
    (UniPCMultistepScheduler, "default", {}, {}),
    (UniPCMultistepScheduler, "karras", KARRAS, {}),
    (UniPCMultistepScheduler, "trailing", TRAILING, {}),
]


def synthetic_model(model_input, timestep):
    """A smooth, timestep-dependent stand-in for the UNet's noise prediction. Evaluated in
    float64 and rounded once, so that the Rust side's tanh (libm) gives the same float32 bits
    as torch's vectorised one; what remains to differ is the schedulers' own arithmetic."""
    eps = 0.5 * torch.tanh(model_input.double()) + 0.1 * math.cos(float(timestep) / 100.0)
    return eps.float()


def make_scheduler(cls, sdxl_config, options, extra_config):
    config_options = {k: v for k, v in options.items() if k != "eta"}
    scheduler = cls.from_config(sdxl_config, **config_options, **extra_config)
    scheduler.set_timesteps(STEPS)
    return scheduler


def run_case(cls, sdxl_config, options, extra_config, add_noise_inputs):
    scheduler = make_scheduler(cls, sdxl_config, options, extra_config)
    for key, value in {**options, **extra_config}.items():
        if key != "eta":
            assert scheduler.config[key] == value, (cls.__name__, key, scheduler.config[key])
    record = {"timesteps": scheduler.timesteps.to(torch.float64).clone()}
    if cls is not DDIMScheduler:
        record["sigmas"] = scheduler.sigmas.to(torch.float32).clone()
    init_noise_sigma = float(scheduler.init_noise_sigma)
    record["init_noise_sigma"] = torch.tensor([init_noise_sigma], dtype=torch.float64)

    sample = torch.randn(SAMPLE_SHAPE, generator=torch.Generator("cpu").manual_seed(0)) * scheduler.init_noise_sigma
    step_generator = torch.Generator("cpu").manual_seed(1)
    accepts = inspect.signature(scheduler.step).parameters
    trajectory = []
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, t)
        model_output = synthetic_model(model_input, t)
        kwargs = {}
        if "generator" in accepts:
            kwargs["generator"] = step_generator
        if "eta" in accepts:
            kwargs["eta"] = options.get("eta", 0.0)
        sample = scheduler.step(model_output, t, sample, **kwargs).prev_sample
        assert sample.dtype == torch.float32
        trajectory.append(sample.clone())
    record["trajectory"] = torch.stack(trajectory)

    fresh = make_scheduler(cls, sdxl_config, options, extra_config)
    if hasattr(fresh, "set_begin_index"):
        fresh.set_begin_index(ADD_NOISE_INDEX)
    x0, noise = add_noise_inputs
    record["add_noise"] = fresh.add_noise(x0, noise, fresh.timesteps[ADD_NOISE_INDEX : ADD_NOISE_INDEX + 1]).clone()
    return record, init_noise_sigma, len(scheduler.timesteps)


E2E = dict(
    prompt="a red cube on a blue table", negative_prompt=None, seed=3, guidance_scale=5.0, steps=4, width=128, height=128
)
E2E_CLASSES = [
    EulerDiscreteScheduler,
    EulerAncestralDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2DiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    LMSDiscreteScheduler,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    UniPCMultistepScheduler,
]


def make_e2e_references():
    """Each scheduler in the tiny SDXL pipeline, as tools/reference/make_references.py runs it."""
    from diffusers import StableDiffusionXLPipeline

    torch.use_deterministic_algorithms(True)
    pipe = StableDiffusionXLPipeline.from_pretrained(
        os.path.join(FIX, "tiny-sdxl"), torch_dtype=torch.float32, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    base_config = pipe.scheduler.config
    tensors = {}
    for cls in E2E_CLASSES:
        pipe.scheduler = cls.from_config(base_config)
        final = {}

        def keep_latents(pipeline, i, t, kw):
            final["latents"] = kw["latents"].clone()
            return kw

        with torch.no_grad():
            out = pipe(
                prompt=E2E["prompt"],
                negative_prompt=E2E["negative_prompt"],
                num_inference_steps=E2E["steps"],
                guidance_scale=E2E["guidance_scale"],
                width=E2E["width"],
                height=E2E["height"],
                generator=[torch.Generator("cpu").manual_seed(E2E["seed"])],
                output_type="np",
                callback_on_step_end=keep_latents,
                callback_on_step_end_tensor_inputs=["latents"],
            )
        image = torch.from_numpy((out.images * 255).round().astype("uint8"))
        tensors[f"{cls.__name__}/image"] = image.contiguous()
        tensors[f"{cls.__name__}/final_latents"] = final["latents"].contiguous()
        print(f"e2e {cls.__name__:34s} image mean {image.float().mean():.2f} std {image.float().std():.2f}")
    path = os.path.join(OUT, "schedulers_e2e.safetensors")
    save_file(tensors, path, metadata={"diffusers": diffusers.__version__})
    os.chmod(path, 0o644)
    return {
        **E2E,
        "file": "schedulers_e2e.safetensors",
        "pipeline": "StableDiffusionXLPipeline (tests/fixtures/tiny-sdxl, float32, CPU), scheduler = Class.from_config(pipe.scheduler.config)",
        "generator": "[torch.Generator('cpu').manual_seed(seed)]",
        "image_to_uint8": "(pipeline(output_type='np').images * 255).round().astype(uint8)",
        "final_latents": "latents after the last step (callback_on_step_end), before the VAE",
        "classes": [cls.__name__ for cls in E2E_CLASSES],
    }


def main():
    torch.set_num_threads(1)
    with open(os.path.join(FIX, "tiny-sdxl", "scheduler", "scheduler_config.json")) as f:
        sdxl_config = json.load(f)
    x0 = torch.randn(ADD_NOISE_SHAPE, generator=torch.Generator("cpu").manual_seed(2))
    noise = torch.randn(ADD_NOISE_SHAPE, generator=torch.Generator("cpu").manual_seed(3))
    tensors = {"add_noise/x0": x0, "add_noise/noise": noise}
    cases = []
    for cls, name, options, extra_config in CASES:
        record, init_noise_sigma, model_calls = run_case(cls, sdxl_config, options, extra_config, (x0, noise))
        for key, value in record.items():
            tensors[f"{cls.__name__}/{name}/{key}"] = value.contiguous()
        cases.append(
            {
                "class": cls.__name__,
                "set": name,
                "options": options,
                "config": extra_config,
                "model_calls": model_calls,
                "init_noise_sigma": init_noise_sigma,
            }
        )
        print(f"{cls.__name__:34s} {name:13s} calls={model_calls:2d} init_noise_sigma={init_noise_sigma:.6f}")
    save_file(tensors, os.path.join(OUT, "schedulers.safetensors"), metadata={"diffusers": diffusers.__version__})
    meta = {
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "steps": STEPS,
        "sample_shape": list(SAMPLE_SHAPE),
        "sample_seed": 0,
        "step_generator_seed": 1,
        "model": "eps = float32(0.5 * tanh(float64(scale_model_input(x, t))) + 0.1 * cos(t / 100))",
        "add_noise": {"index": ADD_NOISE_INDEX, "shape": list(ADD_NOISE_SHAPE), "x0_seed": 2, "noise_seed": 3},
        "cases": cases,
        "e2e": make_e2e_references(),
    }
    with open(os.path.join(OUT, "schedulers.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    os.chmod(os.path.join(OUT, "schedulers.safetensors"), 0o644)
    size = os.path.getsize(os.path.join(OUT, "schedulers.safetensors"))
    print(f"{len(cases)} cases, schedulers.safetensors {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
