//! Per-image noise streams: image i of a batch draws from `torch.Generator("cpu")`
//! seeded with seed + i, in the order diffusers draws (initial latents, img2img encode
//! sample, step noise of ancestral/SDE schedulers).

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::rng::{NormalKernel, TorchCpuGenerator};
use crate::schedulers::NoiseSource;

pub struct PerImageNoise {
    generators: Vec<TorchCpuGenerator>,
    device: Device,
}

impl PerImageNoise {
    pub fn new(seeds: &[u64], kernel: NormalKernel, device: &Device) -> Self {
        Self { generators: seeds.iter().map(|&s| TorchCpuGenerator::new(s, kernel)).collect(), device: device.clone() }
    }

    /// (batch, dims...) float32 noise, image i's slice from generator i.
    pub fn randn(&mut self, per_image_dims: &[usize]) -> Result<Tensor> {
        let count: usize = per_image_dims.iter().product();
        let mut values = Vec::with_capacity(count * self.generators.len());
        for generator in &mut self.generators {
            values.extend(generator.randn(count));
        }
        let mut dims = vec![self.generators.len()];
        dims.extend_from_slice(per_image_dims);
        Ok(Tensor::from_vec(values, dims, &self.device)?)
    }
}

impl NoiseSource for PerImageNoise {
    fn sample_like(&mut self, latents: &Tensor) -> Result<Tensor> {
        let dims = latents.dims();
        Ok(self.randn(&dims[1..])?.to_dtype(latents.dtype())?)
    }
}
