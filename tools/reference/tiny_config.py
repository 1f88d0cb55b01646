"""Configs of the tiny SDXL used for the fixtures.

Every `SDXL_*` dict below is a published config file of stabilityai/stable-diffusion-xl-base-1.0
(`model_index.json`, `unet/config.json`, `vae/config.json`, `text_encoder/config.json`,
`text_encoder_2/config.json`, `tokenizer{,_2}/tokenizer_config.json`,
`tokenizer{,_2}/special_tokens_map.json`, `scheduler/scheduler_config.json`): these are the
published values, every field, in the published key order. The tiny model takes each file as
published and changes only widths and depths (the `*_SHRINK` dicts), so the fixture folder carries
the real files' fields, including CLIP's legacy ids `bos_token_id: 0, eos_token_id: 2,
pad_token_id: 1` (transformers then pools at `input_ids.argmax(-1)`, the first 49407).
"""

# ----------------------------------------------------------------------------------------------
# Published files (stabilityai/stable-diffusion-xl-base-1.0), verbatim
# ----------------------------------------------------------------------------------------------
SDXL_MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "_diffusers_version": "0.19.0.dev0",
    "force_zeros_for_empty_prompt": True,
    "add_watermarker": None,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

SDXL_UNET = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.19.0.dev0",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],  # diffusers/SDXL naming quirk: the number of heads per level
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

SDXL_VAE = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.20.0.dev0",
    "_name_or_path": "../sdxl-vae/",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
}

SDXL_TEXT_ENCODER = {  # CLIP ViT-L/14 text tower
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "torch_dtype": "float16",
    "transformers_version": "4.32.0.dev0",
    "vocab_size": 49408,
}

SDXL_TEXT_ENCODER_2 = {  # OpenCLIP ViT-bigG/14 text tower
    "architectures": ["CLIPTextModelWithProjection"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 5120,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "pad_token_id": 1,
    "projection_dim": 1280,
    "torch_dtype": "float16",
    "transformers_version": "4.32.0.dev0",
    "vocab_size": 49408,
}


def _added_token(content):
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False,
            "single_word": False}


def _special_token(content):
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def _tokenizer_config(pad):
    return {
        "add_prefix_space": False,
        "bos_token": _added_token("<|startoftext|>"),
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": _added_token("<|endoftext|>"),
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": pad,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": _added_token("<|endoftext|>"),
    }


def _special_tokens_map(pad):
    return {
        "bos_token": _special_token("<|startoftext|>"),
        "eos_token": _special_token("<|endoftext|>"),
        "pad_token": pad,
        "unk_token": _special_token("<|endoftext|>"),
    }


SDXL_TOKENIZER_CONFIG = _tokenizer_config("<|endoftext|>")
SDXL_TOKENIZER_2_CONFIG = _tokenizer_config("!")
SDXL_SPECIAL_TOKENS_MAP = _special_tokens_map("<|endoftext|>")
SDXL_SPECIAL_TOKENS_MAP_2 = _special_tokens_map("!")

SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

# ----------------------------------------------------------------------------------------------
# The shrink: widths and depths only. Everything else keeps its published value.
# ----------------------------------------------------------------------------------------------
TE1_HIDDEN = 8  # CLIP ViT-L: 768
TE2_HIDDEN = 12  # OpenCLIP bigG: 1280
TE2_PROJ = 10  # bigG: 1280; differs from TE2_HIDDEN and TE1_HIDDEN on purpose
ADD_TIME_DIM = 8  # 256

TEXT_ENCODER_SHRINK = dict(
    hidden_size=TE1_HIDDEN,
    intermediate_size=4 * TE1_HIDDEN,
    num_hidden_layers=3,  # SDXL uses hidden_states[-2]
    num_attention_heads=2,
    projection_dim=TE1_HIDDEN,  # = hidden_size, as published (768 = 768)
)
TEXT_ENCODER_2_SHRINK = dict(
    hidden_size=TE2_HIDDEN,
    intermediate_size=4 * TE2_HIDDEN,
    # 11 so that `resblocks.9` (diffusers' SDXL detection key) and a two-digit layer index exist
    num_hidden_layers=11,
    num_attention_heads=2,
    projection_dim=TE2_PROJ,
)
UNET_SHRINK = dict(
    addition_time_embed_dim=ADD_TIME_DIM,
    attention_head_dim=[2, 2, 4],  # heads per level
    block_out_channels=[16, 32, 32],
    cross_attention_dim=TE1_HIDDEN + TE2_HIDDEN,  # 768 + 1280 = 2048
    norm_num_groups=8,
    # 6 micro-conditioning values x addition_time_embed_dim + the pooled embedding (6·256 + 1280 = 2816)
    projection_class_embeddings_input_dim=6 * ADD_TIME_DIM + TE2_PROJ,
    transformer_layers_per_block=[1, 1, 2],
)
VAE_SHRINK = dict(
    block_out_channels=[8, 16, 16, 16],  # 4 levels as published: latent = image / 8
    norm_num_groups=4,
)


