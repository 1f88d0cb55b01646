// GEGLU (diffusers `GEGLU`): out = hidden · gelu_erf(gate) where the projection's last dim is
// [hidden | gate]. One pass instead of candle's chunk copy, GELU and multiply. Rounds as torch
// does between its two ops: gelu(gate) to T, then the product to T.
#include "common.cuh"

// grid: x over column chunks of one row, y strided over rows (no 64-bit division per element).
template <typename T>
__device__ void geglu(const T* __restrict__ projected, T* __restrict__ output, int64_t rows, int64_t inner) {
    for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
        const T* source = projected + row * 2 * inner;
        T* destination = output + row * inner;
        for (int64_t column = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; column < inner; column += (int64_t)gridDim.x * blockDim.x) {
            float hidden = to_float(source[column]);
            float gate = to_float(source[inner + column]);
            float gelu = round_to<T>(0.5f * gate * (1.f + erff(gate * 0.70710678118654752f)));
            destination[column] = from_float<T>(hidden * gelu);
        }
    }
}

#define GEGLU(T, SUFFIX)                                                                             \
    extern "C" __global__ void geglu_##SUFFIX(const T* projected, T* output, int64_t rows, int64_t inner) { \
        geglu<T>(projected, output, rows, inner);                                                    \
    }

GEGLU(float, f32)
GEGLU(__half, f16)
GEGLU(__nv_bfloat16, bf16)
