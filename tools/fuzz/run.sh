#!/usr/bin/env bash
# Fuzzing with cargo-fuzz (libFuzzer + AddressSanitizer, nightly Rust). Targets: fuzz/fuzz_targets/.
#
#   tools/fuzz/run.sh build                 cargo +nightly fuzz build (installs cargo-fuzz if missing)
#   tools/fuzz/run.sh run TARGET [SECONDS]  one target, new inputs kept in fuzz/corpus-work/TARGET
#   tools/fuzz/run.sh smoke [SECONDS]       every target for SECONDS (default 30) each
#   tools/fuzz/run.sh pack                  the all-targets binary and the corpora, gzipped, in
#                                           .dev/fuzz-ship/ for a many-core machine (tools/fuzz/many_cores.sh)
#
# A crash leaves its input in fuzz/artifacts/TARGET/; copy it to fuzz/regressions/TARGET/ once
# fixed, where tests/fuzz_regressions.rs replays it on stable Rust in every `cargo test`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
targets=(request safetensors_file single_file_keys lora_file prompt image_decode controlnet_file vae_file pth_pickle png_metadata)
# The RSS limit is libFuzzer's "out of memory" finding: no input of these sizes justifies more.
flags=(-rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=30 -print_final_stats=1)

need_tools() {
    rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
    cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
}

run_target() {
    local target="$1" seconds="$2"
    mkdir -p "fuzz/corpus-work/$target" "fuzz/artifacts/$target"
    cargo +nightly fuzz run "$target" "fuzz/corpus-work/$target" "fuzz/corpus/$target" -- \
        "${flags[@]}" -max_total_time="$seconds" -artifact_prefix="fuzz/artifacts/$target/"
}

case "${1:-}" in
    build)
        need_tools
        CUDAFORGE_THREADS=2 cargo +nightly fuzz build
        ;;
    run)
        need_tools
        run_target "${2:?target}" "${3:-600}"
        ;;
    smoke)
        need_tools
        for target in "${targets[@]}"; do
            echo "== fuzz $target for ${2:-30} s"
            log="fuzz/artifacts/$target/smoke.log"
            mkdir -p "fuzz/artifacts/$target"
            if ! run_target "$target" "${2:-30}" > "$log" 2>&1; then
                tail -60 "$log" >&2
                echo "fuzz target $target failed: its input is in fuzz/artifacts/$target/, the whole log in $log" >&2
                exit 1
            fi
            grep -E '^#[0-9]+[[:space:]]+DONE' "$log" || tail -3 "$log"
        done
        ;;
    pack)
        binary="fuzz/target/x86_64-unknown-linux-gnu/release/any"
        test -x "$binary" || { echo "build first: tools/fuzz/run.sh build" >&2; exit 1; }
        mkdir -p .dev/fuzz-ship
        strip --strip-debug -o .dev/fuzz-ship/any "$binary"
        gzip -f .dev/fuzz-ship/any
        tar -czf .dev/fuzz-ship/corpus.tar.gz fuzz/corpus tests/fixtures/tiny-sdxl
        cp tools/fuzz/many_cores.sh .dev/fuzz-ship/
        ls -la .dev/fuzz-ship
        ;;
    *)
        sed -n '2,12p' "$0"
        exit 2
        ;;
esac
