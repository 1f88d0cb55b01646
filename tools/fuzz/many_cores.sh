#!/usr/bin/env bash
# Runs every fuzz target side by side from the packed all-targets binary (tools/fuzz/run.sh
# pack), one process per target, for SECONDS each; logs, final stats and any crash input go
# to OUT (default ./fuzz-out). Needs no Rust: the binary carries libFuzzer and ASan.
#   many_cores.sh SHIP_DIR SECONDS [OUT]
# FORKS="target=N ..." runs only those targets, each with N processes (libFuzzer's -fork=N,
# sharing one corpus), to give the slow targets the cores.
set -uo pipefail
ship="$1" seconds="$2" out="${3:-./fuzz-out}"
work="$(mktemp -d)"
gunzip -c "$ship/any.gz" > "$work/any" && chmod +x "$work/any"
tar -xzf "$ship/corpus.tar.gz" -C "$work"
# Inputs found by an earlier run continue from where it stopped.
if [ -f "$ship/corpus-work.tar.gz" ]; then tar -xzf "$ship/corpus-work.tar.gz" -C "$work"; fi
mkdir -p "$out"
targets=(request safetensors_file single_file_keys lora_file prompt image_decode controlnet_file vae_file pth_pickle png_metadata)
declare -A forks=()
if [ -n "${FORKS:-}" ]; then
    targets=()
    for entry in $FORKS; do targets+=("${entry%%=*}"); forks["${entry%%=*}"]="${entry#*=}"; done
fi
cd "$work"
for target in "${targets[@]}"; do
    fork=()
    if [ -n "${forks[$target]:-}" ]; then fork=(-fork="${forks[$target]}"); fi
    mkdir -p "fuzz/corpus-work/$target" "$out/artifacts/$target"
    # The tiny-sdxl fixture is found relative to the build's manifest dir: point it here.
    SDXL_FUZZ_TARGET="$target" SDXL_FUZZ_FIXTURES="$work/tests/fixtures" ./any "fuzz/corpus-work/$target" "fuzz/corpus/$target" \
        -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=30 -print_final_stats=1 -max_total_time="$seconds" \
        -artifact_prefix="$out/artifacts/$target/" "${fork[@]}" > "$out/$target.log" 2>&1 &
done
wait
# The grown corpora (hundreds of MB for the weight-file targets) come back only when asked.
if [ "${KEEP_CORPUS:-0}" = 1 ]; then tar -czf "$out/corpus-work.tar.gz" fuzz/corpus-work; fi
for target in "${targets[@]}"; do
    echo "== $target: $(grep -E '^#[0-9]+' "$out/$target.log" | tail -1)"
    ls "$out/artifacts/$target" | head -3
    grep -E 'stat::number_of_executed_units|ERROR|SUMMARY' "$out/$target.log" | head -5
done
