//! Tiled VAE encode and decode (diffusers `AutoencoderKL.tiled_decode` / `_tiled_encode`,
//! `enable_vae_tiling`): the input is cut into overlapping square tiles, each runs through the
//! network alone, and the overlaps are blended linearly, so memory stays that of one tile
//! whatever the image size. The result equals diffusers' for the same tile settings.

use candle_core::{DType, Tensor};

use super::autoencoder_kl::{AutoencoderKL, LatentDistribution};
use crate::error::{Error, Result};

/// diffusers' `tile_sample_min_size` (pixels) and `tile_overlap_factor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VaeTiling {
    pub tile_size: usize,
    pub overlap: f64,
}

impl VaeTiling {
    /// diffusers' defaults: the VAE's `sample_size` (1024 for SDXL) and a quarter overlap.
    pub fn default_for(vae: &AutoencoderKL) -> Self {
        Self { tile_size: vae.config().sample_size, overlap: 0.25 }
    }

    /// Checks that the tiles stitch to exactly the full size: the pixels each tile keeps
    /// (`tile − overlap`) must be a whole number of latent cells, both ways.
    pub fn check(&self, downscale_factor: usize) -> std::result::Result<(), String> {
        if !(0.0..0.5).contains(&self.overlap) {
            return Err(format!("tile overlap {} must be in [0, 0.5)", self.overlap));
        }
        if self.tile_size < 2 * downscale_factor || self.tile_size % downscale_factor != 0 {
            return Err(format!("tile size {} must be a multiple of {downscale_factor} and at least {}", self.tile_size, 2 * downscale_factor));
        }
        let latent = self.tile_size / downscale_factor;
        let decode_kept = self.tile_size - (self.tile_size as f64 * self.overlap) as usize;
        let decode_stride = (latent as f64 * (1.0 - self.overlap)) as usize;
        let encode_kept = latent - (latent as f64 * self.overlap) as usize;
        let encode_stride = (self.tile_size as f64 * (1.0 - self.overlap)) as usize;
        if decode_stride == 0 || decode_kept != decode_stride * downscale_factor || encode_stride != encode_kept * downscale_factor {
            return Err(format!(
                "tile size {} with overlap {} does not stitch to whole latent cells (try a tile size that is a multiple of {} and overlap 0.25)",
                self.tile_size,
                self.overlap,
                4 * downscale_factor
            ));
        }
        Ok(())
    }

    fn latent_tile(&self, downscale_factor: usize) -> usize {
        self.tile_size / downscale_factor
    }

    /// Whether diffusers would tile these latents (larger than one tile along either axis).
    pub fn tiles_latents(&self, latents: &Tensor, downscale_factor: usize) -> Result<bool> {
        let (_, _, height, width) = latents.dims4()?;
        let tile = self.latent_tile(downscale_factor);
        Ok(height > tile || width > tile)
    }
}

impl AutoencoderKL {
    /// `decode`, tile by tile when the latents are larger than one tile.
    pub fn tiled_decode(&self, latents: &Tensor, tiling: &VaeTiling) -> Result<Tensor> {
        let factor = self.config().downscale_factor();
        if !tiling.tiles_latents(latents, factor)? {
            return self.decode(latents);
        }
        let latent_tile = tiling.latent_tile(factor);
        let stride = (latent_tile as f64 * (1.0 - tiling.overlap)) as usize;
        let blend = (tiling.tile_size as f64 * tiling.overlap) as usize;
        let kept = tiling.tile_size - blend;
        tile_and_blend(latents, latent_tile, stride, blend, kept, |tile| self.decode(tile))
    }

