//! 2-D convolution through cuDNN, set up the way that makes it fast (candle's own cuDNN path
//! rebuilds every descriptor per call, takes the first heuristic choice whatever its workspace
//! and accumulates half data in half precision): descriptors and the algorithm are chosen once
//! per shape and cached (cuDNN's ranking, the first that fits a 2.5 GB workspace; measuring
//! every algorithm gave the same speed but could pick differently in another process,
//! docs/PERFORMANCE.md run j); half and
//! bfloat16 data accumulate in float32 on tensor cores (cuDNN's pseudo-half configuration, as
//! PyTorch runs it); float32 may use TF32 tensor cores, as PyTorch does by default
//! (`torch.backends.cudnn.allow_tf32`); the workspace comes from the stream-ordered memory pool
//! for each call (so the 2 GB the VAE's largest convolutions want is held only while they run);
//! the bias is added in place by cuDNN. Input, weight and output are NCHW, as the rest of the model.

use std::collections::HashMap;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::sys;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CpuStorage, CudaStorage, CustomOp3, DType, Layout, Shape};
use once_cell::sync::Lazy;
use parking_lot::Mutex;

/// Algorithms needing more scratch memory than this are passed over. The float32 VAE decode at
/// 1024² needs ~1.1 GB (128 channels) and ~2.2 GB (256 channels) for its fastest algorithm,
/// which is 7–9× faster than the best that fits in 1 GB (docs/PERFORMANCE.md).
const MAX_WORKSPACE_BYTES: usize = 5 << 29;

/// `(input, weight, bias)` → `conv2d(input, weight) + bias` with symmetric `padding` and `stride`.
pub(crate) struct Convolution {
    pub padding: usize,
    pub stride: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct PlanKey {
    context: usize,
    dtype: DType,
    input: [i32; 4],
    weight: [i32; 4],
    padding: i32,
    stride: i32,
}

/// Descriptors and the chosen algorithm for one shape.
struct Plan {
    input: sys::cudnnTensorDescriptor_t,
    weight: sys::cudnnFilterDescriptor_t,
    output: sys::cudnnTensorDescriptor_t,
    bias: sys::cudnnTensorDescriptor_t,
    convolution: sys::cudnnConvolutionDescriptor_t,
    /// The chosen algorithm and its workspace (chosen on the first call of the shape).
    algorithm: Option<(sys::cudnnConvolutionFwdAlgo_t, usize)>,
    output_dims: [i32; 4],
}

/// One cuDNN handle per CUDA context, bound to candle's stream.
struct DeviceState {
    handle: sys::cudnnHandle_t,
}

// SAFETY: cuDNN handles and descriptors are plain heap objects; every use happens under the
// STATE / PLANS mutexes, so no two threads touch one at a time.
unsafe impl Send for Plan {}
unsafe impl Send for DeviceState {}

static STATE: Lazy<Mutex<HashMap<usize, DeviceState>>> = Lazy::new(Default::default);
static PLANS: Lazy<Mutex<HashMap<PlanKey, Plan>>> = Lazy::new(Default::default);

fn check(status: sys::cudnnStatus_t, what: &str) -> candle_core::Result<()> {
    if status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        return Ok(());
    }
    candle_core::bail!("cuDNN {what}: {status:?}")
}

fn data_type(dtype: DType) -> candle_core::Result<sys::cudnnDataType_t> {
    Ok(match dtype {
        DType::F32 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
        DType::F16 => sys::cudnnDataType_t::CUDNN_DATA_HALF,
        DType::BF16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
        other => candle_core::bail!("cuDNN convolution: no {other:?}"),
    })
}

fn tensor_descriptor(dtype: sys::cudnnDataType_t, dims: [i32; 4]) -> candle_core::Result<sys::cudnnTensorDescriptor_t> {
    let mut descriptor = std::ptr::null_mut();
    // SAFETY: out-pointer to a descriptor cuDNN allocates.
    unsafe {
        check(sys::cudnnCreateTensorDescriptor(&mut descriptor), "create tensor descriptor")?;
        check(
            sys::cudnnSetTensor4dDescriptor(descriptor, sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW, dtype, dims[0], dims[1], dims[2], dims[3]),
            "set tensor descriptor",
        )?;
    }
    Ok(descriptor)
}

