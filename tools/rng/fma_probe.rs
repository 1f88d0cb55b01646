//! Searches which multiply-adds GCC fused in torch's vectorised normal kernel: every
//! combination of fused/unfused sites is scored against torch's randn references.
//! Run: cargo run --release --example fma_probe
use sdxl::rng::mt19937::Mt19937;
use std::collections::HashMap;
const SQRTHF: f32 = 0.707_106_781_186_547_524;
const LOG_P: [f32; 9] = [7.037_683_629_2E-2, -1.151_461_031_0E-1, 1.167_699_874_0E-1, -1.242_014_084_6E-1, 1.424_932_278_7E-1, -1.666_805_766_5E-1, 2.000_071_476_5E-1, -2.499_999_399_3E-1, 3.333_333_117_4E-1];
fn log_ps(x: f32, v: u32) -> f32 {
    let x = x.max(f32::from_bits(0x0080_0000));
    let eb = (x.to_bits() >> 23) as i32;
    let mut x = f32::from_bits((x.to_bits() & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = (eb - 0x7f) as f32 + 1.0;
    let below = x < SQRTHF; let tmp = if below { x } else { 0.0 };
    x = x - 1.0; e = e - if below { 1.0 } else { 0.0 }; x = x + tmp;
    let z = x * x; let mut y = LOG_P[0];
    for p in &LOG_P[1..] { y = if v & 1 != 0 { y.mul_add(x, *p) } else { y * x + p }; }
    y = y * x;
    y = if v & 2 != 0 { y.mul_add(z, e * -2.121_944_40e-4) } else { e.mul_add(-2.121_944_40e-4, y * z) };
    y = if v & 4 != 0 { (-z).mul_add(0.5, y) } else { y - z * 0.5 };
    x = x + y;
    if v & 8 != 0 { e.mul_add(0.693_359_375, x) } else { x + e * 0.693_359_375 }
}
fn sincos(x: f32, v: u32) -> (f32, f32) {
    let mut sb = x.to_bits() & 0x8000_0000; let mut x = f32::from_bits(x.to_bits() & 0x7fff_ffff);
    let mut j = (x * 1.273_239_544_735_16) as i32; j = (j + 1) & !1; let y = j as f32;
    let swap = ((j & 4) as u32) << 29; let pm = (j & 2) == 0;
    if v & 16 != 0 { x = y.mul_add(-0.785_156_25, x); x = y.mul_add(-2.418_756_484_985_351_562_5e-4, x); x = y.mul_add(-3.774_894_977_445_941_08e-8, x); }
    else { x = x + y * -0.785_156_25; x = x + y * -2.418_756_484_985_351_562_5e-4; x = x + y * -3.774_894_977_445_941_08e-8; }
    let scb = ((!(j - 2) & 4) as u32) << 29; sb ^= swap;
    let z = x * x;
    let mut c = 2.443_315_711_809_948E-005f32;
    c = if v & 32 != 0 { c.mul_add(z, -1.388_731_625_493_765E-003) } else { c * z - 1.388_731_625_493_765E-003 };
    c = if v & 32 != 0 { c.mul_add(z, 4.166_664_568_298_827E-002) } else { c * z + 4.166_664_568_298_827E-002 };
    c = c * z;
    c = if v & 64 != 0 { c.mul_add(z, -(z * 0.5)) } else if v & 128 != 0 { (-z).mul_add(0.5, c * z) } else { c * z - z * 0.5 };
    c = c + 1.0;
    let mut s = -1.951_529_589_1E-4f32;
    s = if v & 256 != 0 { s.mul_add(z, 8.332_160_873_6E-3) } else { s * z + 8.332_160_873_6E-3 };
    s = if v & 256 != 0 { s.mul_add(z, -1.666_665_461_1E-1) } else { s * z - 1.666_665_461_1E-1 };
    s = s * z;
    s = if v & 512 != 0 { s.mul_add(x, x) } else { s * x + x };
    let (si, co) = if pm { (s, c) } else { (c, s) };
    (f32::from_bits(si.to_bits() ^ sb), f32::from_bits(co.to_bits() ^ scb))
}
fn uni(m: &mut Mt19937) -> f32 { (m.next_u32() & 0xffffff) as f32 * (1.0 / 16777216.0) }
fn fill(seed: u64, n: usize, v: u32) -> Vec<f32> {
    let mut m = Mt19937::new(seed);
    let mut d: Vec<f32> = (0..n).map(|_| uni(&mut m)).collect();
    let bm = |d: &mut [f32]| for j in 0..8 { let u1 = 1.0 - d[j]; let u2 = d[j + 8];
        let r = (-2.0 * log_ps(u1, v)).sqrt(); let th = (2.0f64 * std::f64::consts::PI) as f32 * u2; let (s, c) = sincos(th, v); d[j] = r * c; d[j + 8] = r * s; };
    let mut i = 0; while i + 16 <= n { bm(&mut d[i..i + 16]); i += 16; }
    if n % 16 != 0 { let t = &mut d[n - 16..]; for x in t.iter_mut() { *x = uni(&mut m); } bm(t); }
    d
}
fn main() {
    let refs: HashMap<String, candle_core::Tensor> = candle_core::safetensors::load("tests/fixtures/reference/randn.safetensors", &candle_core::Device::Cpu).unwrap();
    let mut best = (usize::MAX, 0);
    for v in 0..1024u32 {
        if v & 64 != 0 && v & 128 != 0 { continue; }
        let mut bad = 0;
        for (k, t) in &refs { if !k.starts_with("avx2/") { continue; } let e = t.flatten_all().unwrap().to_vec1::<f32>().unwrap(); if e.len() < 16 { continue; }
            let seed: u64 = k.split('/').nth(1).unwrap().trim_start_matches("seed").parse().unwrap();
            let a = fill(seed, e.len(), v); bad += a.iter().zip(&e).filter(|(x, y)| x.to_bits() != y.to_bits()).count(); }
        if bad < best.0 { best = (bad, v); println!("variant {v:010b}: {bad} mismatches"); }
        if bad == 0 { break; }
    }
}
