// Fused attention softmax(q kᵀ · scale) v for head_dim 64 in float16/bfloat16, without a mask
// (every attention of the SDXL UNet). FlashAttention-2's forward: scores never reach device
// memory, the softmax is computed online over key tiles with float32 statistics and
// accumulators, and q, k, v, out are read and written in the projections' own
// [batch, tokens, heads, 64] layout, so no transposing copies surround the kernel.
//
// One block = 4 warps = 64 query rows of one (batch, head); each warp owns M_TILES 16-row tiles.
// Key/value tiles of 64 rows are double-buffered in shared memory with cp.async. Tensor-core products use
// mma.sync m16n8k16 (float32 accumulate): S = Q·Kᵀ with K fragments from ldmatrix, O += P·V with
// P re-packed from the S accumulators (their layout is the A operand's) and V from
// ldmatrix.trans.
#include "common.cuh"

namespace {

constexpr int HEAD_DIM = 64;
constexpr int WARPS = 4;
// 16-row query tiles per warp. 2 (each K/V fragment feeding two products) measured no faster on
// the H200 (0.401 vs 0.41 ms at 4096 tokens: 246 registers halve the resident warps), so 1.
constexpr int M_TILES = 1;
constexpr int BLOCK_M = WARPS * M_TILES * 16;
constexpr int BLOCK_N = 64;
constexpr int ROW_PITCH = HEAD_DIM + 8;  // halves; 144-byte rows keep ldmatrix free of bank conflicts

// (BLOCK_M + 4 · 64) rows of 144 bytes: 46 080 bytes with M_TILES = 1; the launcher raises the
// kernel's limit in case a larger M_TILES needs more than the 48 KB default (src/cuda/attention.rs).
struct Tiles {
    uint16_t q[BLOCK_M * ROW_PITCH];
    uint16_t k[2][BLOCK_N * ROW_PITCH];
    uint16_t v[2][BLOCK_N * ROW_PITCH];
};

__device__ __forceinline__ uint32_t shared_address(const void* pointer) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// 16 bytes global → shared; rows past the end are zero-filled (src-size 0), so masked keys
// have v = 0 and never turn 0 · garbage into NaN.
__device__ __forceinline__ void copy_16_bytes(void* shared, const void* global, bool valid) {
    int source_bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(shared)), "l"(global), "r"(source_bytes));
}
__device__ __forceinline__ void copy_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void copy_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* shared) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(shared)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* shared) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(shared)));
}

template <typename T> __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <> __device__ __forceinline__ void mma<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <typename T> __device__ __forceinline__ uint32_t pack(float low, float high);
template <> __device__ __forceinline__ uint32_t pack<__half>(float low, float high) {
    __half2 pair = __floats2half2_rn(low, high);
    return *reinterpret_cast<uint32_t*>(&pair);
}
template <> __device__ __forceinline__ uint32_t pack<__nv_bfloat16>(float low, float high) {
    __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
    return *reinterpret_cast<uint32_t*>(&pair);
}

// Copies rows [first, first + TILE_ROWS) of one head (row stride `row_stride` elements) into a tile.
template <int TILE_ROWS, typename T>
__device__ __forceinline__ void load_tile(uint16_t* tile, const T* head, int first, int rows, int64_t row_stride) {
    // TILE_ROWS rows × 8 chunks of 16 bytes, spread over the block's threads.
    for (int c = threadIdx.x; c < TILE_ROWS * (HEAD_DIM / 8); c += WARPS * 32) {
        int row = c >> 3, chunk = c & 7;
        bool valid = first + row < rows;
        const T* source = head + (int64_t)(valid ? first + row : 0) * row_stride + chunk * 8;
        copy_16_bytes(tile + row * ROW_PITCH + chunk * 8, source, valid);
    }
}

