//! candle embeds its kernels as PTX and loads each module on first use, so the driver compiles
//! them then: 18.8 s of the first request on a fresh H200 (docs/PERFORMANCE.md run d). Our own
//! kernels ship as native sm_90 code; for candle's we compile the modules the pipeline uses
//! in parallel when the engine opens the device. The driver keeps the compiled code in its
//! cache (`~/.nv/ComputeCache`, or `CUDA_CACHE_PATH`), so candle's own loads of the same PTX
//! later are cache hits, in this process and in every later one on the machine.

use std::time::{Duration, Instant};

use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::kernels;
use candle_core::CudaDevice;

/// The driver's cache must hold candle's compiled modules (~150 MB for those below): the
/// default limit is smaller on some drivers. Read when CUDA initialises, so it is set before
/// the first device is opened and only when the host has not chosen a size.
pub(crate) fn enlarge_driver_cache() {
    if std::env::var_os("CUDA_CACHE_MAXSIZE").is_none() {
        std::env::set_var("CUDA_CACHE_MAXSIZE", (4u64 << 30).to_string());
    }
}

/// Compiles candle's PTX modules that SDXL uses, one thread each; returns how long it took
/// (milliseconds on a machine whose driver cache has them already).
pub(crate) fn compile_candle_kernels(device: &CudaDevice) -> candle_core::Result<Duration> {
    let start = Instant::now();
    let context = device.cuda_stream().context().clone();
    let modules = [
        kernels::AFFINE,
        kernels::BINARY,
        kernels::CAST,
        kernels::CONV,
        kernels::FILL,
        kernels::INDEXING,
        kernels::REDUCE,
        kernels::TERNARY,
        kernels::UNARY,
    ];
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = modules
            .iter()
            .map(|module| {
                let context = context.clone();
                scope.spawn(move || context.load_module(Ptx::from_src(module.ptx())).map(drop))
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    for result in results {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(err)) => candle_core::bail!("compiling candle's CUDA kernels: {err}"),
            Err(_) => candle_core::bail!("compiling candle's CUDA kernels: a compile thread panicked"),
        }
    }
    Ok(start.elapsed())
}
