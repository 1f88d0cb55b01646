#!/usr/bin/env bash
# Assembles a CUDA 13.0 toolkit from NVIDIA's PyPI wheels (no apt CUDA needed) and
# exports what candle's build needs. Source it: `source tools/cuda/env.sh`.
# The toolkit lands in $SDXL_CUDA_ROOT (default: <repo>/.dev/cuda), reused across builds.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ROOT="${SDXL_CUDA_ROOT:-$REPO/.dev/cuda}"
CUDA_VERSION_PIN="13.0"
if [ ! -x "$ROOT/nvidia/cu13/bin/nvcc" ]; then
    mkdir -p "$ROOT/wheels"
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        -d "$ROOT/wheels" \
        "nvidia-cuda-nvcc==${CUDA_VERSION_PIN}.*" "nvidia-cuda-crt==${CUDA_VERSION_PIN}.*" \
        "nvidia-nvvm==${CUDA_VERSION_PIN}.*" "nvidia-cuda-runtime==${CUDA_VERSION_PIN}.*" \
        "nvidia-cuda-cccl==${CUDA_VERSION_PIN}.*" \
        "nvidia-cuda-nvrtc==${CUDA_VERSION_PIN}.*" "nvidia-cublas==${CUDA_VERSION_PIN}.*" "nvidia-curand"
    for wheel in "$ROOT"/wheels/*.whl; do
        python3 -m zipfile -e "$wheel" "$ROOT"
    done
    chmod +x "$ROOT"/nvidia/cu13/bin/* "$ROOT"/nvidia/cu13/nvvm/bin/* 2>/dev/null || true
    # candle links cuBLAS, cuRAND and NVRTC (wheels above); libcuda comes from the driver,
    # so only a link-time stub is needed here; the GPU machine has the real one.
    mkdir -p "$ROOT/stubs"
    echo 'int cuInit(unsigned int flags) { (void)flags; return 0; }' \
        | gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$ROOT/stubs/libcuda.so" -x c -
    ln -sf libcuda.so "$ROOT/stubs/libcuda.so.1"
    # Wheels ship versioned runtime libraries only; the linker wants the unversioned names.
    # nullglob: without the cuDNN wheel its pattern matches nothing and must not become a path.
    shopt -s nullglob
    for lib in "$ROOT"/nvidia/cu13/lib/lib*.so.* "$ROOT"/nvidia/cudnn/lib/lib*.so.*; do
        base="${lib%%.so.*}.so"
        [ -e "$base" ] || ln -sf "$(basename "$lib")" "$base"
    done
    shopt -u nullglob
fi
# cuDNN (the default build's convolutions, see build.sh): its own wheel, also fetched into a
# toolkit assembled before cuDNN became the default. Skipped with SDXL_NO_CUDNN=1.
if [ -z "${SDXL_NO_CUDNN:-}" ] && [ ! -e "$ROOT/nvidia/cudnn/lib/libcudnn.so" ]; then
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        -d "$ROOT/wheels" "nvidia-cudnn-cu13==9.*"
    for wheel in "$ROOT"/wheels/nvidia_cudnn*.whl; do
        python3 -m zipfile -e "$wheel" "$ROOT"
    done
    for lib in "$ROOT"/nvidia/cudnn/lib/lib*.so.*; do
        base="${lib%%.so.*}.so"
        [ -e "$base" ] || ln -sf "$(basename "$lib")" "$base"
    done
fi
export CUDA_HOME="$ROOT/nvidia/cu13"
export CUDA_PATH="$CUDA_HOME"
export NVCC="$CUDA_HOME/bin/nvcc"
export PATH="$CUDA_HOME/bin:$PATH"
export CUDA_COMPUTE_CAP=90
export CUDARC_CUDA_VERSION=13000
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-2}"
export LIBRARY_PATH="$ROOT/stubs:$CUDA_HOME/lib:$ROOT/nvidia/cudnn/lib:${LIBRARY_PATH:-}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target/cuda}"
set +euo pipefail
