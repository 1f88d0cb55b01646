//! Pixels in and out: tensors ↔ RGB images, the init image of img2img, ControlNet control
//! images and their canny preprocessor, and writing png/jpeg/webp files atomically under the
//! engine's output folder.

pub mod canny;
pub mod control;
pub mod metadata;
pub mod resize;
pub mod save;

use base64::Engine as _;
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// (1, 3, H, W) in [-1, 1] → RGB, as diffusers' `postprocess` + `numpy_to_pil`:
/// `(x / 2 + 0.5).clamp(0, 1)`, then `(v * 255).round()` (half to even) to u8.
pub fn tensor_to_rgb(decoded: &Tensor) -> Result<image::RgbImage> {
    let (_, channels, height, width) = decoded.dims4()?;
    if channels != 3 {
        return Err(Error::Internal(format!("VAE produced {channels} channels, expected 3")));
    }
    let chw = decoded.to_dtype(DType::F32)?.squeeze(0)?.to_vec3::<f32>()?;
    let mut pixels = Vec::with_capacity(height * width * 3);
    for y in 0..height {
        for x in 0..width {
            for channel in &chw {
                let value = (channel[y][x] / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0;
                pixels.push(value.round_ties_even() as u8);
            }
        }
    }
    image::RgbImage::from_raw(width as u32, height as u32, pixels)
        .ok_or_else(|| Error::Internal("decoded image has the wrong number of pixels".into()))
}

/// RGB → (1, 3, H, W) float32 in [-1, 1] (diffusers `VaeImageProcessor.preprocess`).
pub fn rgb_to_tensor(image: &image::RgbImage, device: &Device) -> Result<Tensor> {
    let (width, height) = image.dimensions();
    let (w, h) = (width as usize, height as usize);
    let mut planar = vec![0f32; 3 * h * w];
    for (x, y, pixel) in image.enumerate_pixels() {
        for c in 0..3 {
            planar[c * h * w + y as usize * w + x as usize] = pixel[c] as f32 / 255.0 * 2.0 - 1.0;
        }
    }
    Ok(Tensor::from_vec(planar, (1, 3, h, w), device)?)
}

/// Decodes an image given as a file path or base64 (with or without a `data:` prefix) to
/// RGB; errors name `field`.
pub fn load_image(field: &str, source: &str) -> Result<image::RgbImage> {
    let bytes = if std::path::Path::new(source).is_file() {
        std::fs::read(source).map_err(|e| Error::validation(field, format!("cannot read {source}: {e}")))?
    } else {
        let payload = source.split_once("base64,").map(|(_, data)| data).unwrap_or(source);
        base64::engine::general_purpose::STANDARD
            .decode(payload.trim())
            .map_err(|_| Error::validation(field, "neither an existing file nor valid base64 image data"))?
    };
    decode_bounded(field, &bytes)
}

/// The largest side an input image may have. A few hundred bytes of JPEG or PNG can claim
/// any size; without a bound they would decode to gigabytes (found by fuzzing).
pub(crate) const MAX_IMAGE_SIDE: u32 = 8192;

/// Decodes to RGB, refusing before the pixels are allocated an image wider or taller than
/// [`MAX_IMAGE_SIDE`], or one whose decoder would need more than 512 MiB.
fn decode_bounded(field: &str, bytes: &[u8]) -> Result<image::RgbImage> {
    let unreadable = |e: image::ImageError| Error::validation(field, format!("not a readable png/jpeg/webp image: {e}"));
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| unreadable(e.into()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(512 << 20);
    reader.limits(limits);
    match reader.decode() {
        Ok(decoded) => Ok(decoded.to_rgb8()),
        Err(image::ImageError::Limits(limit)) => {
            Err(Error::validation(field, format!("image too large ({limit}): at most {MAX_IMAGE_SIDE} pixels per side")))
        }
        Err(e) => Err(unreadable(e)),
    }
}

/// Reads an img2img source: a file path, or base64 (with or without a `data:` prefix).
/// Resized (Lanczos) to the requested size when it differs.
pub fn load_init_image(source: &str, width: u32, height: u32, warnings: &mut Vec<String>) -> Result<image::RgbImage> {
    let decoded = load_image("init_image", source)?;
    if decoded.dimensions() != (width, height) {
        warnings.push(format!(
            "init_image is {}x{}; resized to {width}x{height}",
            decoded.width(),
            decoded.height()
        ));
        return Ok(resize::lanczos_resize(&decoded, width, height));
    }
    Ok(decoded)
}