def shrink(published, changes):
    """`published` with `changes` applied; every changed key must exist in the published file."""
    unknown = set(changes) - set(published)
    assert not unknown, f"not a published field: {sorted(unknown)}"
    return {k: changes.get(k, v) for k, v in published.items()}


MODEL_INDEX = dict(SDXL_MODEL_INDEX)
UNET_CONFIG = shrink(SDXL_UNET, UNET_SHRINK)
VAE_CONFIG = shrink(SDXL_VAE, VAE_SHRINK)
TEXT_ENCODER_CONFIG = shrink(SDXL_TEXT_ENCODER, TEXT_ENCODER_SHRINK)
TEXT_ENCODER_2_CONFIG = shrink(SDXL_TEXT_ENCODER_2, TEXT_ENCODER_2_SHRINK)
SCHEDULER_CONFIG = dict(SDXL_SCHEDULER)
TOKENIZER_FILES = {
    "tokenizer": {"tokenizer_config.json": SDXL_TOKENIZER_CONFIG, "special_tokens_map.json": SDXL_SPECIAL_TOKENS_MAP},
    "tokenizer_2": {"tokenizer_config.json": SDXL_TOKENIZER_2_CONFIG, "special_tokens_map.json": SDXL_SPECIAL_TOKENS_MAP_2},
}

# what the constructors take (metadata keys dropped)
UNET = {k: (tuple(v) if isinstance(v, list) else v) for k, v in UNET_CONFIG.items() if not k.startswith("_")}
VAE = {k: (tuple(v) if isinstance(v, list) else v) for k, v in VAE_CONFIG.items() if not k.startswith("_")}
TE2_LAYERS = TEXT_ENCODER_2_CONFIG["num_hidden_layers"]

# ----------------------------------------------------------------------------------------------
# SDXL refiner (stabilityai/stable-diffusion-xl-refiner-1.0) and madebyollin/sdxl-vae-fp16-fix,
# used by make_refiner_vae_references.py. Published files, every field, published key order.
#
# Provenance (see README "tiny-sdxl-refiner"):
# - REFINER_MODEL_INDEX: the published model_index.json, read verbatim (a byte copy of the file in a
#   public GitHub mirror, JSchalter/models stable-diffusion-xl-refiner-1.0/model_index.json).
# - REFINER_UNET: reconstructed, not read verbatim. The values are those of the published file as
#   loaded and re-saved by diffusers 0.29.1 / 0.30.3 (third-party copies of the refiner unet config);
#   0.30.3 lists `reverse_transformer_layers_per_block`, `dropout`, `attention_type` in
#   `_use_default_values`, i.e. the published file has exactly the base unet's keys. `_diffusers_version`
#   is taken from model_index.json. Written as below (sorted, indent 2) it is 1709 bytes; the hub lists
#   the published file as 1.71 kB.
# - REFINER_SCHEDULER: reconstructed as the base's published scheduler_config.json (the hub lists the
#   refiner's as 479 bytes from the same commit, the size of the base's file).
# - text_encoder_2, tokenizer_2 and vae of the refiner repo are the base's files (the hub lists
#   text_encoder_2/config.json as the base's 575-byte file and vae/config.json as 642 bytes, the size of
#   SDXL_VAE written out), so the tiny refiner copies the tiny base's folders byte for byte.
# - SDXL_VAE_FP16_FIX: the published config.json (copied field for field, `force_upcast` last as in the
#   file, by a public repo that embeds it; the key set and values match other copies).
# ----------------------------------------------------------------------------------------------
REFINER_MODEL_INDEX = {
    "_class_name": "StableDiffusionXLImg2ImgPipeline",
    "_diffusers_version": "0.19.0.dev0",
    "force_zeros_for_empty_prompt": False,
    "add_watermarker": None,
    "requires_aesthetics_score": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": [None, None],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": [None, None],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

REFINER_UNET = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.19.0.dev0",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [6, 12, 24, 24],  # heads per level (SDXL naming); 64-wide heads
    "block_out_channels": [384, 768, 1536, 1536],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 1280,  # bigG's hidden size only (no CLIP-L)
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2560,  # 5 time ids x 256 + 1280 pooled
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": 4,  # an int, applied to every cross-attention level and the mid block
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

REFINER_SCHEDULER = dict(SDXL_SCHEDULER)

SDXL_VAE_FP16_FIX = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.18.0.dev0",
    "_name_or_path": ".",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
    "force_upcast": False,
}

