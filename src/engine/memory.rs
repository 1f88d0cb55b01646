//! How much device memory a request needs, estimated before it runs, so a request that
//! cannot fit is refused with OUT_OF_MEMORY and the estimate instead of failing mid-run.
//! The dominant terms of SDXL at inference time: attention score matrices of the UNet's
//! token-heaviest level, the skip-connection feature maps, and the VAE decoder at full
//! resolution (its mid-block attention over every latent cell, float32).

use candle_core::DType;

use crate::api::validate::GenerationPlan;
use crate::loader::SdxlModel;
use crate::models::VaeConfig;

const SCORE_CHUNK_BYTES: u64 = crate::models::attention::SCORE_CHUNK_BYTES as u64;

const GIB: f64 = (1u64 << 30) as f64;

fn dtype_bytes(dtype: DType) -> u64 {
    dtype.size_in_bytes() as u64
}

/// Product that saturates instead of wrapping: a request too large for u64 is simply too large.
fn product(factors: &[u64]) -> u64 {
    factors.iter().fold(1u64, |acc, &f| acc.saturating_mul(f))
}

/// Peak bytes of activations for one request on the model (weights excluded), its VAE
/// decoding the whole image at once. The denoising loop's activations are freed before the
/// decode starts, so the peak is the larger of the two. Saturating arithmetic: an absurd
/// request estimates as u64::MAX, never as a small wrapped number.
pub fn estimate_request_bytes(model: &SdxlModel, plan: &GenerationPlan) -> u64 {
    let vae = model.vae.network().config();
    estimate_denoise_bytes(model, plan).max(estimate_vae_bytes(vae, model.vae_dtype, plan.height as u64, plan.width as u64))
}

/// The UNet's share: attention scores, skip feature maps and the text context.
pub fn estimate_denoise_bytes(model: &SdxlModel, plan: &GenerationPlan) -> u64 {
    let unet = model.unet.config();
    let factor = model.vae.network().config().downscale_factor() as u64;
    let (h, w) = (plan.height as u64 / factor, plan.width as u64 / factor);
    let rows = plan.batch_size as u64 * if plan.guidance_scale > 1.0 { 2 } else { 1 };
    let element = dtype_bytes(model.dtype);
    // Attention: q·kᵀ and its softmax, for the level with the most tokens that has attention.
    let levels = unet.block_out_channels.len();
    let attention = (0..levels)
        .filter(|&level| unet.down_block_types[level].starts_with("CrossAttn"))
        .map(|level| {
            let tokens = (h >> level) * (w >> level);
            let heads = match unet.num_attention_heads.as_ref().unwrap_or(&unet.attention_head_dim) {
                crate::models::unet_2d_condition::PerBlock::One(n) => *n as u64,
                crate::models::unet_2d_condition::PerBlock::Each(list) => *list.get(level).unwrap_or(&1) as u64,
            };
            // Scores and probabilities exist one query chunk at a time (models/attention.rs).
            product(&[2, rows, heads, tokens, tokens, element]).min(2 * SCORE_CHUNK_BYTES)
        })
        .max()
        .unwrap_or(0);
    // Feature maps kept for the skip connections plus a few working buffers per level.
    let features: u64 = (0..levels)
        .map(|level| product(&[rows, unet.block_out_channels[level] as u64, h >> level, w >> level, element, 8]))
        .fold(0u64, u64::saturating_add);
    // Long prompts: every 75-token window adds 77 keys to each cross-attention (the text context
    // and its key/value projections). The window count is bounded from the text's length (a
    // token takes at least one byte) and the engine's limit, before anything is tokenized.
    let longest_text = plan.prompt.len().max(plan.negative_prompt.as_deref().map_or(0, str::len)) as u64;
    let windows = longest_text.div_ceil(75).clamp(1, plan.max_prompt_windows.max(1) as u64);
    let context_dim = unet.cross_attention_dim as u64;
    let text_context = product(&[rows, 77 * windows, context_dim.max(1), element, 4]);
    attention.saturating_add(features).saturating_add(text_context)
}

