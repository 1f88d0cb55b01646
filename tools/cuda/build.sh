#!/usr/bin/env bash
# Release build with CUDA for the GPU machine (H100: compute capability 9.0), then stages
# what the device needs under .dev/gpu/ (gzip gpu_bench into .dev/ship/ and carry that: see
# tools/bench/run_on_device.sh).
# Default features: cudnn (= cuda + our cuDNN convolutions, docs/PERFORMANCE.md run h: 5x faster
# UNet step than without). SDXL_NO_CUDNN=1 builds plain `cuda` (candle's im2col convolutions,
# no cuDNN needed at run time). The cuDNN wheel is ~900 MB unpacked, fetched once by env.sh.
# A cold build takes ~20 minutes on 2 cores (candle's kernels); later builds are incremental.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$REPO/tools/cuda/env.sh"
set -euo pipefail
cd "$REPO"
FEATURES=cudnn
[ -n "${SDXL_NO_CUDNN:-}" ] && FEATURES=cuda
start=$(date +%s)
# First pass builds every rlib (the executables may fail to link before the stub exists);
# the same target selection both times, so dependency features never change between passes.
cargo build --release --features "$FEATURES" --lib --bin sdxl --example gpu_bench || true
# Executables must resolve every CUDA driver symbol at link time: give the libcuda stub
# (soname libcuda.so.1, replaced by the real driver on the GPU machine) all that cudarc uses.
stubs="$CUDA_HOME/../../stubs"
# (nm fails on a glob that matched nothing: the list is what it could read.)
symbols=$( (nm "$CARGO_TARGET_DIR"/release/deps/libcudarc-*.rlib "$CARGO_TARGET_DIR"/release/deps/libsdxl-*.rlib 2>/dev/null || true) | awk '/ U cu[A-Z]/ {print $2}' | sort -u)
printf 'void %s(void) {}\n' $symbols | gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" -x c -
cargo build --release --features "$FEATURES" --lib --bin sdxl --example gpu_bench
echo "cuda build took $(( $(date +%s) - start )) s"
mkdir -p .dev/gpu
cp "$CARGO_TARGET_DIR/release/sdxl" "$CARGO_TARGET_DIR/release/libsdxl.so" "$CARGO_TARGET_DIR/release/examples/gpu_bench" .dev/gpu/
strip .dev/gpu/sdxl .dev/gpu/gpu_bench .dev/gpu/libsdxl.so 2>/dev/null || true
du -sh .dev/gpu
