//! The patchable layers of a model by network, and the names LoRA files use for them.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::Result;
use crate::loader::lora::{LayerName, Network};
use crate::loader::single_file::{unet_key, UNetLayout};
use crate::models::patchable::{LayerRegistry, PatchableWeight};
use crate::models::UNetConfig;

pub struct PatchableLayers {
    unet: LayerRegistry,
    text_encoder: LayerRegistry,
    text_encoder_2: LayerRegistry,
    /// kohya's underscored names → diffusers names. Built from the layers the model registered,
    /// through the single-file loader's SGM mapping (no second mapping table): each UNet layer
    /// is reachable by its SGM name (`input_blocks_4_1_…`, what SDXL kohya files use) and by
    /// its diffusers name (`down_blocks_1_attentions_0_…`).
    kohya: HashMap<(Network, String), String>,
}

impl PatchableLayers {
    pub fn new(unet: LayerRegistry, text_encoder: LayerRegistry, text_encoder_2: LayerRegistry, unet_config: &UNetConfig) -> Self {
        let layout = UNetLayout::of(unet_config);
        let mut kohya = HashMap::new();
        for name in unet.iter().map(|(name, _)| name) {
            kohya.insert((Network::Unet, name.replace('.', "_")), name.clone());
            if let Some(sgm) = unet_key(&format!("{name}.weight"), &layout) {
                let sgm = sgm.strip_suffix(".weight").unwrap_or(&sgm).replace('.', "_");
                kohya.insert((Network::Unet, sgm), name.clone());
            }
        }
        for (network, registry) in [(Network::TextEncoder, &text_encoder), (Network::TextEncoder2, &text_encoder_2)] {
            for name in registry.iter().map(|(name, _)| name) {
                kohya.insert((network, name.replace('.', "_")), name.clone());
            }
        }
        Self { unet, text_encoder, text_encoder_2, kohya }
    }

    pub fn registry(&self, network: Network) -> &LayerRegistry {
        match network {
            Network::Unet => &self.unet,
            Network::TextEncoder => &self.text_encoder,
            Network::TextEncoder2 => &self.text_encoder_2,
        }
    }

    /// The layer a LoRA file's name means. Text-encoder names are accepted with and without
    /// `text_model.` (transformers 5 dropped that level from `CLIPTextModel`'s module names).
    pub fn lookup(&self, network: Network, name: &LayerName) -> Option<&Arc<PatchableWeight>> {
        let registry = self.registry(network);
        match name {
            LayerName::Kohya(underscored) => self.kohya.get(&(network, underscored.clone())).and_then(|name| registry.get(name)),
            LayerName::Diffusers(dotted) => registry.get(dotted).or_else(|| match network {
                Network::Unet => None,
                _ => registry.get(&format!("text_model.{dotted}")),
            }),
        }
    }

    /// Checksum over every patchable weight of the UNet and both text encoders.
    pub fn checksum(&self) -> Result<u64> {
        let parts = [self.unet.checksum()?, self.text_encoder.checksum()?, self.text_encoder_2.checksum()?];
        Ok(parts.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, part| (hash ^ part).wrapping_mul(0x0100_0000_01b3)))
    }

    pub fn len(&self) -> usize {
        self.unet.len() + self.text_encoder.len() + self.text_encoder_2.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
