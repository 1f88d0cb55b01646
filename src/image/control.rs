//! ControlNet control images (diffusers `StableDiffusionXLControlNetPipeline.prepare_image`):
//! decoded to RGB, turned into canny edges when the request's preprocessor asks, resized to
//! the output size (Pillow's Lanczos, as diffusers' control `VaeImageProcessor`), and given to the
//! ControlNet as floats in [0, 1] (no normalisation to [-1, 1]).

use candle_core::{Device, Tensor};
use image::RgbImage;

use super::canny::{canny_control_image, CannySettings};
use crate::error::Result;

/// The control image of one ControlNet at `width × height`. `field` names the request's
/// `control_image` in errors. With canny settings the edges are detected at the image's own
/// size, or with its shorter side scaled to `resolution` (the seed's preprocessor option),
/// then resized like any control image.
pub fn prepare_control_image(field: &str, source: &str, canny: Option<&CannySettings>, width: u32, height: u32, warnings: &mut Vec<String>) -> Result<RgbImage> {
    let mut image = super::load_image(field, source)?;
    if let Some(settings) = canny {
        if let Some(resolution) = settings.resolution {
            let shorter = image.width().min(image.height()).max(1);
            let scale = resolution as f64 / shorter as f64;
            let (w, h) = ((image.width() as f64 * scale).round().max(1.0), (image.height() as f64 * scale).round().max(1.0));
            // An extreme aspect ratio scaled by its shorter side would grow without bound.
            let largest = super::MAX_IMAGE_SIDE as f64;
            if w > largest || h > largest {
                return Err(crate::error::Error::validation(
                    field,
                    format!("a {}x{} image scaled to the preprocessor's resolution {resolution} would be {w}x{h}, over {largest} pixels per side", image.width(), image.height()),
                ));
            }
            let (w, h) = (w as u32, h as u32);
            if (w, h) != image.dimensions() {
                image = super::resize::lanczos_resize(&image, w, h);
            }
        }
        image = canny_control_image(&image, settings.low_threshold, settings.high_threshold);
    }
    if image.dimensions() != (width, height) {
        warnings.push(format!("{field} is {}x{}; resized to {width}x{height}", image.width(), image.height()));
        image = super::resize::lanczos_resize(&image, width, height);
    }
    Ok(image)
}

/// RGB → (1, 3, H, W) float32 in [0, 1].
pub fn control_tensor(image: &RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut planar = vec![0f32; 3 * h * w];
    for (x, y, pixel) in image.enumerate_pixels() {
        for c in 0..3 {
            planar[c * h * w + y as usize * w + x as usize] = pixel[c] as f32 / 255.0;
        }
    }
    Ok(Tensor::from_vec(planar, (1, 3, h, w), device)?)
}
