//! Scalar transcriptions of `log256_ps` and `sincos256_ps` from avx_mathfun.h
//! (Cephes polynomials), which PyTorch's vectorised `normal_fill_16_AVX2` uses. The
//! operations are kept in the header's order. GCC builds ATen's vectorised kernels with
//! -mfma and contracts some multiply-adds: which ones was found by testing every
//! combination against torch 2.15's output (tests/fixtures/reference/randn.safetensors,
//! `tools/rng/fma_probe.rs`): the log polynomial and its `y·z + e·q1` step, the cosine's
//! `y·z − z/2`, the sine polynomial and its final `y·x + x` are fused; nothing else is.

const MIN_NORM_POS: f32 = f32::from_bits(0x0080_0000);
const SQRTHF: f32 = 0.707_106_781_186_547_524;
const LOG_P: [f32; 9] = [
    7.037_683_629_2E-2,
    -1.151_461_031_0E-1,
    1.167_699_874_0E-1,
    -1.242_014_084_6E-1,
    1.424_932_278_7E-1,
    -1.666_805_766_5E-1,
    2.000_071_476_5E-1,
    -2.499_999_399_3E-1,
    3.333_333_117_4E-1,
];
const LOG_Q1: f32 = -2.121_944_40e-4;
const LOG_Q2: f32 = 0.693_359_375;

#[inline(never)]
pub fn log_ps(x: f32) -> f32 {
    let invalid = x <= 0.0;
    let x = if x > MIN_NORM_POS { x } else { MIN_NORM_POS };
    let exponent_bits = (x.to_bits() >> 23) as i32;
    let mut x = f32::from_bits((x.to_bits() & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = (exponent_bits - 0x7f) as f32;
    e = e + 1.0;
    let below = x < SQRTHF;
    let tmp = if below { x } else { 0.0 };
    x = x - 1.0;
    e = e - if below { 1.0 } else { 0.0 };
    x = x + tmp;
    let z = x * x;
    let mut y = LOG_P[0];
    for p in &LOG_P[1..] {
        y = y.mul_add(x, *p);
    }
    y = y * x;
    y = y.mul_add(z, e * LOG_Q1);
    y = y - z * 0.5;
    x = x + y;
    x = x + e * LOG_Q2;
    if invalid {
        f32::NAN
    } else {
        x
    }
}

const FOPI: f32 = 1.273_239_544_735_16;
const DP1: f32 = -0.785_156_25;
const DP2: f32 = -2.418_756_484_985_351_562_5e-4;
const DP3: f32 = -3.774_894_977_445_941_08e-8;
const SINCOF: [f32; 3] = [-1.951_529_589_1E-4, 8.332_160_873_6E-3, -1.666_665_461_1E-1];
const COSCOF: [f32; 3] = [2.443_315_711_809_948E-005, -1.388_731_625_493_765E-003, 4.166_664_568_298_827E-002];

/// Returns (sin, cos) as `sincos256_ps` computes them.
#[inline(never)]
pub fn sincos_ps(x: f32) -> (f32, f32) {
    let mut sign_bit_sin = x.to_bits() & 0x8000_0000;
    let mut x = f32::from_bits(x.to_bits() & 0x7fff_ffff);
    let y = x * FOPI;
    let mut j = y as i32; // cvttps: truncation
    j = (j + 1) & !1;
    let y = j as f32;
    let swap_sign_bit_sin = ((j & 4) as u32) << 29;
    let poly_mask = (j & 2) == 0;
    x = x + y * DP1;
    x = x + y * DP2;
    x = x + y * DP3;
    let sign_bit_cos = ((!(j - 2) & 4) as u32) << 29;
    sign_bit_sin ^= swap_sign_bit_sin;

    let z = x * x;
    let mut cos_poly = COSCOF[0];
    cos_poly = cos_poly * z + COSCOF[1];
    cos_poly = cos_poly * z + COSCOF[2];
    cos_poly = cos_poly * z;
    cos_poly = cos_poly.mul_add(z, -(z * 0.5));
    cos_poly = cos_poly + 1.0;

    let mut sin_poly = SINCOF[0];
    sin_poly = sin_poly.mul_add(z, SINCOF[1]);
    sin_poly = sin_poly.mul_add(z, SINCOF[2]);
    sin_poly = sin_poly * z;
    sin_poly = sin_poly.mul_add(x, x);

    let (sin, cos) = if poly_mask { (sin_poly, cos_poly) } else { (cos_poly, sin_poly) };
    (f32::from_bits(sin.to_bits() ^ sign_bit_sin), f32::from_bits(cos.to_bits() ^ sign_bit_cos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polynomials_agree_with_libm_to_a_few_ulp() {
        for i in 1..1000 {
            let x = i as f32 / 1000.0;
            assert!((log_ps(x) - x.ln()).abs() <= 4.0 * f32::EPSILON * x.ln().abs().max(1.0), "log {x}");
            let theta = x * 6.283_185;
            let (s, c) = sincos_ps(theta);
            assert!((s - theta.sin()).abs() < 1e-6 && (c - theta.cos()).abs() < 1e-6, "sincos {theta}");
        }
    }
}
