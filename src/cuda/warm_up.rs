//! candle embeds its kernels as PTX and loads each module on first use, so the driver compiles
//! them then: 18.8 s of the first request on a fresh H200 (docs/PERFORMANCE.md run d). Our own
//! kernels ship as native sm_90 code; for candle's we compile the modules the pipeline uses
//! in parallel when the engine opens the device: 11.7 s on a fresh H200 (24 s one by one),
//! 0.28 s once the driver's cache has them. The driver keeps the compiled code in its
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
    let ordinal = context.ordinal() as i32;
    // The smallest module first, in the shared context: when the driver's cache already has it
    // (every start after the first on a machine), the rest is cached too and loads in ~0.2 s.
    let (probe, rest) = modules.split_first().expect("modules listed above");
    let probe_start = Instant::now();
    context.load_module(Ptx::from_src(probe.ptx())).map(drop).map_err(|err| candle_core::Error::Msg(format!("compiling candle's CUDA kernels: {err}")))?;
    let cache_is_warm = probe_start.elapsed() < Duration::from_millis(200);
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = rest
            .iter()
            .map(|module| {
                let context = context.clone();
                scope.spawn(move || {
                    // The driver compiles one module at a time per context (9 threads on the
                    // shared context took as long as one: 24 s on a fresh H200), so on a cold
                    // cache each thread compiles in a short-lived context of its own (8.4 s);
                    // creating those costs ~1.7 s, which a warm cache does not need.
                    if !cache_is_warm && compile_in_own_context(ordinal, module.ptx()) {
                        return Ok(());
                    }
                    context.load_module(Ptx::from_src(module.ptx())).map(drop)
                })
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

/// Compiles `ptx` in a context of its own on device `ordinal`, then drops module and context
/// (the driver's cache keeps the compiled code). False when any step fails; the caller then
/// compiles in the shared context.
fn compile_in_own_context(ordinal: i32, ptx: &str) -> bool {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let Ok(source) = std::ffi::CString::new(ptx) else { return false };
    let ok = |result: sys::CUresult| result == sys::CUresult::CUDA_SUCCESS;
    // SAFETY: plain driver calls on handles created here; the context is current on this
    // thread only between its creation and its destruction, and nothing else uses it.
    unsafe {
        let mut device: sys::CUdevice = 0;
        if !ok(sys::cuDeviceGet(&mut device, ordinal)) {
            return false;
        }
        let mut context: sys::CUcontext = std::ptr::null_mut();
        if !ok(sys::cuCtxCreate_v4(&mut context, std::ptr::null_mut(), 0, device)) {
            return false;
        }
        let mut module: sys::CUmodule = std::ptr::null_mut();
        let compiled = ok(sys::cuModuleLoadData(&mut module, source.as_ptr() as *const _));
        if compiled {
            sys::cuModuleUnload(module);
        }
        sys::cuCtxDestroy_v2(context);
        compiled
    }
}
