#!/usr/bin/env bash
# Runs on the GPU machine (through the device tool), from the repo root, after
# tools/cuda/build.sh staged .dev/gpu/ (gzip it to .dev/ship/gpu_bench.gz) and the
# diffusers wheel sits in .dev/whl/; carry [".dev/ship", ".dev/whl"].
#   run_on_device.sh bench     GPU parity on the tiny fixtures + our bench + diffusers' bench
#   run_on_device.sh compare   full-size parity with diffusers on the same random weights
#   run_on_device.sh oom       admission refusal, real CUDA out-of-memory and recovery
#   run_on_device.sh offload   1024² with and without precision.cpu_offload: peak memory, times, same image
#   run_on_device.sh kernels   each fused CUDA kernel / the cuDNN convolution against candle's plain path
#   run_on_device.sh profile   one UNet step and one VAE decode by kind of op, fused kernels on and off
#   run_on_device.sh large     refiner 1024² ensemble; 2048² with the VAE whole, tiled and auto under a budget
#   run_on_device.sh parity    only the GPU parity on the tiny fixtures (base cases, refiner, tiled decode)
# Results go to $OUT (JSON lines), one file per part.
set -uo pipefail
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cudnn/lib:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
export SDXL_FIXTURES="$PWD/tests/fixtures"
PY=/opt/torch/.venv/bin/python3
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
"$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .dev/whl/*.whl && export PYTHONPATH=/tmp/site
# The bench binary travels gzipped (candle embeds every kernel's PTX: 56 MB raw, 15 MB packed).
mkdir -p .dev/gpu
[ -x .dev/gpu/gpu_bench ] || { gunzip -c .dev/ship/gpu_bench.gz > .dev/gpu/gpu_bench && chmod +x .dev/gpu/gpu_bench; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"

sample_memory() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$1" & echo $!; }

case "${1:-bench}" in
bench)
    .dev/gpu/gpu_bench parity > "$OUT/parity.jsonl" 2> "$OUT/parity.err"; echo "parity rc=$?"
    sampler=$(sample_memory "$OUT/mem_ours.csv")
    .dev/gpu/gpu_bench bench 30 > "$OUT/bench_ours.jsonl" 2> "$OUT/bench_ours.err"; echo "ours rc=$?"
    kill "$sampler"
    sampler=$(sample_memory "$OUT/mem_diffusers.csv")
    "$PY" tools/bench/diffusers_bench.py bench 30 > "$OUT/bench_diffusers.jsonl" 2> "$OUT/bench_diffusers.err"; echo "diffusers rc=$?"
    kill "$sampler"
    for f in mem_ours mem_diffusers; do echo "$f peak MiB: $(sort -n "$OUT/$f.csv" | tail -1)"; done
    ;;
compare)
    "$PY" tools/bench/diffusers_bench.py make-reference /tmp/sdxl-random > "$OUT/reference.jsonl" 2> "$OUT/reference.err"; echo "reference rc=$?"
    .dev/gpu/gpu_bench compare /tmp/sdxl-random > "$OUT/compare.jsonl" 2> "$OUT/compare.err"; echo "compare rc=$?"
    ;;
offload)
    for placement in off on; do
        sampler=$(sample_memory "$OUT/mem_offload_$placement.csv")
        .dev/gpu/gpu_bench offload $placement > "$OUT/offload_$placement.jsonl" 2> "$OUT/offload_$placement.err"; echo "offload $placement rc=$?"
        kill "$sampler"
        echo "offload $placement nvidia-smi peak MiB: $(sort -n "$OUT/mem_offload_$placement.csv" | tail -1)"
    done
    /opt/torch/.venv/bin/python3 -c "
import numpy as np, PIL.Image as I, glob
# Files are <request_id>_<index>_<seed>.png: pair them by seed.
by_seed = lambda d: {p.rsplit('_', 1)[-1]: p for p in glob.glob(d + '/*')}
for model in ('tiny-', ''):
    a, b = by_seed('/tmp/sdxl-offload/' + model + 'resident'), by_seed('/tmp/sdxl-offload/' + model + 'offloaded')
    for x, y in ((a[k], b[k]) for k in sorted(a) if k in b):
        d = np.abs(np.asarray(I.open(x)).astype(int) - np.asarray(I.open(y)).astype(int))
        print(model or 'sdxl-random (different random weights: not comparable) ', 'resident vs offloaded', x.split('/')[-1], 'uint8 max diff', d.max())
" | tee "$OUT/offload_images.txt"
    ;;
large)
    sampler=$(sample_memory "$OUT/mem_large.csv")
    .dev/gpu/gpu_bench large > "$OUT/large.jsonl" 2> "$OUT/large.err"; echo "large rc=$?"
    kill "$sampler"
    echo "large nvidia-smi peak MiB: $(sort -n "$OUT/mem_large.csv" | tail -1)"
    ;;
parity)
    .dev/gpu/gpu_bench parity > "$OUT/parity.jsonl" 2> "$OUT/parity.err"; echo "parity rc=$?"
    ;;
kernels)
    .dev/gpu/gpu_bench kernels > "$OUT/kernels.jsonl" 2> "$OUT/kernels.err"; echo "kernels rc=$?"
    ;;
profile)
    .dev/gpu/gpu_bench profile > "$OUT/profile.jsonl" 2> "$OUT/profile.err"; echo "profile rc=$?"
    ;;
oom)
    sampler=$(sample_memory "$OUT/mem_oom.csv")
    .dev/gpu/gpu_bench oom > "$OUT/oom.jsonl" 2> "$OUT/oom.err"; echo "oom rc=$?"
    kill "$sampler"
    ;;
esac
tail -n 3 "$OUT"/*.err 2>/dev/null
cat "$OUT"/*.jsonl
