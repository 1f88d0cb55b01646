//! Fused attention for head_dim 64, float16/bfloat16, no mask (kernels/flash_attention.cu).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CpuStorage, CudaStorage, CustomOp3, Layout, Shape};

pub(crate) const HEAD_DIM: usize = 64;
/// The kernel's BLOCK_M (4 warps × M_TILES × 16 rows).
const BLOCK_QUERIES: usize = 64;
const THREADS: u32 = 128;
/// `Tiles` in the kernel: the query tile and two stages of 64-row key and value tiles, rows of
/// 72 halves.
const SHARED_BYTES: u32 = (BLOCK_QUERIES as u32 + 4 * 64) * 72 * 2;

/// `(q, k, v)` as `[batch, tokens, heads, 64]` (contiguous) → `[batch, q_tokens, heads, 64]`.
pub(crate) struct FlashAttention {
    pub scale: f32,
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "flash-attention"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("flash-attention is the CUDA kernel; crate::ops runs candle's attention on the CPU")
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        q_layout: &Layout,
        k: &CudaStorage,
        k_layout: &Layout,
        v: &CudaStorage,
        v_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (batch, q_len, heads, head_dim) = q_layout.shape().dims4()?;
        let (k_batch, kv_len, k_heads, k_dim) = k_layout.shape().dims4()?;
        if head_dim != HEAD_DIM || k_dim != HEAD_DIM || k_batch != batch || k_heads != heads || v_layout.dims() != k_layout.dims() || kv_len == 0 {
            candle_core::bail!("flash-attention: q {:?}, k {:?}, v {:?} are not [b, t, h, 64] with matching k/v", q_layout.dims(), k_layout.dims(), v_layout.dims());
        }
        let shape = AttentionDims { batch, q_len, kv_len, heads };
        let slice = match (&q.slice, &k.slice, &v.slice) {
            (CudaStorageSlice::F16(qs), CudaStorageSlice::F16(ks), CudaStorageSlice::F16(vs)) => {
                CudaStorageSlice::F16(self.launch(q, qs, q_layout, ks, k_layout, vs, v_layout, &shape, "f16")?)
            }
            (CudaStorageSlice::BF16(qs), CudaStorageSlice::BF16(ks), CudaStorageSlice::BF16(vs)) => {
                CudaStorageSlice::BF16(self.launch(q, qs, q_layout, ks, k_layout, vs, v_layout, &shape, "bf16")?)
            }
            _ => candle_core::bail!("flash-attention: q, k, v must all be f16 or all bf16"),
        };
        Ok((CudaStorage { slice, device: q.device().clone() }, q_layout.shape().clone()))
    }
}

struct AttentionDims {
    batch: usize,
    q_len: usize,
    kv_len: usize,
    heads: usize,
}

impl FlashAttention {
    #[allow(clippy::too_many_arguments)]
    fn launch<T: DeviceRepr>(
        &self,
        storage: &CudaStorage,
        q: &CudaSlice<T>,
        q_layout: &Layout,
        k: &CudaSlice<T>,
        k_layout: &Layout,
        v: &CudaSlice<T>,
        v_layout: &Layout,
        shape: &AttentionDims,
        suffix: &str,
    ) -> candle_core::Result<CudaSlice<T>> {
        let (q, k, v) = (super::contiguous(q, q_layout, "flash-attention", "q")?, super::contiguous(k, k_layout, "flash-attention", "k")?, super::contiguous(v, v_layout, "flash-attention", "v")?);
        let device = storage.device();
        let stream = device.cuda_stream();
        // SAFETY: every query row below q_len is written by the kernel.
        let mut out = unsafe { stream.alloc::<T>(shape.batch * shape.q_len * shape.heads * HEAD_DIM) }.w()?;
        let kernel = super::function(device, "flash_attention", &format!("flash_attention_{suffix}"))?;
        kernel
            .set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, SHARED_BYTES as i32)
            .map_err(|e| candle_core::Error::Cuda(format!("flash-attention shared memory limit: {e}").into()))?;
        let (heads, q_len, kv_len) = (shape.heads as i32, shape.q_len as i32, shape.kv_len as i32);
        let mut builder = stream.launch_builder(&kernel);
        builder.arg(&q).arg(&k).arg(&v).arg(&mut out).arg(&heads).arg(&q_len).arg(&kv_len).arg(&self.scale);
        let grid = (shape.q_len.div_ceil(BLOCK_QUERIES) as u32, (shape.batch * shape.heads) as u32, 1);
        // SAFETY: argument types match the kernel; shared memory is the kernel's Tiles size.
        unsafe { builder.launch(LaunchConfig { grid_dim: grid, block_dim: (THREADS, 1, 1), shared_mem_bytes: SHARED_BYTES }) }.w()?;
        Ok(out)
    }
}
