// GEGLU (diffusers `GEGLU`): out = hidden · gelu_erf(gate) where the projection's last dim is
// [hidden | gate]. One pass instead of candle's chunk copy, GELU and multiply. Rounds as torch
// does between its two ops: gelu(gate) to T, then the product to T.
#include "common.cuh"

__device__ __forceinline__ float gelu_erf(float gate) { return 0.5f * gate * (1.f + erff(gate * 0.70710678118654752f)); }

// grid: x over column chunks of one row, y strided over rows (no 64-bit division per element).
// Half-precision rows of even width go two columns per thread (one 4-byte load of each half).
template <typename T>
__device__ void geglu(const T* __restrict__ projected, T* __restrict__ output, int64_t rows, int64_t inner) {
    const bool aligned = (reinterpret_cast<uintptr_t>(projected) & 3) == 0 && (reinterpret_cast<uintptr_t>(output) & 3) == 0;
    const bool pairs = sizeof(T) == 2 && inner % 2 == 0 && aligned;
    const int64_t columns = pairs ? inner / 2 : inner;
    for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
        const T* source = projected + row * 2 * inner;
        T* destination = output + row * inner;
        for (int64_t column = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; column < columns; column += (int64_t)gridDim.x * blockDim.x) {
            if (pairs) {
                // Two adjacent elements of T (2 bytes each) as one 4-byte word.
                uint32_t hidden_word = reinterpret_cast<const uint32_t*>(source)[column];
                uint32_t gate_word = reinterpret_cast<const uint32_t*>(source + inner)[column];
                const T* hidden = reinterpret_cast<const T*>(&hidden_word);
                const T* gate = reinterpret_cast<const T*>(&gate_word);
                T result[2];
                for (int i = 0; i < 2; ++i) result[i] = from_float<T>(to_float(hidden[i]) * round_to<T>(gelu_erf(to_float(gate[i]))));
                reinterpret_cast<uint32_t*>(destination)[column] = *reinterpret_cast<const uint32_t*>(result);
            } else {
                float gelu = round_to<T>(gelu_erf(to_float(source[inner + column])));
                destination[column] = from_float<T>(to_float(source[column]) * gelu);
            }
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
