//! Upscaling a finished 8-bit image as Real-ESRGAN's `RealESRGANer.enhance` does (v0.3.0):
//! reflect pre-padding on the right and bottom, the padding that makes a ×2 model's pixel
//! unshuffle divide, the network (tile by tile for large images, each tile widened by
//! `tile_pad` and only its own part kept), the crops, clamp and rounding to 8 bits, then
//! OpenCV's Lanczos4 to the requested factor when it differs from the model's.

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use crate::error::{Error, Result};
use crate::image::resize::opencv_lanczos4_resize;
use crate::models::esrgan::RrdbNet;

/// `RealESRGANer`'s default `pre_pad`.
pub(crate) const DEFAULT_PRE_PAD: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpscaleSettings {
    /// Tile size in input pixels; 0: the whole image at once.
    pub tile: u32,
    pub tile_pad: u32,
    /// `RealESRGANer`'s `pre_pad` (10 by default there).
    pub pre_pad: u32,
    /// The factor the output has over the input (Real-ESRGAN's `outscale`).
    pub outscale: f64,
}

/// Right/bottom reflection (`F.pad(..., 'reflect')`): row `h + i` is row `h − 2 − i`.
fn reflect_pad(image: &RgbImage, right: u32, bottom: u32) -> Result<RgbImage> {
    let (w, h) = image.dimensions();
    if (right > 0 && right >= w) || (bottom > 0 && bottom >= h) {
        return Err(Error::validation("output.upscale", format!("a {w}x{h} image is too small to reflect-pad by {right}x{bottom} as Real-ESRGAN does")));
    }
    let source = |i: u32, n: u32| if i < n { i } else { 2 * n - 2 - i };
    Ok(RgbImage::from_fn(w + right, h + bottom, |x, y| *image.get_pixel(source(x, w), source(y, h))))
}

fn to_tensor(image: &RgbImage, device: &Device, dtype: DType) -> Result<Tensor> {
    crate::image::control::control_tensor(image, device)?.to_dtype(dtype).map_err(Into::into)
}

/// The network on the padded image, whole or tile by tile (`RealESRGANer.tile_process`:
/// tiles in rows, each run on its range widened by `tile_pad` within the image, its own part
/// of the output kept; no overlap, no blending). Returns float32 (1, 3, H·s, W·s).
fn run_network(network: &RrdbNet, padded: &RgbImage, settings: &UpscaleSettings, device: &Device, dtype: DType) -> Result<Tensor> {
    let scale = network.config().scale;
    let input = to_tensor(padded, device, dtype)?;
    let (width, height) = (padded.width() as usize, padded.height() as usize);
    let tile = settings.tile as usize;
    if tile == 0 || (width <= tile && height <= tile) {
        return Ok(network.forward(&input)?.to_dtype(DType::F32)?);
    }
    let pad = settings.tile_pad as usize;
    let mut rows = Vec::new();
    for start_y in (0..height).step_by(tile) {
        let end_y = (start_y + tile).min(height);
        let mut row = Vec::new();
        for start_x in (0..width).step_by(tile) {
            let end_x = (start_x + tile).min(width);
            let (pad_start_x, pad_end_x) = (start_x.saturating_sub(pad), (end_x + pad).min(width));
            let (pad_start_y, pad_end_y) = (start_y.saturating_sub(pad), (end_y + pad).min(height));
            let window = input.narrow(2, pad_start_y, pad_end_y - pad_start_y)?.narrow(3, pad_start_x, pad_end_x - pad_start_x)?;
            let output = network.forward(&window)?.to_dtype(DType::F32)?;
            let kept = output
                .narrow(2, (start_y - pad_start_y) * scale, (end_y - start_y) * scale)?
                .narrow(3, (start_x - pad_start_x) * scale, (end_x - start_x) * scale)?;
            row.push(kept);
        }
        rows.push(Tensor::cat(&row, 3)?);
    }
    Ok(Tensor::cat(&rows, 2)?)
}

pub fn upscale_with_network(network: &RrdbNet, image: &RgbImage, settings: &UpscaleSettings, device: &Device, dtype: DType) -> Result<RgbImage> {
    let scale = network.config().scale;
    let (input_w, input_h) = image.dimensions();
    let pre_padded = reflect_pad(image, settings.pre_pad, settings.pre_pad)?;
    // A ×2 model unshuffles by 2, a ×1 model by 4: the padded size must divide.
    let modulus = (4 / scale) as u32;
    let mod_pad = |n: u32| if modulus > 1 && n % modulus != 0 { modulus - n % modulus } else { 0 };
    let (mod_w, mod_h) = (mod_pad(pre_padded.width()), mod_pad(pre_padded.height()));
    let padded = reflect_pad(&pre_padded, mod_w, mod_h)?;
    if settings.tile > 0 && modulus > 1 && (settings.tile % modulus != 0 || settings.tile_pad % modulus != 0) {
        return Err(Error::validation(
            "output.upscale.tile_pad",
            format!("a ×{scale} model needs tile and tile_pad divisible by {modulus} (its input is pixel-unshuffled)"),
        ));
    }
    let output = run_network(network, &padded, settings, device, dtype)?;
    let s = scale;
    let (_, _, out_h, out_w) = output.dims4()?;
    let keep_h = out_h - (mod_h + settings.pre_pad) as usize * s;
    let keep_w = out_w - (mod_w + settings.pre_pad) as usize * s;
    let cropped = output.narrow(2, 0, keep_h)?.narrow(3, 0, keep_w)?;
    // clamp_(0, 1), then (x · 255).round() (half to even) to uint8, as Real-ESRGAN does.
    let chw = cropped.clamp(0f32, 1f32)?.squeeze(0)?.to_vec3::<f32>()?;
    let mut pixels = Vec::with_capacity(keep_h * keep_w * 3);
    for y in 0..keep_h {
        for x in 0..keep_w {
            for channel in &chw {
                pixels.push((channel[y][x] * 255.0).round_ties_even() as u8);
            }
        }
    }
    let upscaled = RgbImage::from_raw(keep_w as u32, keep_h as u32, pixels).ok_or_else(|| Error::Internal("upscaled image size".into()))?;
    if settings.outscale != scale as f64 {
        let (w, h) = ((input_w as f64 * settings.outscale) as u32, (input_h as f64 * settings.outscale) as u32);
        return Ok(opencv_lanczos4_resize(&upscaled, w, h));
    }
    Ok(upscaled)
}
