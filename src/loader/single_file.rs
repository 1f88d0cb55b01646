//! Single-file SDXL checkpoints as Civitai and A1111 distribute them (Stability's SGM
//! layout): `model.diffusion_model.*` (LDM UNet names), `conditioner.embedders.0.transformer.*`
//! (HF CLIP names), `conditioner.embedders.1.model.*` (OpenCLIP names, fused q/k/v) and
//! `first_stage_model.*` (LDM VAE names). Names are translated on lookup, so the file is
//! read through its memory map without a converted copy. The mapping mirrors diffusers'
//! `scripts/convert_diffusers_to_original_sdxl.py`, generalised to any depth.

use std::sync::Arc;

use super::weights::{KeyMap, Source};
use crate::error::{Error, Result};

pub const UNET_PREFIX: &str = "model.diffusion_model.";
pub const TEXT_ENCODER_PREFIX: &str = "conditioner.embedders.0.transformer.";
pub const TEXT_ENCODER_2_PREFIX: &str = "conditioner.embedders.1.model.";
/// The refiner has only the OpenCLIP encoder, as its first embedder.
pub const REFINER_TEXT_ENCODER_2_PREFIX: &str = "conditioner.embedders.0.model.";
pub const VAE_PREFIX: &str = "first_stage_model.";

/// What a checkpoint's keys say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointKind {
    SdxlBase,
    SdxlRefiner,
    StableDiffusion1,
    StableDiffusion2,
    Unknown,
}

pub fn detect_kind<'a>(keys: impl Iterator<Item = &'a String>) -> CheckpointKind {
    let (mut label_emb, mut te1, mut te2, mut refiner_te, mut sd1_te, mut sd2_te) = (false, false, false, false, false, false);
    for key in keys {
        label_emb |= key.starts_with("model.diffusion_model.label_emb.");
        te1 |= key.starts_with(TEXT_ENCODER_PREFIX);
        te2 |= key.starts_with(TEXT_ENCODER_2_PREFIX);
        refiner_te |= key.starts_with(REFINER_TEXT_ENCODER_2_PREFIX);
        sd1_te |= key.starts_with("cond_stage_model.transformer.");
        sd2_te |= key.starts_with("cond_stage_model.model.");
    }
    match () {
        _ if label_emb && te1 && te2 => CheckpointKind::SdxlBase,
        _ if label_emb && refiner_te => CheckpointKind::SdxlRefiner,
        _ if sd1_te => CheckpointKind::StableDiffusion1,
        _ if sd2_te => CheckpointKind::StableDiffusion2,
        _ => CheckpointKind::Unknown,
    }
}

pub fn require_sdxl_base<'a>(keys: impl Iterator<Item = &'a String>, origin: &str) -> Result<()> {
    match detect_kind(keys) {
        CheckpointKind::SdxlBase => Ok(()),
        CheckpointKind::SdxlRefiner => Err(Error::ModelLoad(format!("{origin} is an SDXL refiner checkpoint; name it in models.refiner, not as the base model"))),
        CheckpointKind::StableDiffusion1 => Err(Error::ModelLoad(format!("{origin} is a Stable Diffusion 1.x checkpoint, not SDXL"))),
        CheckpointKind::StableDiffusion2 => Err(Error::ModelLoad(format!("{origin} is a Stable Diffusion 2.x checkpoint, not SDXL"))),
        CheckpointKind::Unknown => Err(Error::ModelLoad(format!("{origin} is not an SDXL checkpoint (no model.diffusion_model.label_emb / conditioner.embedders keys)"))),
    }
}

/// Structure the UNet mapping needs: which levels have attention, resnets per level.
#[derive(Debug, Clone)]
pub struct UNetLayout {
    pub layers_per_block: usize,
    pub down_has_attention: Vec<bool>,
    pub up_has_attention: Vec<bool>,
}

impl UNetLayout {
    pub fn of(config: &crate::models::UNetConfig) -> Self {
        Self {
            layers_per_block: config.layers_per_block,
            down_has_attention: config.down_block_types.iter().map(|t| t.starts_with("CrossAttn")).collect(),
            up_has_attention: config.up_block_types.iter().map(|t| t.starts_with("CrossAttn")).collect(),
        }
    }
}

pub fn unet_map(layout: UNetLayout) -> KeyMap {
    Arc::new(move |name: &str| unet_key(name, &layout).map(|key| Source::Key(format!("{UNET_PREFIX}{key}"))))
}

fn resnet_inner(rest: &str) -> Option<String> {
    const PAIRS: [(&str, &str); 6] = [
        ("norm1.", "in_layers.0."),
        ("conv1.", "in_layers.2."),
        ("time_emb_proj.", "emb_layers.1."),
        ("norm2.", "out_layers.0."),
        ("conv2.", "out_layers.3."),
        ("conv_shortcut.", "skip_connection."),
    ];
    PAIRS.iter().find_map(|(diffusers, sgm)| rest.strip_prefix(diffusers).map(|tail| format!("{sgm}{tail}")))
}

