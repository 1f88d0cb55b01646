// GroupNorm (+ optional SiLU) over NCHW tensors in two launches instead of candle's ~13.
// In NCHW every (batch, group) slice is contiguous: `group_size` = channels_per_group · H · W.
//   1. group_norm_partials: each block reduces one chunk of one group to (count, mean, M2)
//      with Welford's update (numerically stable where E[x²] − E[x]² is not).
//   2. group_norm_apply: each block merges its group's partials (Chan et al.), then writes
//      (x − mean) · rsqrt(var + eps) · γ + β for its chunk, rounded to T, then SiLU of the
//      rounded value (torch runs SiLU as a separate op on the rounded tensor).
// Statistics are float32 as torch's native_group_norm computes them for half inputs.
#include "common.cuh"

struct Moments {
    float count, mean, m2;
};

__device__ __forceinline__ Moments merge(Moments a, Moments b) {
    float count = a.count + b.count;
    if (count == 0.f) return a;
    float delta = b.mean - a.mean;
    float weight_b = b.count / count;
    return {count, a.mean + delta * weight_b, a.m2 + b.m2 + delta * delta * a.count * weight_b};
}

// Block-wide merge; the result is valid in every thread.
__device__ Moments block_merge(Moments local) {
    __shared__ Moments per_warp[32];
    __shared__ Moments total;
    for (int offset = 16; offset > 0; offset >>= 1) {
        Moments other = {__shfl_down_sync(0xffffffffu, local.count, offset), __shfl_down_sync(0xffffffffu, local.mean, offset),
                         __shfl_down_sync(0xffffffffu, local.m2, offset)};
        local = merge(local, other);
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    if (lane == 0) per_warp[warp] = local;
    __syncthreads();
    if (warp == 0) {
        local = lane < warps ? per_warp[lane] : Moments{0.f, 0.f, 0.f};
        for (int offset = 16; offset > 0; offset >>= 1) {
            Moments other = {__shfl_down_sync(0xffffffffu, local.count, offset), __shfl_down_sync(0xffffffffu, local.mean, offset),
                             __shfl_down_sync(0xffffffffu, local.m2, offset)};
            local = merge(local, other);
        }
        if (lane == 0) total = local;
    }
    __syncthreads();
    return total;
}

// grid: (chunks per group, batch · groups); partials: [batch · groups][chunks][3].
template <typename T>
__device__ void group_norm_partials(const T* __restrict__ input, float* __restrict__ partials, int64_t group_size, int64_t chunk) {
    const T* group = input + (int64_t)blockIdx.y * group_size;
    int64_t start = (int64_t)blockIdx.x * chunk;
    int64_t end = min(start + chunk, group_size);
    Moments local = {0.f, 0.f, 0.f};
    for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
        float value = to_float(group[i]);
        local.count += 1.f;
        float delta = value - local.mean;
        local.mean += delta / local.count;
        local.m2 += delta * (value - local.mean);
    }
    Moments total = block_merge(local);
    if (threadIdx.x == 0) {
        float* out = partials + ((int64_t)blockIdx.y * gridDim.x + blockIdx.x) * 3;
        out[0] = total.count;
        out[1] = total.mean;
        out[2] = total.m2;
    }
}

// grid: (element chunks per group, batch · groups).
template <typename T>
__device__ void group_norm_apply(const T* __restrict__ input, const float* __restrict__ partials, const T* __restrict__ gamma,
                                 const T* __restrict__ beta, T* __restrict__ output, int64_t group_size, int partial_count,
                                 int64_t spatial, int channels_per_group, int groups, float eps, int silu, int64_t chunk) {
    const float* mine = partials + (int64_t)blockIdx.y * partial_count * 3;
    Moments local = {0.f, 0.f, 0.f};
    for (int p = threadIdx.x; p < partial_count; p += blockDim.x) local = merge(local, Moments{mine[3 * p], mine[3 * p + 1], mine[3 * p + 2]});
    Moments total = block_merge(local);
    float mean = total.mean;
    float rstd = rsqrtf(total.m2 / total.count + eps);
    int first_channel = (blockIdx.y % groups) * channels_per_group;
    int64_t base = (int64_t)blockIdx.y * group_size;
    int64_t start = (int64_t)blockIdx.x * chunk;
    int64_t end = min(start + chunk, group_size);
    for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
        int channel = first_channel + (int)(i / spatial);
        float value = (to_float(input[base + i]) - mean) * rstd * to_float(gamma[channel]) + to_float(beta[channel]);
        if (silu) {
            value = round_to<T>(value);
            value = value / (1.f + expf(-value));
        }
        output[base + i] = from_float<T>(value);
    }
}

#define GROUP_NORM(T, SUFFIX)                                                                                                   \
    extern "C" __global__ void group_norm_partials_##SUFFIX(const T* input, float* partials, int64_t group_size, int64_t chunk) { \
        group_norm_partials<T>(input, partials, group_size, chunk);                                                             \
    }                                                                                                                           \
    extern "C" __global__ void group_norm_apply_##SUFFIX(const T* input, const float* partials, const T* gamma, const T* beta,   \
                                                         T* output, int64_t group_size, int partial_count, int64_t spatial,     \
                                                         int channels_per_group, int groups, float eps, int silu, int64_t chunk) { \
        group_norm_apply<T>(input, partials, gamma, beta, output, group_size, partial_count, spatial, channels_per_group, groups, \
                            eps, silu, chunk);                                                                                  \
    }

GROUP_NORM(float, f32)
GROUP_NORM(__half, f16)
GROUP_NORM(__nv_bfloat16, bf16)
