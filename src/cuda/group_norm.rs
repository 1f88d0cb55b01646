//! GroupNorm with an optional SiLU in two launches (kernels/group_norm.cu).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CpuStorage, CudaStorage, CustomOp3, Layout, Shape};

const THREADS: u32 = 256;
/// Elements one block reduces or normalises: enough blocks to fill the GPU at every UNet/VAE size.
const STATISTICS_CHUNK: usize = 16384;
const APPLY_CHUNK: usize = 4096;

/// `(input, gamma, beta)` → GroupNorm over NCHW input (any trailing spatial dims), then SiLU when `silu`.
pub(crate) struct GroupNormSilu {
    pub groups: usize,
    pub eps: f32,
    pub silu: bool,
}

impl CustomOp3 for GroupNormSilu {
    fn name(&self) -> &'static str {
        "group-norm-silu"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("group-norm-silu is the CUDA kernel; crate::ops runs candle's GroupNorm on the CPU")
    }

    fn cuda_fwd(
        &self,
        input: &CudaStorage,
        input_layout: &Layout,
        gamma: &CudaStorage,
        gamma_layout: &Layout,
        beta: &CudaStorage,
        beta_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dims = input_layout.dims();
        if dims.len() < 3 || dims[1] % self.groups != 0 {
            candle_core::bail!("group-norm-silu: input {dims:?} is not (batch, channels divisible by {}, ...)", self.groups);
        }
        let slice = match (&input.slice, &gamma.slice, &beta.slice) {
            (CudaStorageSlice::F32(x), CudaStorageSlice::F32(g), CudaStorageSlice::F32(b)) => {
                CudaStorageSlice::F32(self.launch(input, x, input_layout, g, gamma_layout, b, beta_layout, "f32")?)
            }
            (CudaStorageSlice::F16(x), CudaStorageSlice::F16(g), CudaStorageSlice::F16(b)) => {
                CudaStorageSlice::F16(self.launch(input, x, input_layout, g, gamma_layout, b, beta_layout, "f16")?)
            }
            (CudaStorageSlice::BF16(x), CudaStorageSlice::BF16(g), CudaStorageSlice::BF16(b)) => {
                CudaStorageSlice::BF16(self.launch(input, x, input_layout, g, gamma_layout, b, beta_layout, "bf16")?)
            }
            _ => candle_core::bail!("group-norm-silu: input, gamma and beta must share one of f32/f16/bf16"),
        };
        Ok((CudaStorage { slice, device: input.device().clone() }, input_layout.shape().clone()))
    }
}

impl GroupNormSilu {
    #[allow(clippy::too_many_arguments)]
    fn launch<T: DeviceRepr>(
        &self,
        storage: &CudaStorage,
        input: &CudaSlice<T>,
        input_layout: &Layout,
        gamma: &CudaSlice<T>,
        gamma_layout: &Layout,
        beta: &CudaSlice<T>,
        beta_layout: &Layout,
        suffix: &str,
    ) -> candle_core::Result<CudaSlice<T>> {
        let device = storage.device();
        let dims = input_layout.dims();
        let (batch, channels) = (dims[0], dims[1]);
        let spatial: usize = dims[2..].iter().product();
        let channels_per_group = channels / self.groups;
        let group_size = channels_per_group * spatial;
        let batch_groups = batch * self.groups;
        let input = super::contiguous(input, input_layout, "group-norm-silu", "input")?;
        let gamma = super::contiguous(gamma, gamma_layout, "group-norm-silu", "gamma")?;
        let beta = super::contiguous(beta, beta_layout, "group-norm-silu", "beta")?;
        let statistic_chunks = group_size.div_ceil(STATISTICS_CHUNK).max(1);
        let statistic_chunk = group_size.div_ceil(statistic_chunks);
        let stream = device.cuda_stream();
        // SAFETY: every element is written by the kernels below before it is read.
        let mut partials = unsafe { stream.alloc::<f32>(batch_groups * statistic_chunks * 3) }.w()?;
        let mut output = unsafe { stream.alloc::<T>(batch * channels * spatial) }.w()?;

        let partials_kernel = super::function(device, "group_norm", &format!("group_norm_partials_{suffix}"))?;
        let (group_size_arg, statistic_chunk_arg) = (group_size as i64, statistic_chunk as i64);
        let mut launch = stream.launch_builder(&partials_kernel);
        launch.arg(&input).arg(&mut partials).arg(&group_size_arg).arg(&statistic_chunk_arg);
        let config = LaunchConfig { grid_dim: (statistic_chunks as u32, batch_groups as u32, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: argument types match the kernel's signature; grid and buffers are sized above.
        unsafe { launch.launch(config) }.w()?;

        let apply_kernel = super::function(device, "group_norm", &format!("group_norm_apply_{suffix}"))?;
        let apply_chunks = group_size.div_ceil(APPLY_CHUNK).max(1);
        let (partial_count, spatial_arg, per_group, groups) = (statistic_chunks as i32, spatial as i64, channels_per_group as i32, self.groups as i32);
        let (silu, apply_chunk) = (self.silu as i32, APPLY_CHUNK as i64);
        let mut launch = stream.launch_builder(&apply_kernel);
        launch
            .arg(&input)
            .arg(&partials)
            .arg(&gamma)
            .arg(&beta)
            .arg(&mut output)
            .arg(&group_size_arg)
            .arg(&partial_count)
            .arg(&spatial_arg)
            .arg(&per_group)
            .arg(&groups)
            .arg(&self.eps)
            .arg(&silu)
            .arg(&apply_chunk);
        let config = LaunchConfig { grid_dim: (apply_chunks as u32, batch_groups as u32, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: as above.
        unsafe { launch.launch(config) }.w()?;
        Ok(output)
    }
}