impl Plan {
    fn new(key: &PlanKey) -> candle_core::Result<Self> {
        let dtype = data_type(key.dtype)?;
        let [n, _, h, w] = key.input;
        let [k, c, r, s] = key.weight;
        let out_h = (h + 2 * key.padding - r) / key.stride + 1;
        let out_w = (w + 2 * key.padding - s) / key.stride + 1;
        let output_dims = [n, k, out_h, out_w];
        let input = tensor_descriptor(dtype, key.input)?;
        let output = tensor_descriptor(dtype, output_dims)?;
        let bias = tensor_descriptor(dtype, [1, k, 1, 1])?;
        let mut weight = std::ptr::null_mut();
        let mut convolution = std::ptr::null_mut();
        // SAFETY: descriptors created and set through cuDNN's own API; sizes from the key.
        unsafe {
            check(sys::cudnnCreateFilterDescriptor(&mut weight), "create filter descriptor")?;
            check(sys::cudnnSetFilter4dDescriptor(weight, dtype, sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW, k, c, r, s), "set filter descriptor")?;
            check(sys::cudnnCreateConvolutionDescriptor(&mut convolution), "create convolution descriptor")?;
            // Half and bfloat16 data accumulate in float32 (cuDNN's pseudo-half configuration).
            check(
                sys::cudnnSetConvolution2dDescriptor(
                    convolution,
                    key.padding,
                    key.padding,
                    key.stride,
                    key.stride,
                    1,
                    1,
                    sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                    sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                ),
                "set convolution descriptor",
            )?;
            // Float32 may use TF32 tensor cores (PyTorch's default, allow_tf32).
            let math = if key.dtype == DType::F32 {
                sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
            } else {
                sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
            };
            check(sys::cudnnSetConvolutionMathType(convolution, math), "set math type")?;
        }
        Ok(Plan { input, weight, output, bias, convolution, algorithm: None, output_dims })
    }

    /// cuDNN's heuristic ranking (`cudnnGetConvolutionForwardAlgorithm_v7`): the first
    /// algorithm that fits `MAX_WORKSPACE_BYTES`, with the math type it was ranked with. No
    /// time is spent measuring, and the choice is the same in every process on the same GPU and
    /// cuDNN, so a request gives the same image in every process (measured choices can differ
    /// between processes when two algorithms time alike).
    fn choose_algorithm(&mut self, handle: sys::cudnnHandle_t, key: &PlanKey) -> candle_core::Result<()> {
        const REQUESTED: usize = 16;
        let mut returned = 0;
        // SAFETY: all-zero bytes are a valid perf struct (plain integers and floats).
        let mut results: [sys::cudnnConvolutionFwdAlgoPerf_t; REQUESTED] = unsafe { std::mem::zeroed() };
        check(
            unsafe { sys::cudnnGetConvolutionForwardAlgorithm_v7(handle, self.input, self.weight, self.convolution, self.output, REQUESTED as i32, &mut returned, results.as_mut_ptr()) },
            "rank convolution algorithms",
        )?;
        let results = &results[..returned.clamp(0, REQUESTED as i32) as usize];
        for candidate in results.iter().filter(|r| r.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS) {
            check(unsafe { sys::cudnnSetConvolutionMathType(self.convolution, candidate.mathType) }, "set ranked math type")?;
            let mut bytes = 0usize;
            let status = unsafe { sys::cudnnGetConvolutionForwardWorkspaceSize(handle, self.input, self.weight, self.convolution, self.output, candidate.algo, &mut bytes) };
            if std::env::var_os("SDXL_CUDNN_DEBUG").is_some() {
                eprintln!("cudnn rank {:?} {:?} * {:?}: {:?} {:?} {} bytes {:?}", key.dtype, key.input, key.weight, candidate.algo, status, bytes, candidate.mathType);
            }
            if status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS && bytes <= MAX_WORKSPACE_BYTES {
                self.algorithm = Some((candidate.algo, bytes));
                return Ok(());
            }
        }
        candle_core::bail!("cuDNN ranks no convolution algorithm within the workspace limit for {:?} * {:?}", key.input, key.weight)
    }
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created by this plan and is destroyed once.
        unsafe {
            sys::cudnnDestroyTensorDescriptor(self.input);
            sys::cudnnDestroyTensorDescriptor(self.output);
            sys::cudnnDestroyTensorDescriptor(self.bias);
            sys::cudnnDestroyFilterDescriptor(self.weight);
            sys::cudnnDestroyConvolutionDescriptor(self.convolution);
        }
    }
}

impl CustomOp3 for Convolution {
    fn name(&self) -> &'static str {
        "cudnn-convolution"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("cudnn-convolution is the CUDA path; crate::models runs candle's conv2d on the CPU")
    }

    fn cuda_fwd(
        &self,
        input: &CudaStorage,
        input_layout: &Layout,
        weight: &CudaStorage,
        weight_layout: &Layout,
        bias: &CudaStorage,
        bias_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (slice, dims) = match (&input.slice, &weight.slice, &bias.slice) {
            (CudaStorageSlice::F32(x), CudaStorageSlice::F32(w), CudaStorageSlice::F32(b)) => {
                let (y, dims) = self.run(input, x, input_layout, w, weight_layout, b, bias_layout)?;
                (CudaStorageSlice::F32(y), dims)
            }
            (CudaStorageSlice::F16(x), CudaStorageSlice::F16(w), CudaStorageSlice::F16(b)) => {
                let (y, dims) = self.run(input, x, input_layout, w, weight_layout, b, bias_layout)?;
                (CudaStorageSlice::F16(y), dims)
            }
            (CudaStorageSlice::BF16(x), CudaStorageSlice::BF16(w), CudaStorageSlice::BF16(b)) => {
                let (y, dims) = self.run(input, x, input_layout, w, weight_layout, b, bias_layout)?;
                (CudaStorageSlice::BF16(y), dims)
            }
            _ => candle_core::bail!("cudnn-convolution: input, weight and bias must share one of f32/f16/bf16"),
        };
        let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
        Ok((CudaStorage { slice, device: input.device().clone() }, Shape::from(dims)))
    }
}