/// Splits `down_blocks.1.resnets.0.norm1.weight` into (1, "resnets", 0, "norm1.weight").
fn split_block(rest: &str) -> Option<(usize, &str, usize, &str)> {
    let (block, rest) = rest.split_once('.')?;
    let (kind, rest) = rest.split_once('.')?;
    let (index, tail) = rest.split_once('.')?;
    Some((block.parse().ok()?, kind, index.parse().ok()?, tail))
}

/// The SGM name (without `model.diffusion_model.`) of a diffusers UNet weight name.
pub fn unet_key(name: &str, layout: &UNetLayout) -> Option<String> {
    const FIXED: [(&str, &str); 10] = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("add_embedding.linear_1.", "label_emb.0.0."),
        ("add_embedding.linear_2.", "label_emb.0.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ];
    for (diffusers, sgm) in FIXED {
        if let Some(tail) = name.strip_prefix(diffusers) {
            return Some(if diffusers.starts_with("mid_block.resnets") {
                format!("{sgm}{}", resnet_inner(tail)?)
            } else {
                format!("{sgm}{tail}")
            });
        }
    }
    let per_level = layout.layers_per_block + 1;
    if let Some(rest) = name.strip_prefix("down_blocks.") {
        let (level, kind, index, tail) = split_block(rest)?;
        return match kind {
            "resnets" => Some(format!("input_blocks.{}.0.{}", 1 + level * per_level + index, resnet_inner(tail)?)),
            "attentions" => Some(format!("input_blocks.{}.1.{tail}", 1 + level * per_level + index)),
            "downsamplers" => Some(format!("input_blocks.{}.0.op.{}", (level + 1) * per_level, tail.strip_prefix("conv.")?)),
            _ => None,
        };
    }
    if let Some(rest) = name.strip_prefix("up_blocks.") {
        let (level, kind, index, tail) = split_block(rest)?;
        let has_attention = *layout.up_has_attention.get(level)?;
        return match kind {
            "resnets" => Some(format!("output_blocks.{}.0.{}", level * per_level + index, resnet_inner(tail)?)),
            "attentions" => Some(format!("output_blocks.{}.1.{tail}", level * per_level + index)),
            "upsamplers" => Some(format!(
                "output_blocks.{}.{}.{tail}",
                level * per_level + layout.layers_per_block,
                if has_attention { 2 } else { 1 }
            )),
            _ => None,
        };
    }
    None
}

pub fn text_encoder_map() -> KeyMap {
    Arc::new(|name: &str| Some(Source::Key(format!("{TEXT_ENCODER_PREFIX}{name}"))))
}

/// HF CLIP names → OpenCLIP names of SDXL's second encoder, stored under `prefix`
/// ([`TEXT_ENCODER_2_PREFIX`] in a base checkpoint, [`REFINER_TEXT_ENCODER_2_PREFIX`] in a refiner).
pub fn text_encoder_2_map(prefix: &'static str) -> KeyMap {
    Arc::new(move |name: &str| {
        let p = prefix;
        if name == "text_projection.weight" {
            return Some(Source::Transposed(format!("{p}text_projection")));
        }
        let rest = name.strip_prefix("text_model.")?;
        match rest {
            "embeddings.token_embedding.weight" => return Some(Source::Key(format!("{p}token_embedding.weight"))),
            "embeddings.position_embedding.weight" => return Some(Source::Key(format!("{p}positional_embedding"))),
            _ => {}
        }
        if let Some(tail) = rest.strip_prefix("final_layer_norm.") {
            return Some(Source::Key(format!("{p}ln_final.{tail}")));
        }
        let layer_rest = rest.strip_prefix("encoder.layers.")?;
        let (index, tail) = layer_rest.split_once('.')?;
        let block = format!("{p}transformer.resblocks.{index}.");
        let fused = |part: usize, kind: &str| Source::Chunk { key: format!("{block}attn.in_proj_{kind}"), part, parts: 3 };
        Some(match tail {
            "self_attn.q_proj.weight" => fused(0, "weight"),
            "self_attn.k_proj.weight" => fused(1, "weight"),
            "self_attn.v_proj.weight" => fused(2, "weight"),
            "self_attn.q_proj.bias" => fused(0, "bias"),
            "self_attn.k_proj.bias" => fused(1, "bias"),
            "self_attn.v_proj.bias" => fused(2, "bias"),
            _ => {
                const PAIRS: [(&str, &str); 5] = [
                    ("self_attn.out_proj.", "attn.out_proj."),
                    ("layer_norm1.", "ln_1."),
                    ("layer_norm2.", "ln_2."),
                    ("mlp.fc1.", "mlp.c_fc."),
                    ("mlp.fc2.", "mlp.c_proj."),
                ];
                let (diffusers, sgm) = PAIRS.iter().find(|(d, _)| tail.starts_with(d))?;
                Source::Key(format!("{block}{sgm}{}", &tail[diffusers.len()..]))
            }
        })
    })
}

/// diffusers VAE names → LDM names under `prefix` ([`VAE_PREFIX`] inside a checkpoint, none in
/// a VAE file such as `sdxl_vae.safetensors`); `levels` is the number of resolution levels (4 for SDXL).
pub fn vae_map(prefix: &'static str, levels: usize) -> KeyMap {
    Arc::new(move |name: &str| vae_key(name, levels).map(|key| Source::Key(format!("{prefix}{key}"))))
}

fn vae_key(name: &str, levels: usize) -> Option<String> {
    let (part, rest) = name.split_once('.')?;
    if part == "quant_conv" || part == "post_quant_conv" {
        return Some(name.to_string());
    }
    if part != "encoder" && part != "decoder" {
        return None;
    }
    let resnet = |tail: &str| tail.replacen("conv_shortcut.", "nin_shortcut.", 1);
    let mapped = if let Some(tail) = rest.strip_prefix("conv_norm_out.") {
        format!("norm_out.{tail}")
    } else if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
        rest.to_string()
    } else if let Some(tail) = rest.strip_prefix("mid_block.attentions.0.") {
        const PAIRS: [(&str, &str); 5] = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")];
        let (diffusers, ldm) = PAIRS.iter().find(|(d, _)| tail.starts_with(d))?;
        format!("mid.attn_1.{ldm}{}", &tail[diffusers.len()..])
    } else if let Some(tail) = rest.strip_prefix("mid_block.resnets.") {
        let (index, tail) = tail.split_once('.')?;
        format!("mid.block_{}.{}", index.parse::<usize>().ok()? + 1, resnet(tail))
    } else if let Some(tail) = rest.strip_prefix("down_blocks.") {
        let (level, kind, index, tail) = split_block(tail)?;
        match kind {
            "resnets" => format!("down.{level}.block.{index}.{}", resnet(tail)),
            "downsamplers" => format!("down.{level}.downsample.{tail}"),
            _ => return None,
        }
    } else if let Some(tail) = rest.strip_prefix("up_blocks.") {
        let (level, kind, index, tail) = split_block(tail)?;
        let ldm_level = levels.checked_sub(1 + level)?;
        match kind {
            "resnets" => format!("up.{ldm_level}.block.{index}.{}", resnet(tail)),
            "upsamplers" => format!("up.{ldm_level}.upsample.{tail}"),
            _ => return None,
        }
    } else {
        return None;
    };
    Some(format!("{part}.{mapped}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unet(name: &str) -> String {
        let layout = UNetLayout { layers_per_block: 2, down_has_attention: vec![false, true, true], up_has_attention: vec![true, true, false] };
        match (unet_map(layout))(name) {
            Some(Source::Key(key)) => key,
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn unet_names_follow_the_sgm_layout() {
        assert_eq!(unet("conv_in.weight"), "model.diffusion_model.input_blocks.0.0.weight");
        assert_eq!(unet("down_blocks.0.resnets.1.norm1.weight"), "model.diffusion_model.input_blocks.2.0.in_layers.0.weight");
        assert_eq!(unet("down_blocks.0.downsamplers.0.conv.weight"), "model.diffusion_model.input_blocks.3.0.op.weight");
        assert_eq!(unet("down_blocks.2.attentions.1.proj_in.weight"), "model.diffusion_model.input_blocks.8.1.proj_in.weight");
        assert_eq!(unet("up_blocks.0.resnets.2.conv_shortcut.bias"), "model.diffusion_model.output_blocks.2.0.skip_connection.bias");
        assert_eq!(unet("up_blocks.0.upsamplers.0.conv.weight"), "model.diffusion_model.output_blocks.2.2.conv.weight");
        assert_eq!(unet("up_blocks.2.resnets.0.time_emb_proj.weight"), "model.diffusion_model.output_blocks.6.0.emb_layers.1.weight");
        assert_eq!(unet("mid_block.resnets.1.conv2.weight"), "model.diffusion_model.middle_block.2.out_layers.3.weight");
        assert_eq!(unet("add_embedding.linear_2.bias"), "model.diffusion_model.label_emb.0.2.bias");
    }

    #[test]
    fn vae_and_open_clip_names() {
        let vae = vae_map(VAE_PREFIX, 4);
        assert_eq!(vae("decoder.up_blocks.0.resnets.2.conv_shortcut.weight"), Some(Source::Key("first_stage_model.decoder.up.3.block.2.nin_shortcut.weight".into())));
        assert_eq!(vae("encoder.mid_block.attentions.0.to_out.0.weight"), Some(Source::Key("first_stage_model.encoder.mid.attn_1.proj_out.weight".into())));
        assert_eq!(vae("encoder.mid_block.resnets.1.norm1.bias"), Some(Source::Key("first_stage_model.encoder.mid.block_2.norm1.bias".into())));
        let te2 = text_encoder_2_map(TEXT_ENCODER_2_PREFIX);
        assert_eq!(
            te2("text_model.encoder.layers.3.self_attn.k_proj.bias"),
            Some(Source::Chunk { key: "conditioner.embedders.1.model.transformer.resblocks.3.attn.in_proj_bias".into(), part: 1, parts: 3 })
        );
        assert_eq!(te2("text_projection.weight"), Some(Source::Transposed("conditioner.embedders.1.model.text_projection".into())));
    }
}
