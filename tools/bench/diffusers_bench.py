"""diffusers side of the GPU comparison, run on the GPU machine beside `gpu_bench`.

    python diffusers_bench.py bench [steps]
        Full-size SDXL base with random weights (no download), fp16 UNet/text encoders,
        fp32 VAE decode (diffusers' force_upcast), SDPA attention: the same measurements
        as `gpu_bench bench`, one JSON object per line.
    python diffusers_bench.py make-reference DIR
        Saves that random SDXL as a diffusers folder in DIR plus DIR/reference.safetensors
        (one UNet call's inputs/outputs in fp32 and fp16, and a 4-step 512x512 generation)
        for `gpu_bench compare DIR`.

Tokenizers come from the repo's tiny fixture (the real CLIP vocabulary).
"""
import json
import os
import sys
import time

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZERS = os.path.join(REPO, "tests", "fixtures", "tiny-sdxl")
PROMPT = "a photograph of an astronaut riding a horse on mars, highly detailed"

UNET = dict(
    sample_size=128, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), layers_per_block=2, attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32, sample_size=1024, scaling_factor=0.13025, force_upcast=True,
)
TE1 = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
           max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
TE2 = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
           max_position_embeddings=77, hidden_act="gelu", projection_dim=1280, bos_token_id=49406, eos_token_id=49407, pad_token_id=0)
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 steps_offset=1, timestep_spacing="leading", prediction_type="epsilon", interpolation_type="linear")


def random_sdxl(dtype=torch.float16):
    torch.manual_seed(0)
    with torch.device("cuda"):
        unet = UNet2DConditionModel(**UNET)
        vae = AutoencoderKL(**VAE)
        te1 = CLIPTextModel(CLIPTextConfig(**TE1))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**TE2))
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=te1, text_encoder_2=te2,
        tokenizer=CLIPTokenizer.from_pretrained(os.path.join(TOKENIZERS, "tokenizer")),
        tokenizer_2=CLIPTokenizer.from_pretrained(os.path.join(TOKENIZERS, "tokenizer_2")),
        unet=unet, scheduler=EulerDiscreteScheduler(**SCHEDULER),
    )
    pipe.to(dtype=dtype)
    return pipe


def seconds(start):
    torch.cuda.synchronize()
    return time.perf_counter() - start


def emit(**kv):
    print(json.dumps(kv), flush=True)


@torch.no_grad()
def bench(steps):
    start = time.perf_counter()
    pipe = random_sdxl()
    emit(kind="load_random_weights_s", value=seconds(start))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        pipe.encode_prompt(PROMPT, device="cuda", num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt="blurry")
        times.append(seconds(start) * 1000)
    emit(kind="text_encode_ms", values=times)
    latents = torch.randn(2, 4, 128, 128, device="cuda", dtype=torch.float16)
    context = torch.randn(2, 77, 2048, device="cuda", dtype=torch.float16)
    added = {"text_embeds": torch.randn(2, 1280, device="cuda", dtype=torch.float16),
             "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * 2, device="cuda", dtype=torch.float16)}
    times = []
    for i in range(8):
        start = time.perf_counter()
        pipe.unet(latents, 500, encoder_hidden_states=context, added_cond_kwargs=added)
        if i >= 2:
            times.append(seconds(start) * 1000)
    emit(kind="unet_step_cfg_1024_ms", values=times)
    # force_upcast: the pipeline decodes SDXL latents with the VAE in float32.
    pipe.vae.to(torch.float32)
    latent = torch.randn(1, 4, 128, 128, device="cuda", dtype=torch.float32)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        pipe.vae.decode(latent)
        times.append(seconds(start) * 1000)
    emit(kind="vae_decode_1024_ms", values=times)
    pipe.vae.to(torch.float16)
    for label in ["first_request_s", "e2e_1024_s"]:
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        pipe(PROMPT, num_inference_steps=steps, height=1024, width=1024, generator=torch.Generator("cpu").manual_seed(1), output_type="np")
        emit(kind=label, steps=steps, value=seconds(start), peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30)


@torch.no_grad()
def make_reference(directory):
    pipe = random_sdxl(torch.float32)
    pipe.save_pretrained(directory, safe_serialization=True)
    torch.manual_seed(1)
    sample = torch.randn(2, 4, 64, 64, device="cuda")
    context = torch.randn(2, 77, 2048, device="cuda")
    text_embeds = torch.randn(2, 1280, device="cuda")
    time_ids = torch.tensor([[512.0, 512, 0, 0, 512, 512]] * 2, device="cuda")
    tensors = {"sample": sample, "encoder_hidden_states": context, "text_embeds": text_embeds, "time_ids": time_ids}
    tensors["noise_pred_f32"] = pipe.unet(sample, 500, encoder_hidden_states=context,
                                          added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}).sample
    pipe.unet.half()
    tensors["noise_pred_f16"] = pipe.unet(sample.half(), 500, encoder_hidden_states=context.half(),
                                          added_cond_kwargs={"text_embeds": text_embeds.half(), "time_ids": time_ids.half()}).sample.float()
    pipe.to(torch.float32)
    images = pipe(PROMPT, num_inference_steps=4, height=512, width=512, guidance_scale=5.0,
                  generator=torch.Generator("cpu").manual_seed(7), output_type="np").images
    tensors["image_f32"] = torch.from_numpy((images * 255).round().astype("uint8"))
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, os.path.join(directory, "reference.safetensors"))
    emit(kind="reference_written", directory=directory)


if __name__ == "__main__":
    if sys.argv[1] == "bench":
        bench(int(sys.argv[2]) if len(sys.argv) > 2 else 30)
    elif sys.argv[1] == "make-reference":
        make_reference(sys.argv[2])
    else:
        sys.exit(__doc__)
