//! GEGLU in one pass (kernels/geglu.cu).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Shape};

/// `[..., 2·inner]` (hidden | gate) → `[..., inner]` = hidden · gelu_erf(gate).
pub(crate) struct Geglu;

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "geglu"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("geglu is the CUDA kernel; crate::ops runs the candle ops on the CPU")
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let mut dims = layout.dims().to_vec();
        let last = dims.pop().unwrap_or(0);
        if last == 0 || last % 2 != 0 {
            candle_core::bail!("geglu: last dim {last} is not even");
        }
        let inner = last / 2;
        let rows: usize = dims.iter().product();
        dims.push(inner);
        let slice = match &storage.slice {
            CudaStorageSlice::F32(x) => CudaStorageSlice::F32(launch(storage, x, layout, rows, inner, "f32")?),
            CudaStorageSlice::F16(x) => CudaStorageSlice::F16(launch(storage, x, layout, rows, inner, "f16")?),
            CudaStorageSlice::BF16(x) => CudaStorageSlice::BF16(launch(storage, x, layout, rows, inner, "bf16")?),
            _ => candle_core::bail!("geglu: unsupported dtype {:?}", storage.dtype()),
        };
        Ok((CudaStorage { slice, device: storage.device().clone() }, Shape::from(dims)))
    }
}

fn launch<T: DeviceRepr>(storage: &CudaStorage, input: &CudaSlice<T>, layout: &Layout, rows: usize, inner: usize, suffix: &str) -> candle_core::Result<CudaSlice<T>> {
    let input = super::contiguous(input, layout, "geglu", "input")?;
    let device = storage.device();
    let stream = device.cuda_stream();
    // SAFETY: the kernel writes every element.
    let mut output = unsafe { stream.alloc::<T>(rows * inner) }.w()?;
    let kernel = super::function(device, "geglu", &format!("geglu_{suffix}"))?;
    let (rows_arg, inner_arg) = (rows as i64, inner as i64);
    let mut builder = stream.launch_builder(&kernel);
    builder.arg(&input).arg(&mut output).arg(&rows_arg).arg(&inner_arg);
    // Half-precision rows go two columns per thread when aligned (the kernel decides the same
    // way; a grid sized for pairs is still right when it falls back, via its stride loop).
    let columns = if storage.dtype().size_in_bytes() == 2 && inner % 2 == 0 { inner / 2 } else { inner };
    let column_blocks = columns.div_ceil(256).clamp(1, 1024) as u32;
    let row_blocks = rows.clamp(1, 65535) as u32;
    // SAFETY: argument types match the kernel; its grid-stride loops cover every element.
    unsafe { builder.launch(LaunchConfig { grid_dim: (column_blocks, row_blocks, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }) }.w()?;
    Ok(output)
}
