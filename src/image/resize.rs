//! Pillow's `Image.resize(size, Image.LANCZOS)` on 8-bit RGB, bit for bit: diffusers'
//! `VaeImageProcessor` resizes init and control images with it, so an image that needs
//! resizing gives the same pixels here as there. Separable Lanczos-3 (support scaled when
//! shrinking), taps in 22-bit fixed point, the horizontal pass first into an 8-bit
//! intermediate (Pillow's `ImagingResample`, `precompute_coeffs`, `normalize_coeffs_8bpc`).

use image::RgbImage;

const PRECISION_BITS: u32 = 32 - 8 - 2;
const LANCZOS_SUPPORT: f64 = 3.0;

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

fn lanczos(x: f64) -> f64 {
    if (-LANCZOS_SUPPORT..LANCZOS_SUPPORT).contains(&x) {
        sinc(x) * sinc(x / LANCZOS_SUPPORT)
    } else {
        0.0
    }
}

/// For each output position: the first input index and the fixed-point taps.
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = LANCZOS_SUPPORT * filter_scale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let inverse = 1.0 / filter_scale;
            // Pillow truncates toward zero here (C casts).
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let weights: Vec<f64> = (xmin..xmax).map(|x| lanczos((x as f64 - center + 0.5) * inverse)).collect();
            let total: f64 = weights.iter().sum();
            let taps = weights
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    let scaled = w * (1u64 << PRECISION_BITS) as f64;
                    if w < 0.0 { (-0.5 + scaled) as i64 } else { (0.5 + scaled) as i64 }
                })
                .collect();
            (xmin, taps)
        })
        .collect()
}

fn clip8(accumulator: i64) -> u8 {
    (accumulator >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One separable pass along x (`horizontal`) or y.
fn pass(image: &RgbImage, width: u32, height: u32, horizontal: bool) -> RgbImage {
    let taps = if horizontal { coefficients(image.width() as usize, width as usize) } else { coefficients(image.height() as usize, height as usize) };
    RgbImage::from_fn(width, height, |x, y| {
        let (start, weights) = &taps[if horizontal { x } else { y } as usize];
        let mut sums = [1i64 << (PRECISION_BITS - 1); 3];
        for (offset, &weight) in weights.iter().enumerate() {
            let source = (start + offset) as u32;
            let pixel = if horizontal { image.get_pixel(source, y) } else { image.get_pixel(x, source) };
            for c in 0..3 {
                sums[c] += pixel[c] as i64 * weight;
            }
        }
        image::Rgb(sums.map(clip8))
    })
}

/// `image` resized to `width × height` as Pillow's LANCZOS does it.
pub fn lanczos_resize(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let mut out = image.clone();
    if width != out.width() {
        out = pass(&out, width, out.height(), true);
    }
    if height != out.height() {
        out = pass(&out, width, height, false);
    }
    out
}
