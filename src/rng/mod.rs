//! Random numbers that reproduce PyTorch's CPU generator bit for bit, so a seed
//! gives the image diffusers gives with `torch.Generator("cpu").manual_seed(seed)`.

pub mod avx_mathfun;
pub mod mt19937;
pub mod torch_cpu;

pub use torch_cpu::{NormalKernel, TorchCpuGenerator};
