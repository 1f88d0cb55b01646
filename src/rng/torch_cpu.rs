//! `torch.randn(..., generator=torch.Generator("cpu").manual_seed(seed))` for float32,
//! following ATen's CPU `normal_kernel` (native/cpu/DistributionTemplates.h):
//! tensors of ≥ 16 elements fill uniforms then transform them 16 at a time by Box–Muller
//! (the tail recomputed from 16 fresh uniforms); smaller ones draw doubles one by one.
//! ATen compiles that kernel per CPU capability: its AVX2 and AVX-512 builds (every
//! x86-64 machine of the last decade) use the avx_mathfun polynomials, its plain build
//! (`ATEN_CPU_CAPABILITY=default`, CPUs without AVX2) std::log/cos/sin. The two differ
//! in the last bit of ~40 % of values, so both are offered; vectorised is the default.

use super::avx_mathfun::{log_ps, sincos_ps};
use super::mt19937::Mt19937;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormalKernel {
    /// `normal_fill_AVX2`: ATen's AVX2 and AVX-512 builds, i.e. torch on any recent x86-64 CPU.
    Vectorized,
    /// `normal_fill` with std::log/cos/sin in float: ATen's non-vectorised build.
    Scalar,
}

/// One `torch.Generator("cpu")` stream; successive calls continue the stream as torch does.
#[derive(Clone)]
pub struct TorchCpuGenerator {
    engine: Mt19937,
    kernel: NormalKernel,
    /// The sine half of the last double Box–Muller pair (`next_double_normal_sample_`).
    cached_normal: Option<f64>,
}

impl TorchCpuGenerator {
    pub fn new(seed: u64, kernel: NormalKernel) -> Self {
        Self { engine: Mt19937::new(seed), kernel, cached_normal: None }
    }

    /// `uniform_real_distribution<float>(0, 1)`: 24 random bits scaled by 2^-24.
    fn uniform_f32(&mut self) -> f32 {
        (self.engine.next_u32() & ((1 << 24) - 1)) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// `uniform_real_distribution<double>(0, 1)`: 53 random bits scaled by 2^-53.
    fn uniform_f64(&mut self) -> f64 {
        (self.engine.next_u64() & ((1u64 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal samples, as `torch.randn(numel)` in float32.
    pub fn randn(&mut self, numel: usize) -> Vec<f32> {
        if numel < 16 {
            return (0..numel).map(|_| self.normal_f64() as f32).collect();
        }
        let mut data: Vec<f32> = (0..numel).map(|_| self.uniform_f32()).collect();
        let mut start = 0;
        while start + 16 <= numel {
            self.box_muller_16(&mut data[start..start + 16]);
            start += 16;
        }
        if numel % 16 != 0 {
            let tail = &mut data[numel - 16..];
            for value in tail.iter_mut() {
                *value = self.uniform_f32();
            }
            self.box_muller_16(tail);
        }
        data
    }

    fn box_muller_16(&self, data: &mut [f32]) {
        for j in 0..8 {
            let u1 = 1.0 - data[j];
            let u2 = data[j + 8];
            let (sin, cos, radius) = match self.kernel {
                NormalKernel::Scalar => {
                    let radius = (-2.0 * u1.ln()).sqrt();
                    let theta = (2.0f64 * std::f64::consts::PI * u2 as f64) as f32;
                    (theta.sin(), theta.cos(), radius)
                }
                NormalKernel::Vectorized => {
                    let radius = (-2.0 * log_ps(u1)).sqrt();
                    let theta = (2.0f64 * std::f64::consts::PI) as f32 * u2;
                    let (sin, cos) = sincos_ps(theta);
                    (sin, cos, radius)
                }
            };
            data[j] = radius * cos;
            data[j + 8] = radius * sin;
        }
    }

    /// `at::normal_distribution<double>` (core/DistributionsHelper.h): a Box–Muller pair
    /// whose sine half is cached in the generator for the next draw.
    fn normal_f64(&mut self) -> f64 {
        if let Some(cached) = self.cached_normal.take() {
            return cached;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let radius = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.cached_normal = Some(radius * theta.sin());
        radius * theta.cos()
    }
}