impl Convolution {
    #[allow(clippy::too_many_arguments)]
    fn run<T: DeviceRepr>(
        &self,
        storage: &CudaStorage,
        input: &CudaSlice<T>,
        input_layout: &Layout,
        weight: &CudaSlice<T>,
        weight_layout: &Layout,
        bias: &CudaSlice<T>,
        bias_layout: &Layout,
    ) -> candle_core::Result<(CudaSlice<T>, [i32; 4])> {
        let dims4 = |layout: &Layout, what: &str| -> candle_core::Result<[i32; 4]> {
            let (a, b, c, d) = layout.shape().dims4().map_err(|_| candle_core::Error::Msg(format!("cudnn-convolution: {what} is not 4-D")))?;
            let fits = |v: usize| i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("cudnn-convolution: {what} dim {v} too large")));
            Ok([fits(a)?, fits(b)?, fits(c)?, fits(d)?])
        };
        let (input_view, weight_view, bias_view) = (super::contiguous(input, input_layout, "cudnn-convolution", "input")?, super::contiguous(weight, weight_layout, "cudnn-convolution", "weight")?, super::contiguous(bias, bias_layout, "cudnn-convolution", "bias")?);
        let device = storage.device();
        let stream = device.cuda_stream();
        let context = stream.context().cu_ctx() as usize;
        let key = PlanKey {
            context,
            dtype: storage.dtype(),
            input: dims4(input_layout, "input")?,
            weight: dims4(weight_layout, "weight")?,
            padding: self.padding as i32,
            stride: self.stride as i32,
        };
        if key.input[1] != key.weight[1] {
            candle_core::bail!("cudnn-convolution: input has {} channels, weight expects {}", key.input[1], key.weight[1]);
        }
        let mut states = STATE.lock();
        let state = match states.entry(context) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let mut handle = std::ptr::null_mut();
                // SAFETY: creates a handle and binds it to candle's stream of this context.
                unsafe {
                    check(sys::cudnnCreate(&mut handle), "create handle")?;
                    check(sys::cudnnSetStream(handle, stream.cu_stream() as _), "set stream")?;
                }
                entry.insert(DeviceState { handle })
            }
        };
        let mut plans = PLANS.lock();
        if !plans.contains_key(&key) {
            let plan = Plan::new(&key)?;
            plans.insert(key, plan);
        }
        let plan = plans.get_mut(&key).ok_or_else(|| candle_core::Error::Msg("cudnn-convolution: plan vanished".into()))?;
        let [n, k, h, w] = plan.output_dims;
        // SAFETY: cuDNN writes every output element.
        let mut output = unsafe { stream.alloc::<T>((n * k * h * w) as usize) }.w()?;
        {
            let (x, _x_guard) = input_view.device_ptr(&stream);
            let (wt, _w_guard) = weight_view.device_ptr(&stream);
            let (b, _b_guard) = bias_view.device_ptr(&stream);
            let (y, _y_guard) = output.device_ptr_mut(&stream);
            if plan.algorithm.is_none() {
                plan.choose_algorithm(state.handle, &key)?;
            }
            let (algorithm, workspace_bytes) = plan.algorithm.ok_or_else(|| candle_core::Error::Msg("cudnn-convolution: no algorithm".into()))?;
            // SAFETY: scratch memory; cuDNN writes before it reads. Back to the pool after the call.
            let mut workspace = match workspace_bytes {
                0 => None,
                bytes => Some(unsafe { stream.alloc::<u8>(bytes) }.w()?),
            };
            let (workspace, _workspace_guard) = match workspace.as_mut() {
                Some(workspace) => {
                    let (pointer, guard) = workspace.device_ptr_mut(&stream);
                    (pointer as *mut std::ffi::c_void, Some(guard))
                }
                None => (std::ptr::null_mut(), None),
            };
            let (one, zero) = (1f32, 0f32);
            // SAFETY: pointers are live device buffers of the descriptors' sizes and type; alpha
            // and beta are float for every data type we use (cuDNN's rule for half data).
            unsafe {
                check(
                    sys::cudnnConvolutionForward(
                        state.handle,
                        &one as *const f32 as *const _,
                        plan.input,
                        x as *const _,
                        plan.weight,
                        wt as *const _,
                        plan.convolution,
                        algorithm,
                        workspace,
                        workspace_bytes,
                        &zero as *const f32 as *const _,
                        plan.output,
                        y as *mut _,
                    ),
                    "convolution forward",
                )?;
                check(sys::cudnnAddTensor(state.handle, &one as *const f32 as *const _, plan.bias, b as *const _, &one as *const f32 as *const _, plan.output, y as *mut _), "add bias")?;
            }
        }
        Ok((output, plan.output_dims))
    }
}
