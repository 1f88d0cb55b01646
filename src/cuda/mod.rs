//! Our own CUDA kernels, for what candle runs as chains of small ops or lacks a fused kernel
//! for (docs/PERFORMANCE.md has the profile that chose them). The `.cu` sources in `kernels/`
//! are compiled by build.rs into fatbins with native sm_90 code, embedded here and loaded
//! once per CUDA context: no driver JIT for them. Each kernel is a candle `CustomOp` in its
//! own file; models never call them directly but through `crate::ops`, which picks the
//! kernel on CUDA and the plain candle path elsewhere.

mod attention;
#[cfg(feature = "cudnn")]
mod convolution;
mod geglu;
mod group_norm;
mod linear;
mod warm_up;

pub(crate) use attention::{FlashAttention, HEAD_DIM as ATTENTION_HEAD_DIM};
pub(crate) use geglu::Geglu;
pub(crate) use group_norm::GroupNormSilu;
pub(crate) use linear::{Linear, LinearNoBias};
pub(crate) use warm_up::{compile_candle_kernels, enlarge_driver_cache};
#[cfg(feature = "cudnn")]
pub(crate) use convolution::Convolution;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaModule, CudaSlice, CudaView};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, Layout};
use once_cell::sync::Lazy;
use parking_lot::Mutex;

/// The compiled kernel files, by module name.
fn fatbin(module: &str) -> &'static [u8] {
    match module {
        "group_norm" => include_bytes!(concat!(env!("OUT_DIR"), "/group_norm.fatbin")),
        "geglu" => include_bytes!(concat!(env!("OUT_DIR"), "/geglu.fatbin")),
        "flash_attention" => include_bytes!(concat!(env!("OUT_DIR"), "/flash_attention.fatbin")),
        other => unreachable!("no kernel module {other}"),
    }
}

/// Loaded modules by (CUDA context, module name).
static MODULES: Lazy<Mutex<HashMap<(usize, &'static str), Arc<CudaModule>>>> = Lazy::new(Default::default);

/// `name` from module `module`, loaded into `device`'s context on first use.
pub(crate) fn function(device: &CudaDevice, module: &'static str, name: &str) -> candle_core::Result<CudaFunction> {
    let context = device.cuda_stream().context().clone();
    let key = (context.cu_ctx() as usize, module);
    let loaded = {
        let mut modules = MODULES.lock();
        match modules.get(&key) {
            Some(loaded) => loaded.clone(),
            None => {
                let loaded = context.load_module(Ptx::from_binary(fatbin(module).to_vec())).w()?;
                modules.insert(key, loaded.clone());
                loaded
            }
        }
    };
    loaded.load_function(name).w()
}

/// The elements of a contiguous input as a view; `op` and `what` name it in the error.
pub(crate) fn contiguous<'a, T>(slice: &'a CudaSlice<T>, layout: &Layout, op: &str, what: &str) -> candle_core::Result<CudaView<'a, T>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(slice.slice(start..end)),
        None => candle_core::bail!("{op}: {what} must be contiguous"),
    }
}
