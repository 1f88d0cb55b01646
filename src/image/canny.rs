//! Canny edge detection as OpenCV's `cv2.Canny(gray, low, high)` computes it (the control
//! images SDXL canny ControlNets are trained and used with): 3×3 Sobel gradients with
//! replicated borders, L1 magnitude, non-maximum suppression along the gradient's quantised
//! direction (OpenCV's fixed-point tan 22.5° test), then hysteresis over 8-neighbours. The
//! RGB → gray conversion is OpenCV 5's fixed-point `COLOR_RGB2GRAY` (15-bit weights; OpenCV
//! 4's 14-bit weights give a gray level one lower for a few colours).

use image::{GrayImage, RgbImage};

/// The canny preprocessor of a request: OpenCV-style hysteresis thresholds, and the
/// resolution (shorter side, pixels) the edges are detected at (None: the image's own size).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CannySettings {
    pub low_threshold: f32,
    pub high_threshold: f32,
    pub resolution: Option<u32>,
}

/// OpenCV's `CANNY_SHIFT` and `TG22` = tan(22.5°) · 2^15, rounded.
const CANNY_SHIFT: u32 = 15;
const TG22: i64 = 13573;

/// `cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)`: 0.299 R + 0.587 G + 0.114 B in 15-bit fixed point.
pub fn rgb_to_gray(image: &RgbImage) -> GrayImage {
    GrayImage::from_fn(image.width(), image.height(), |x, y| {
        let [r, g, b] = image.get_pixel(x, y).0;
        image::Luma([((9798 * r as u32 + 19235 * g as u32 + 3735 * b as u32 + (1 << 14)) >> 15) as u8])
    })
}

/// Edges (255) and background (0) of `gray`; thresholds as OpenCV takes them (floored).
pub fn canny(gray: &GrayImage, low_threshold: f32, high_threshold: f32) -> GrayImage {
    let (width, height) = (gray.width() as usize, gray.height() as usize);
    if width == 0 || height == 0 {
        return gray.clone();
    }
    let (low, high) = (low_threshold.floor() as i64, high_threshold.floor() as i64);
    let pixel = |x: isize, y: isize| -> i64 {
        // BORDER_REPLICATE
        let x = x.clamp(0, width as isize - 1) as u32;
        let y = y.clamp(0, height as isize - 1) as u32;
        gray.get_pixel(x, y).0[0] as i64
    };
    let mut dx = vec![0i64; width * height];
    let mut dy = vec![0i64; width * height];
    let mut magnitude = vec![0i64; width * height];
    for y in 0..height as isize {
        for x in 0..width as isize {
            let gx = (pixel(x + 1, y - 1) + 2 * pixel(x + 1, y) + pixel(x + 1, y + 1)) - (pixel(x - 1, y - 1) + 2 * pixel(x - 1, y) + pixel(x - 1, y + 1));
            let gy = (pixel(x - 1, y + 1) + 2 * pixel(x, y + 1) + pixel(x + 1, y + 1)) - (pixel(x - 1, y - 1) + 2 * pixel(x, y - 1) + pixel(x + 1, y - 1));
            let i = y as usize * width + x as usize;
            dx[i] = gx;
            dy[i] = gy;
            magnitude[i] = gx.abs() + gy.abs();
        }
    }
    // Outside the image the magnitude is 0 (OpenCV's zero-padded magnitude rows).
    let mag = |x: isize, y: isize| -> i64 {
        if x < 0 || y < 0 || x >= width as isize || y >= height as isize {
            0
        } else {
            magnitude[y as usize * width + x as usize]
        }
    };
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        NotEdge,
        Weak,
        Strong,
    }
    let mut marks = vec![Mark::NotEdge; width * height];
    let mut stack = Vec::new();
    for y in 0..height as isize {
        for x in 0..width as isize {
            let i = y as usize * width + x as usize;
            let m = magnitude[i];
            if m <= low {
                continue;
            }
            let (xs, ys) = (dx[i], dy[i]);
            let ax = xs.abs();
            let ay = ys.abs() << CANNY_SHIFT;
            let tg22x = ax * TG22;
            let is_maximum = if ay < tg22x {
                m > mag(x - 1, y) && m >= mag(x + 1, y)
            } else {
                let tg67x = tg22x + (ax << (CANNY_SHIFT + 1));
                if ay > tg67x {
                    m > mag(x, y - 1) && m >= mag(x, y + 1)
                } else {
                    let s = if (xs ^ ys) < 0 { -1 } else { 1 };
                    m > mag(x - s, y - 1) && m > mag(x + s, y + 1)
                }
            };
            if !is_maximum {
                continue;
            }
            if m > high {
                marks[i] = Mark::Strong;
                stack.push(i);
            } else {
                marks[i] = Mark::Weak;
            }
        }
    }
    // Hysteresis: weak pixels 8-connected to a strong one become edges.
    while let Some(i) = stack.pop() {
        let (x, y) = ((i % width) as isize, (i / width) as isize);
        for (ox, oy) in [(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)] {
            let (nx, ny) = (x + ox, y + oy);
            if nx < 0 || ny < 0 || nx >= width as isize || ny >= height as isize {
                continue;
            }
            let j = ny as usize * width + nx as usize;
            if marks[j] == Mark::Weak {
                marks[j] = Mark::Strong;
                stack.push(j);
            }
        }
    }
    GrayImage::from_fn(width as u32, height as u32, |x, y| image::Luma([if marks[y as usize * width + x as usize] == Mark::Strong { 255 } else { 0 }]))
}

/// The canny control image of an RGB picture: edges as a 3-channel 0/255 image.
pub fn canny_control_image(image: &RgbImage, low_threshold: f32, high_threshold: f32) -> RgbImage {
    let edges = canny(&rgb_to_gray(image), low_threshold, high_threshold);
    RgbImage::from_fn(edges.width(), edges.height(), |x, y| {
        let v = edges.get_pixel(x, y).0[0];
        image::Rgb([v, v, v])
    })
}
