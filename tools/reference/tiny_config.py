"""Shared dimensions of the tiny SDXL used for the fixtures."""

TE1_HIDDEN = 8  # CLIP ViT-L analogue (real: 768)
TE1_INTER = 32
TE1_LAYERS = 3  # real: 12 (SDXL uses hidden_states[-2])
TE1_HEADS = 2

TE2_HIDDEN = 12  # OpenCLIP bigG analogue (real: 1280)
TE2_INTER = 48
# real: 32. 11 so that `resblocks.9` (diffusers' SDXL detection key) and a two-digit index exist.
TE2_LAYERS = 11
TE2_HEADS = 2
TE2_PROJ = 10  # real: 1280; different from TE2_HIDDEN and TE1_HIDDEN on purpose

ADD_TIME_DIM = 8  # real: 256

UNET = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    only_cross_attention=False,
    # real SDXL: (320, 640, 1280) with norm_num_groups=32; shrunk to keep the fixtures small
    block_out_channels=(16, 32, 32),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=8,
    norm_eps=1e-5,
    cross_attention_dim=TE1_HIDDEN + TE2_HIDDEN,
    transformer_layers_per_block=(1, 1, 2),
    attention_head_dim=(2, 2, 4),  # diffusers/SDXL naming quirk: this is the number of heads (real: 5, 10, 20)
    dual_cross_attention=False,
    use_linear_projection=True,
    class_embed_type=None,
    addition_embed_type="text_time",
    addition_time_embed_dim=ADD_TIME_DIM,
    num_class_embeds=None,
    upcast_attention=None,
    resnet_time_scale_shift="default",
    projection_class_embeddings_input_dim=6 * ADD_TIME_DIM + TE2_PROJ,
)

VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 16, 16, 16),  # real: (128, 256, 512, 512)
    layers_per_block=2,  # as real SDXL (encoder 2 resnets/level, decoder 3)
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=4,  # real: 32
    sample_size=256,
    scaling_factor=0.13025,
    force_upcast=True,
)

SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    steps_offset=1,
    timestep_spacing="leading",
    interpolation_type="linear",
    prediction_type="epsilon",
    use_karras_sigmas=False,
    clip_sample=False,
    set_alpha_to_one=False,
    sample_max_value=1.0,
    skip_prk_steps=True,
    trained_betas=None,
)