REFINER_TIME_IDS = 5  # original_size (2) + crops_coords_top_left (2) + aesthetic_score (1)
REFINER_UNET_SHRINK = dict(
    addition_time_embed_dim=ADD_TIME_DIM,
    attention_head_dim=[2, 2, 4, 4],  # heads per level
    block_out_channels=[16, 32, 32, 32],
    cross_attention_dim=TE2_HIDDEN,  # the refiner conditions on bigG only: 1280
    norm_num_groups=8,
    # 5 time ids x addition_time_embed_dim + the pooled embedding (5·256 + 1280 = 2560)
    projection_class_embeddings_input_dim=REFINER_TIME_IDS * ADD_TIME_DIM + TE2_PROJ,
    transformer_layers_per_block=2,  # an int, as published
)
VAE_FP16_FIX_SHRINK = dict(VAE_SHRINK)

REFINER_MODEL_INDEX_CONFIG = dict(REFINER_MODEL_INDEX)
REFINER_UNET_CONFIG = shrink(REFINER_UNET, REFINER_UNET_SHRINK)
REFINER_SCHEDULER_CONFIG = dict(REFINER_SCHEDULER)
VAE_FP16_FIX_CONFIG = shrink(SDXL_VAE_FP16_FIX, VAE_FP16_FIX_SHRINK)

REFINER_UNET_ARGS = {k: (tuple(v) if isinstance(v, list) else v) for k, v in REFINER_UNET_CONFIG.items()
                     if not k.startswith("_")}
VAE_FP16_FIX_ARGS = {k: (tuple(v) if isinstance(v, list) else v) for k, v in VAE_FP16_FIX_CONFIG.items()
                     if not k.startswith("_")}

# ----------------------------------------------------------------------------------------------
# SDXL ControlNets (diffusers/controlnet-canny-sdxl-1.0, diffusers/controlnet-depth-sdxl-1.0), used by
# make_controlnet_references.py. Published config.json files, every field, published (sorted) key order.
#
# Provenance (see README "tiny-controlnet-canny"):
# - SDXL_CONTROLNET_DEPTH: read from a third-party copy of the published file (a Python dict in a public
#   GitHub repo whose null entries are commented out; they are restored here as None). Written out (sorted,
#   indent 2, trailing newline) it has 1274 bytes; the hub lists the published file as 1.27 kB.
# - SDXL_CONTROLNET_CANNY: reconstructed. The hub lists the published root config.json as 1.31 kB ("move the
#   checkpoint to root"); a byte copy was not found. The fields and values are those of a copy re-saved by
#   diffusers 0.24.0.dev0 after loading diffusers/controlnet-canny-sdxl-1.0 (its `_name_or_path`); that copy has
#   exactly the 31 fields below and is 1293 bytes, which this dict reproduces to the byte with that
#   `_name_or_path`/`_diffusers_version`. The fields and values are the depth file's. `_diffusers_version` is
#   taken from the depth file (trained in the same week). The published file also carries a `_name_or_path`
#   of 47-56 characters (1.31 kB - 1235 bytes of the rest); its value is unknown, it is not a model field, and
#   it is left out (the canny training checkpoints in the same repo, 1.24 kB = 1235 bytes, have none).
# ----------------------------------------------------------------------------------------------
SDXL_CONTROLNET_CANNY = {
    "_class_name": "ControlNetModel",
    "_diffusers_version": "0.20.0.dev0",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],  # heads per level (SDXL naming), as the base unet
    "block_out_channels": [320, 640, 1280],
    "class_embed_type": None,
    "conditioning_channels": 3,
    "conditioning_embedding_out_channels": [16, 32, 96, 256],
    "controlnet_conditioning_channel_order": "rgb",
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "global_pool_conditions": False,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_time_scale_shift": "default",
    "transformer_layers_per_block": [1, 2, 10],
    "upcast_attention": None,
    "use_linear_projection": True,
}

SDXL_CONTROLNET_DEPTH = {
    "_class_name": "ControlNetModel",
    "_diffusers_version": "0.20.0.dev0",
    "_name_or_path": "valhalla/depth-2",
    **{k: v for k, v in SDXL_CONTROLNET_CANNY.items() if not k.startswith("_")},
}

CONTROLNET_SHRINK = dict(
    addition_time_embed_dim=ADD_TIME_DIM,
    attention_head_dim=[2, 2, 4],  # = the tiny base unet's
    block_out_channels=[16, 32, 32],
    # 4 entries as published: conv_in + 3 stride-2 convolutions, image / 8 = latent size
    conditioning_embedding_out_channels=[4, 8, 8, 16],
    cross_attention_dim=TE1_HIDDEN + TE2_HIDDEN,
    norm_num_groups=8,
    projection_class_embeddings_input_dim=6 * ADD_TIME_DIM + TE2_PROJ,
    transformer_layers_per_block=[1, 1, 2],
)

CONTROLNET_CANNY_CONFIG = shrink(SDXL_CONTROLNET_CANNY, CONTROLNET_SHRINK)
CONTROLNET_DEPTH_CONFIG = shrink(SDXL_CONTROLNET_DEPTH, CONTROLNET_SHRINK)
