//! The built-in demo model (`builtin:tiny`): SDXL's structure at tiny widths, with
//! deterministic random weights generated in-process from a fixed seed, so the whole
//! pipeline runs on a fresh machine with no download.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::rng::{NormalKernel, TorchCpuGenerator};

pub const BUILTIN_TINY: &str = "builtin:tiny";
/// Full-size SDXL base with random weights drawn on the device: benchmarks need the real
/// shapes and costs, not the real pictures, and no 7 GB download.
pub const BUILTIN_SDXL_RANDOM: &str = "builtin:sdxl-random";
/// Full-size SDXL refiner with random weights drawn on the device (the refiner's benchmarks).
pub const BUILTIN_SDXL_REFINER_RANDOM: &str = "builtin:sdxl-refiner-random";
const SEED: u64 = 0x5D_1C_0DE;

/// Each tensor's values depend only on its name, so the model is the same whatever
/// order the builders ask for weights in.
struct RandomWeights;

fn name_seed(name: &str) -> u64 {
    // FNV-1a: stable across platforms and Rust versions, unlike DefaultHasher.
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ SEED, |hash, byte| (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3))
}

impl SimpleBackend for RandomWeights {
    fn get(&self, shape: Shape, name: &str, hint: Init, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let count = shape.elem_count();
        let dims = shape.dims();
        let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
        let values: Vec<f32> = match hint {
            Init::Const(value) => vec![value as f32; count],
            Init::Uniform { lo, up } => {
                let mut rng = TorchCpuGenerator::new(name_seed(name), NormalKernel::Scalar);
                rng.randn(count).into_iter().map(|v| ((v.tanh() + 1.0) / 2.0) * (up - lo) as f32 + lo as f32).collect()
            }
            Init::Randn { mean, stdev } => {
                let mut rng = TorchCpuGenerator::new(name_seed(name), NormalKernel::Scalar);
                rng.randn(count).into_iter().map(|v| v * stdev as f32 + mean as f32).collect()
            }
            Init::Kaiming { .. } => {
                // Unit-gain scaling keeps activations O(1) through the tiny network.
                let std = (1.0 / fan_in as f32).sqrt();
                let mut rng = TorchCpuGenerator::new(name_seed(name), NormalKernel::Scalar);
                rng.randn(count).into_iter().map(|v| v * std).collect()
            }
        };
        Tensor::from_vec(values, shape, device)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _device: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("built-in weights need a shape for {name}")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// Weights drawn by the device's own generator: fast enough for 2.6 B parameters.
struct DeviceRandomWeights;

impl SimpleBackend for DeviceRandomWeights {
    fn get(&self, shape: Shape, _name: &str, hint: Init, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let fan_in: usize = shape.dims().iter().skip(1).product::<usize>().max(1);
        match hint {
            Init::Const(value) => Tensor::full(value as f32, shape, device)?.to_dtype(dtype),
            _ => Tensor::randn(0f32, (1.0 / fan_in as f32).sqrt(), shape, device)?.to_dtype(dtype),
        }
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _device: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("built-in weights need a shape for {name}")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

pub fn device_random_weights() -> Box<dyn SimpleBackend> {
    Box::new(DeviceRandomWeights)
}

pub fn builtin_weights() -> Box<dyn SimpleBackend> {
    Box::new(RandomWeights)
}

pub fn device_random_var_builder(dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(device_random_weights(), dtype, device.clone())
}

pub fn builtin_var_builder(dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(builtin_weights(), dtype, device.clone())
}
