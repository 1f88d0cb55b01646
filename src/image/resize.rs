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

/// OpenCV's `cv2.resize(image, (width, height), interpolation=cv2.INTER_LANCZOS4)` on 8-bit
/// RGB, bit for bit (Real-ESRGAN resizes to its `outscale` with it): 8 taps around the mapped
/// position, clamped at the borders, no antialiasing when shrinking; weights in 11-bit fixed
/// point, the horizontal pass first with integer sums, rounding only after the vertical pass.
pub fn opencv_lanczos4_resize(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (src_w, src_h) = (image.width() as usize, image.height() as usize);
    let columns = lanczos4_taps(src_w, width as usize);
    let rows = lanczos4_taps(src_h, height as usize);
    // Horizontal pass: source rows × output columns, sums kept whole (× 2^11).
    let mut horizontal = vec![[0i64; 3]; src_h * width as usize];
    for y in 0..src_h {
        for (x, (start, weights)) in columns.iter().enumerate() {
            let mut sums = [0i64; 3];
            for (k, &weight) in weights.iter().enumerate() {
                let source = (start + k as i64).clamp(0, src_w as i64 - 1) as u32;
                let pixel = image.get_pixel(source, y as u32);
                for c in 0..3 {
                    sums[c] += pixel[c] as i64 * weight;
                }
            }
            horizontal[y * width as usize + x] = sums;
        }
    }
    RgbImage::from_fn(width, height, |x, y| {
        let (start, weights) = &rows[y as usize];
        let mut sums = [0i64; 3];
        for (k, &weight) in weights.iter().enumerate() {
            let source = (start + k as i64).clamp(0, src_h as i64 - 1) as usize;
            let row = horizontal[source * width as usize + x as usize];
            for c in 0..3 {
                sums[c] += row[c] * weight;
            }
        }
        image::Rgb(sums.map(|v| ((v + (1 << 21)) >> 22).clamp(0, 255) as u8))
    })
}

/// For each output index: the first of its 8 source indices (unclamped) and the fixed-point
/// weights (OpenCV `resize`'s coordinate map and `interpolateLanczos4`).
fn lanczos4_taps(src: usize, dst: usize) -> Vec<(i64, [i64; 8])> {
    const R: f64 = std::f64::consts::FRAC_1_SQRT_2;
    const CS: [(f64, f64); 8] = [(1.0, 0.0), (-R, -R), (0.0, 1.0), (R, -R), (-1.0, 0.0), (R, R), (0.0, -1.0), (-R, R)];
    let scale = 1.0 / (dst as f64 / src as f64);
    (0..dst)
        .map(|d| {
            let fx = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let sx = fx.floor();
            let fx = fx - sx;
            let quarter_pi = std::f64::consts::PI / 4.0;
            let y0 = -((fx + 3.0) as f64) * quarter_pi;
            let (s0, c0) = (y0.sin(), y0.cos());
            let mut coefficients = [0f32; 8];
            let mut sum = 0f32;
            for (i, (a, b)) in CS.iter().enumerate() {
                let t = fx + 3.0 - i as f32;
                let y = -(t as f64) * quarter_pi;
                coefficients[i] = if t.abs() < 1e-6 { 1e30 } else { ((a * s0 + b * c0) / (y * y)) as f32 };
                sum += coefficients[i];
            }
            let inverse = 1.0f32 / sum;
            let weights = coefficients.map(|c| ((c * inverse) * 2048.0).round_ties_even() as i64);
            (sx as i64 - 3, weights)
        })
        .collect()
}
