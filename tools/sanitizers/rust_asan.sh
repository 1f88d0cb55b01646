#!/usr/bin/env bash
# A Rust test subset compiled with AddressSanitizer (nightly Rust, -Zsanitizer=address): the
# C ABI, hostile inputs, faults, the fuzz regressions and the engine runtime. The standard
# library is not rebuilt (no -Zbuild-std), so its own code is not instrumented; everything of
# ours and every crate we use is. About 15 minutes cold on 2 cores: run by hand, results in
# docs/RELIABILITY.md. Target dir: target/asan.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
export RUSTFLAGS="-Zsanitizer=address -Cforce-frame-pointers=yes"
export RUSTDOCFLAGS="$RUSTFLAGS"
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1"
export CUDAFORGE_THREADS=2
tests=(abi hostile_inputs faults fuzz_regressions engine_runtime)
args=()
for test in "${tests[@]}"; do args+=(--test "$test"); done
# The host triple must be explicit, or the sanitizer flags would reach build scripts too.
cargo +nightly test --target x86_64-unknown-linux-gnu --target-dir target/asan "${args[@]}" "$@"