template <typename T>
__device__ void flash_attention(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ out,
                                int heads, int q_len, int kv_len, float scale) {
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    Tiles& tiles = *reinterpret_cast<Tiles*>(shared_bytes);
    const int batch = blockIdx.y / heads, head = blockIdx.y % heads;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t row_stride = (int64_t)heads * HEAD_DIM;
    const T* q_head = q + ((int64_t)batch * q_len * heads + head) * HEAD_DIM;
    const T* k_head = k + ((int64_t)batch * kv_len * heads + head) * HEAD_DIM;
    const T* v_head = v + ((int64_t)batch * kv_len * heads + head) * HEAD_DIM;
    const int first_query = blockIdx.x * BLOCK_M;

    load_tile<BLOCK_M>(tiles.q, q_head, first_query, q_len, row_stride);
    load_tile<BLOCK_N>(tiles.k[0], k_head, 0, kv_len, row_stride);
    load_tile<BLOCK_N>(tiles.v[0], v_head, 0, kv_len, row_stride);
    copy_commit();
    copy_wait<0>();
    __syncthreads();

    // This warp's query rows as A fragments: [16-row tile][16-wide slice of the head dim].
    uint32_t q_fragments[M_TILES][4][4];
    #pragma unroll
    for (int m = 0; m < M_TILES; ++m)
        #pragma unroll
        for (int slice = 0; slice < 4; ++slice) {
            const uint16_t* source = tiles.q + ((warp * M_TILES + m) * 16 + (lane & 15)) * ROW_PITCH + slice * 16 + (lane >> 4) * 8;
            ldmatrix_x4(q_fragments[m][slice], source);
        }

    float accumulator[M_TILES][8][4];  // O per row tile: 16 rows × 64 dims; [dim tile][c0..c3]
    #pragma unroll
    for (int m = 0; m < M_TILES; ++m)
        #pragma unroll
        for (int i = 0; i < 8; ++i)
            #pragma unroll
            for (int j = 0; j < 4; ++j) accumulator[m][i][j] = 0.f;
    // Per row tile, rows lane/4 and lane/4 + 8: running max (log2 domain) and this thread's share of the sum.
    float row_max[M_TILES][2], row_sum[M_TILES][2];
    #pragma unroll
    for (int m = 0; m < M_TILES; ++m)
        #pragma unroll
        for (int r = 0; r < 2; ++r) {
            row_max[m][r] = -INFINITY;
            row_sum[m][r] = 0.f;
        }
    const float scale_log2 = scale * 1.4426950408889634f;

    const int tiles_count = (kv_len + BLOCK_N - 1) / BLOCK_N;
    for (int tile = 0; tile < tiles_count; ++tile) {
        const int stage = tile & 1;
        if (tile + 1 < tiles_count) {
            load_tile<BLOCK_N>(tiles.k[stage ^ 1], k_head, (tile + 1) * BLOCK_N, kv_len, row_stride);
            load_tile<BLOCK_N>(tiles.v[stage ^ 1], v_head, (tile + 1) * BLOCK_N, kv_len, row_stride);
            copy_commit();
            copy_wait<1>();
        } else {
            copy_wait<0>();
        }
        __syncthreads();

        // S = Q Kᵀ for each row tile × 64 keys (8 key tiles of 8); each K fragment feeds M_TILES products.
        float scores[M_TILES][8][4];
        #pragma unroll
        for (int key_tile = 0; key_tile < 8; ++key_tile) {
            #pragma unroll
            for (int m = 0; m < M_TILES; ++m)
                #pragma unroll
                for (int j = 0; j < 4; ++j) scores[m][key_tile][j] = 0.f;
            #pragma unroll
            for (int slice_pair = 0; slice_pair < 2; ++slice_pair) {
                uint32_t b[4];
                const uint16_t* source = tiles.k[stage] + (key_tile * 8 + (lane & 7)) * ROW_PITCH + slice_pair * 32 + (lane >> 3) * 8;
                ldmatrix_x4(b, source);
                #pragma unroll
                for (int m = 0; m < M_TILES; ++m) {
                    mma<T>(scores[m][key_tile], q_fragments[m][2 * slice_pair], b[0], b[1]);
                    mma<T>(scores[m][key_tile], q_fragments[m][2 * slice_pair + 1], b[2], b[3]);
                }
            }
        }
        // Keys past the end (only in the last tile) get −inf.
        const int first_key = tile * BLOCK_N;
        if (first_key + BLOCK_N > kv_len) {
            #pragma unroll
            for (int m = 0; m < M_TILES; ++m)
                #pragma unroll
                for (int key_tile = 0; key_tile < 8; ++key_tile)
                    #pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        int key = first_key + key_tile * 8 + (lane & 3) * 2 + (j & 1);
                        if (key >= kv_len) scores[m][key_tile][j] = -INFINITY;
                    }
        }
        #pragma unroll
        for (int m = 0; m < M_TILES; ++m) {
            // Online softmax: new running max per row, rescale what was accumulated so far.
            float tile_max[2] = {row_max[m][0], row_max[m][1]};
            #pragma unroll
            for (int key_tile = 0; key_tile < 8; ++key_tile) {
                tile_max[0] = fmaxf(tile_max[0], fmaxf(scores[m][key_tile][0], scores[m][key_tile][1]) * scale_log2);
                tile_max[1] = fmaxf(tile_max[1], fmaxf(scores[m][key_tile][2], scores[m][key_tile][3]) * scale_log2);
            }
            #pragma unroll
            for (int r = 0; r < 2; ++r) {
                tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
                tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
            }
            float rescale[2];
            #pragma unroll
            for (int r = 0; r < 2; ++r) {
                rescale[r] = exp2f(row_max[m][r] - tile_max[r]);  // row_max = −inf at the first tile: 0
                row_max[m][r] = tile_max[r];
                row_sum[m][r] *= rescale[r];
            }
            #pragma unroll
            for (int dim_tile = 0; dim_tile < 8; ++dim_tile) {
                accumulator[m][dim_tile][0] *= rescale[0];
                accumulator[m][dim_tile][1] *= rescale[0];
                accumulator[m][dim_tile][2] *= rescale[1];
                accumulator[m][dim_tile][3] *= rescale[1];
            }
            #pragma unroll
            for (int key_tile = 0; key_tile < 8; ++key_tile) {
                #pragma unroll
                for (int j = 0; j < 4; ++j) {
                    float p = exp2f(scores[m][key_tile][j] * scale_log2 - row_max[m][j >> 1]);
                    scores[m][key_tile][j] = p;
                    row_sum[m][j >> 1] += p;
                }
            }
        }
        // O += P V: P's accumulator layout is the A operand's, 16 keys per product; each V
        // fragment feeds M_TILES products.
        #pragma unroll
        for (int key_slice = 0; key_slice < 4; ++key_slice) {
            uint32_t p_fragment[M_TILES][4];
            #pragma unroll
            for (int m = 0; m < M_TILES; ++m) {
                p_fragment[m][0] = pack<T>(scores[m][2 * key_slice][0], scores[m][2 * key_slice][1]);
                p_fragment[m][1] = pack<T>(scores[m][2 * key_slice][2], scores[m][2 * key_slice][3]);
                p_fragment[m][2] = pack<T>(scores[m][2 * key_slice + 1][0], scores[m][2 * key_slice + 1][1]);
                p_fragment[m][3] = pack<T>(scores[m][2 * key_slice + 1][2], scores[m][2 * key_slice + 1][3]);
            }
            #pragma unroll
            for (int dim_pair = 0; dim_pair < 4; ++dim_pair) {
                uint32_t b[4];
                const uint16_t* source =
                    tiles.v[stage] + (key_slice * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * ROW_PITCH + dim_pair * 16 + (lane >> 4) * 8;
                ldmatrix_x4_trans(b, source);
                #pragma unroll
                for (int m = 0; m < M_TILES; ++m) {
                    mma<T>(accumulator[m][2 * dim_pair], p_fragment[m], b[0], b[1]);
                    mma<T>(accumulator[m][2 * dim_pair + 1], p_fragment[m], b[2], b[3]);
                }
            }
        }
        __syncthreads();  // the next iteration's copies overwrite this stage
    }

    #pragma unroll
    for (int m = 0; m < M_TILES; ++m)
        #pragma unroll
        for (int r = 0; r < 2; ++r) {
            row_sum[m][r] += __shfl_xor_sync(0xffffffffu, row_sum[m][r], 1);
            row_sum[m][r] += __shfl_xor_sync(0xffffffffu, row_sum[m][r], 2);
        }
    #pragma unroll
    for (int m = 0; m < M_TILES; ++m)
        #pragma unroll
        for (int r = 0; r < 2; ++r) {
            int query = first_query + (warp * M_TILES + m) * 16 + (lane >> 2) + r * 8;
            if (query >= q_len) continue;
            float inverse = 1.f / row_sum[m][r];
            T* destination = out + (((int64_t)batch * q_len + query) * heads + head) * HEAD_DIM + (lane & 3) * 2;
            #pragma unroll
            for (int dim_tile = 0; dim_tile < 8; ++dim_tile) {
                uint32_t packed = pack<T>(accumulator[m][dim_tile][2 * r] * inverse, accumulator[m][dim_tile][2 * r + 1] * inverse);
                *reinterpret_cast<uint32_t*>(destination + dim_tile * 8) = packed;
            }
        }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(128) flash_attention_f16(const __half* q, const __half* k, const __half* v, __half* out,
                                                                     int heads, int q_len, int kv_len, float scale) {
    flash_attention<__half>(q, k, v, out, heads, q_len, kv_len, scale);
}

extern "C" __global__ void __launch_bounds__(128) flash_attention_bf16(const __nv_bfloat16* q, const __nv_bfloat16* k,
                                                                      const __nv_bfloat16* v, __nv_bfloat16* out, int heads,
                                                                      int q_len, int kv_len, float scale) {
    flash_attention<__nv_bfloat16>(q, k, v, out, heads, q_len, kv_len, scale);
}