/// The VAE decoder at `height × width` pixels: its mid-block attention over every latent
/// cell, or its full-resolution feature maps and their convolution workspace.
pub fn estimate_vae_bytes(vae: &VaeConfig, dtype: DType, height: u64, width: u64) -> u64 {
    let factor = vae.downscale_factor() as u64;
    let vae_element = dtype_bytes(dtype);
    let latent_tokens = product(&[height / factor, width / factor]);
    let vae_attention = product(&[2, latent_tokens, latent_tokens, vae_element]).min(2 * SCORE_CHUNK_BYTES);
    let full_resolution = product(&[height, width, vae.block_out_channels[0] as u64, vae_element, 4]);
    // cuDNN's fastest algorithm for the decoder's full-resolution convolutions takes a workspace
    // about twice the size of their widest input (src/cuda/convolution.rs).
    let convolution_workspace =
        if cfg!(feature = "cudnn") { product(&[height, width, *vae.block_out_channels.get(1).unwrap_or(&0) as u64, vae_element, 2]) } else { 0 };
    vae_attention.max(full_resolution.saturating_add(convolution_workspace))
}

/// A tiled decode: one tile's decoder activations, plus every decoded tile of the image kept
/// for blending and the stitched result (float32 image channels).
pub fn estimate_tiled_vae_bytes(vae: &VaeConfig, dtype: DType, tile_size: u64, height: u64, width: u64) -> u64 {
    let image = product(&[height, width, vae.out_channels as u64, 4]);
    estimate_vae_bytes(vae, dtype, tile_size.min(height), tile_size.min(width)).saturating_add(image.saturating_mul(3))
}

/// `max_memory_gb` in bytes.
pub fn gib_to_bytes(gib: f64) -> u64 {
    // `as` saturates for floats (NaN → 0); the config check refuses non-finite budgets anyway.
    (gib * GIB) as u64
}

/// Bytes for messages: GiB, or MiB below one GiB (tiny models and budgets stay readable).
pub fn gib(bytes: u64) -> String {
    if (bytes as f64) < GIB {
        return format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64);
    }
    format!("{:.2} GiB", bytes as f64 / GIB)
}

/// (free, total) bytes of a CUDA device; None on CPU. Free counts the blocks our memory pool
/// holds but no tensor uses (see [`configure_device`]): they are ours to allocate.
pub fn device_memory(device: &candle_core::Device) -> Option<(u64, u64)> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(cuda) = device {
        let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
        let pooled_unused = pool_attribute(cuda, PoolAttribute::Reserved).unwrap_or(0).saturating_sub(pool_attribute(cuda, PoolAttribute::Used).unwrap_or(0));
        return Some((free as u64 + pooled_unused, total as u64));
    }
    let _ = device;
    None
}

/// Prepares a device the engine opens: on CUDA, the memory pool below, and candle's PTX
/// kernels compiled in parallel now (`cuda::compile_candle_kernels`) rather than one by one
/// inside the first request. Call [`before_opening_cuda`] before the device is created.
///
/// The memory pool: keep the blocks tensors free instead of returning
/// them to the driver at every synchronisation (its default release threshold is 0, and the
/// engine synchronises after every denoising step): each step then reuses the previous step's
/// memory instead of mapping it again. Blocks go back to the driver when a model is evicted or
/// a request runs out of memory ([`release_device_memory`]).
pub fn configure_device(device: &candle_core::Device) -> crate::error::Result<()> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(cuda) = device {
        let compile_time = crate::cuda::compile_candle_kernels(cuda).map_err(|e| crate::error::Error::Device(e.to_string()))?;
        tracing::info!(seconds = compile_time.as_secs_f64(), "candle's CUDA kernels ready");
        set_pool_attribute(cuda, PoolAttribute::ReleaseThreshold, u64::MAX)
            .map_err(|e| crate::error::Error::Device(format!("memory pool release threshold: {e}")))?;
    }
    let _ = device;
    Ok(())
}

/// Settings CUDA reads when it initialises (the driver's kernel cache size).
pub fn before_opening_cuda() {
    #[cfg(feature = "cuda")]
    crate::cuda::enlarge_driver_cache();
}

#[cfg(feature = "cuda")]
#[derive(Clone, Copy)]
enum PoolAttribute {
    Reserved,
    Used,
    UsedHigh,
    ReleaseThreshold,
}

/// The default memory pool of `cuda`'s device (the one candle's allocations come from), with
/// its context bound to this thread.
#[cfg(feature = "cuda")]
fn default_pool(cuda: &candle_core::CudaDevice) -> std::result::Result<candle_core::cuda_backend::cudarc::driver::sys::CUmemoryPool, String> {
    use candle_core::cuda_backend::cudarc::driver::result;
    let context = cuda.cuda_stream().context().clone();
    context.bind_to_thread().map_err(|e| e.to_string())?;
    // SAFETY: the device handle comes from a live context.
    unsafe { result::device::get_default_mem_pool(context.cu_device()) }.map_err(|e| e.to_string())
}