    /// `encode`, tile by tile when the image is larger than one tile.
    pub fn tiled_encode(&self, image: &Tensor, tiling: &VaeTiling) -> Result<LatentDistribution> {
        let (_, _, height, width) = image.dims4()?;
        if height <= tiling.tile_size && width <= tiling.tile_size {
            return self.encode(image);
        }
        let latent_tile = tiling.latent_tile(self.config().downscale_factor());
        let stride = (tiling.tile_size as f64 * (1.0 - tiling.overlap)) as usize;
        let blend = (latent_tile as f64 * tiling.overlap) as usize;
        let kept = latent_tile - blend;
        let moments = tile_and_blend(image, tiling.tile_size, stride, blend, kept, |tile| self.encode_moments(tile))?;
        LatentDistribution::from_moments(&moments)
    }
}

/// Runs `network` on tiles of `tile` cells every `stride` cells, blends each output tile into
/// the one above and the one to its left over `blend` rows/columns, keeps the first `kept`
/// of each, and stitches the kept parts. The order is diffusers': tiles are blended in raster
/// order, each with its neighbours' already blended outputs.
fn tile_and_blend(input: &Tensor, tile: usize, stride: usize, blend: usize, kept: usize, network: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let (_, _, height, width) = input.dims4()?;
    if stride == 0 {
        return Err(Error::Internal("VAE tiling with a zero stride".into()));
    }
    let mut rows: Vec<Vec<Tensor>> = Vec::new();
    for top in (0..height).step_by(stride) {
        let mut row = Vec::new();
        for left in (0..width).step_by(stride) {
            let piece = input.narrow(2, top, tile.min(height - top))?.narrow(3, left, tile.min(width - left))?;
            row.push(network(&piece)?);
        }
        rows.push(row);
    }
    let mut stitched_rows = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        let mut kept_tiles = Vec::with_capacity(rows[i].len());
        for j in 0..rows[i].len() {
            let mut current = rows[i][j].clone();
            if i > 0 {
                current = blend_into(&rows[i - 1][j], &current, blend, 2)?;
            }
            if j > 0 {
                current = blend_into(&rows[i][j - 1], &current, blend, 3)?;
            }
            rows[i][j] = current.clone();
            let (_, _, tile_height, tile_width) = current.dims4()?;
            kept_tiles.push(current.narrow(2, 0, kept.min(tile_height))?.narrow(3, 0, kept.min(tile_width))?);
        }
        stitched_rows.push(Tensor::cat(&kept_tiles, 3)?);
    }
    Ok(Tensor::cat(&stitched_rows, 2)?)
}

/// diffusers' `blend_v` (axis 2) / `blend_h` (axis 3): the first `extent` lines of `next`
/// fade in from the last `extent` lines of `previous`, line y weighted y / extent.
fn blend_into(previous: &Tensor, next: &Tensor, extent: usize, axis: usize) -> Result<Tensor> {
    let extent = extent.min(previous.dim(axis)?).min(next.dim(axis)?);
    if extent == 0 {
        return Ok(next.clone());
    }
    let weights: Vec<f32> = (0..extent).map(|y| (y as f64 / extent as f64) as f32).collect();
    let keep: Vec<f32> = (0..extent).map(|y| (1.0 - y as f64 / extent as f64) as f32).collect();
    let mut shape = [1usize; 4];
    shape[axis] = extent;
    let device = next.device();
    let as_weights = |values: Vec<f32>| -> Result<Tensor> { Ok(Tensor::from_vec(values, &shape[..], device)?.to_dtype(DType::F32)?) };
    let (incoming, fading) = (as_weights(weights)?, as_weights(keep)?);
    let dtype = next.dtype();
    let tail = previous.narrow(axis, previous.dim(axis)? - extent, extent)?.to_dtype(DType::F32)?;
    let head = next.narrow(axis, 0, extent)?.to_dtype(DType::F32)?;
    let blended = (tail.broadcast_mul(&fading)? + head.broadcast_mul(&incoming)?)?.to_dtype(dtype)?;
    let rest = next.narrow(axis, extent, next.dim(axis)? - extent)?;
    Ok(Tensor::cat(&[&blended, &rest], axis)?)
}
