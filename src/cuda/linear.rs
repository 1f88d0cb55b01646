//! `nn.Linear` in float16/bfloat16 as one cuBLASLt call with the bias fused into the GEMM's
//! epilogue (candle runs a cuBLAS GEMM, then a separate broadcast-add kernel over the output).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublaslt::{CudaBlasLT, Matmul, MatmulConfig};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CpuStorage, CudaStorage, CustomOp2, CustomOp3, Layout, Shape};
use half::{bf16, f16};
use once_cell::sync::Lazy;
use parking_lot::Mutex;

/// One cuBLASLt handle (with its 32 MB workspace) per CUDA context.
static HANDLES: Lazy<Mutex<HashMap<usize, Arc<CudaBlasLT>>>> = Lazy::new(Default::default);

fn handle(storage: &CudaStorage) -> candle_core::Result<Arc<CudaBlasLT>> {
    let stream = storage.device().cuda_stream();
    let key = stream.context().cu_ctx() as usize;
    let mut handles = HANDLES.lock();
    if let Some(handle) = handles.get(&key) {
        return Ok(handle.clone());
    }
    let handle = Arc::new(CudaBlasLT::new(stream).map_err(|e| candle_core::Error::Cuda(format!("cuBLASLt handle: {e:?}").into()))?);
    handles.insert(key, handle.clone());
    Ok(handle)
}

/// `(x [rows, in], weight [out, in], bias [out])` → `x · weightᵀ + bias`.
pub(crate) struct Linear;

/// `(x [rows, in], weight [out, in])` → `x · weightᵀ`.
pub(crate) struct LinearNoBias;

fn run<T: DeviceRepr>(
    storage: &CudaStorage,
    x: &CudaSlice<T>,
    x_layout: &Layout,
    weight: &CudaSlice<T>,
    weight_layout: &Layout,
    bias: Option<(&CudaSlice<T>, &Layout)>,
) -> candle_core::Result<(CudaSlice<T>, Shape)>
where
    CudaBlasLT: Matmul<T>,
{
    let (rows, inner) = x_layout.shape().dims2()?;
    let (out_features, weight_inner) = weight_layout.shape().dims2()?;
    if inner != weight_inner || bias.is_some_and(|(_, l)| l.dims() != [out_features]) {
        candle_core::bail!("linear: x {:?}, weight {:?}, bias {:?} do not fit", x_layout.dims(), weight_layout.dims(), bias.map(|(_, l)| l.dims().to_vec()));
    }
    let x = super::contiguous(x, x_layout, "linear", "x")?;
    let weight = super::contiguous(weight, weight_layout, "linear", "weight")?;
    let bias = match bias {
        Some((slice, layout)) => Some(super::contiguous(slice, layout, "linear", "bias")?),
        None => None,
    };
    let handle = handle(storage)?;
    // SAFETY: the GEMM writes every output element.
    let mut out = unsafe { storage.device().cuda_stream().alloc::<T>(rows * out_features) }.w()?;
    // Column-major view: out[out, rows] = weightᵀ[out, in] · x[in, rows].
    let config = MatmulConfig {
        transa: true,
        transb: false,
        transc: false,
        m: out_features as u64,
        n: rows as u64,
        k: inner as u64,
        alpha: 1.0,
        lda: inner as i64,
        ldb: inner as i64,
        beta: 0.0,
        ldc: out_features as i64,
        stride_a: None,
        stride_b: None,
        stride_c: None,
        stride_bias: None,
        batch_size: None,
    };
    // SAFETY: buffers have the sizes the config describes (checked above).
    unsafe { handle.matmul(config, &weight, &x, &mut out, bias.as_ref(), None) }.map_err(|e| candle_core::Error::Cuda(format!("cuBLASLt matmul: {e:?}").into()))?;
    Ok((out, Shape::from((rows, out_features))))
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "cublaslt-linear"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("cublaslt-linear is the CUDA path; crate::ops runs candle's Linear on the CPU")
    }

    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout, w: &CudaStorage, wl: &Layout, b: &CudaStorage, bl: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (slice, shape) = match (&x.slice, &w.slice, &b.slice) {
            (CudaStorageSlice::F16(xs), CudaStorageSlice::F16(ws), CudaStorageSlice::F16(bs)) => {
                let (out, shape) = run::<f16>(x, xs, xl, ws, wl, Some((bs, bl)))?;
                (CudaStorageSlice::F16(out), shape)
            }
            (CudaStorageSlice::BF16(xs), CudaStorageSlice::BF16(ws), CudaStorageSlice::BF16(bs)) => {
                let (out, shape) = run::<bf16>(x, xs, xl, ws, wl, Some((bs, bl)))?;
                (CudaStorageSlice::BF16(out), shape)
            }
            _ => candle_core::bail!("cublaslt-linear: x, weight and bias must all be f16 or all bf16"),
        };
        Ok((CudaStorage { slice, device: x.device().clone() }, shape))
    }
}

impl CustomOp2 for LinearNoBias {
    fn name(&self) -> &'static str {
        "cublaslt-linear-no-bias"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("cublaslt-linear is the CUDA path; crate::ops runs candle's Linear on the CPU")
    }

    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout, w: &CudaStorage, wl: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (slice, shape) = match (&x.slice, &w.slice) {
            (CudaStorageSlice::F16(xs), CudaStorageSlice::F16(ws)) => {
                let (out, shape) = run::<f16>(x, xs, xl, ws, wl, None)?;
                (CudaStorageSlice::F16(out), shape)
            }
            (CudaStorageSlice::BF16(xs), CudaStorageSlice::BF16(ws)) => {
                let (out, shape) = run::<bf16>(x, xs, xl, ws, wl, None)?;
                (CudaStorageSlice::BF16(out), shape)
            }
            _ => candle_core::bail!("cublaslt-linear: x and weight must both be f16 or both bf16"),
        };
        Ok((CudaStorage { slice, device: x.device().clone() }, shape))
    }
}