#[cfg(feature = "cuda")]
fn pool_attribute_id(attribute: PoolAttribute) -> candle_core::cuda_backend::cudarc::driver::sys::CUmemPool_attribute {
    use candle_core::cuda_backend::cudarc::driver::sys::CUmemPool_attribute as Attribute;
    match attribute {
        PoolAttribute::Reserved => Attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
        PoolAttribute::Used => Attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
        PoolAttribute::UsedHigh => Attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
        PoolAttribute::ReleaseThreshold => Attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
    }
}

#[cfg(feature = "cuda")]
fn pool_attribute(cuda: &candle_core::CudaDevice, attribute: PoolAttribute) -> Option<u64> {
    let pool = default_pool(cuda).ok()?;
    let mut value = 0u64;
    // SAFETY: a live pool; these attributes are u64 (cuuint64_t).
    unsafe { candle_core::cuda_backend::cudarc::driver::result::mem_pool::get_attribute(pool, pool_attribute_id(attribute), &mut value as *mut u64 as *mut _) }.ok()?;
    Some(value)
}

#[cfg(feature = "cuda")]
fn set_pool_attribute(cuda: &candle_core::CudaDevice, attribute: PoolAttribute, value: u64) -> std::result::Result<(), String> {
    let pool = default_pool(cuda)?;
    let mut value = value;
    // SAFETY: a live pool; these attributes are u64 (cuuint64_t).
    unsafe { candle_core::cuda_backend::cudarc::driver::result::mem_pool::set_attribute(pool, pool_attribute_id(attribute), &mut value as *mut u64 as *mut _) }
        .map_err(|e| e.to_string())
}

/// After a request fails for lack of device memory: waits for the work the failed request
/// already queued (its frees are ordered behind it on the stream), then hands the memory
/// pool's cached blocks back to the driver, so the next request starts from an empty pool.
/// Returns the free bytes afterwards (None on CPU).
pub fn release_device_memory(device: &candle_core::Device) -> crate::error::Result<Option<u64>> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(cuda) = device {
        cuda.cuda_stream().synchronize().map_err(|e| crate::error::Error::Device(format!("draining the failed request's work: {e}")))?;
        let pool = default_pool(cuda).map_err(crate::error::Error::Device)?;
        // SAFETY: a live pool; trimming only returns unused blocks.
        unsafe { candle_core::cuda_backend::cudarc::driver::result::mem_pool::trim_to(pool, 0) }.map_err(|e| crate::error::Error::Device(e.to_string()))?;
        return Ok(device_memory(device).map(|(free, _)| free));
    }
    let _ = device;
    Ok(None)
}

/// What `peak_memory_bytes` measures (`peak_memory_measure` in a response).
#[cfg(feature = "cuda")]
pub(crate) const PEAK_OF_DEVICE_POOL: &str = "device_pool_allocated";
pub(crate) const PEAK_OF_PROCESS_RESIDENT_SET: &str = "process_resident_set";

/// Starts a request's peak measurement: on CUDA resets the memory pool's high-water mark to
/// what is allocated now. Returns the name of what [`request_peak`] will measure.
pub fn start_request_peak(device: &candle_core::Device) -> &'static str {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(cuda) = device {
        // Setting USED_MEM_HIGH to 0 resets it to the current use (the driver's documented reset).
        if set_pool_attribute(cuda, PoolAttribute::UsedHigh, 0).is_ok() {
            return PEAK_OF_DEVICE_POOL;
        }
    }
    let _ = device;
    PEAK_OF_PROCESS_RESIDENT_SET
}

/// The request's peak since [`start_request_peak`], when the device keeps one (CUDA).
pub fn request_peak(device: &candle_core::Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(cuda) = device {
        return pool_attribute(cuda, PoolAttribute::UsedHigh);
    }
    let _ = device;
    None
}

/// Memory in use now: device memory on CUDA (cached pool blocks excluded), this process's
/// resident set on CPU.
pub fn memory_in_use(device: &candle_core::Device) -> u64 {
    if let Some((free, total)) = device_memory(device) {
        return total.saturating_sub(free);
    }
    resident_set_bytes()
}

fn resident_set_bytes() -> u64 {
    // /proc/self/statm: size resident shared ... in pages.
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|text| text.split_whitespace().nth(1).and_then(|pages| pages.parse::<u64>().ok()))
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// Headroom kept free on a GPU for the CUDA context, cuBLAS workspaces and fragmentation.
pub(crate) const DEVICE_HEADROOM_BYTES: u64 = 1536 << 20;
