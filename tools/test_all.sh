#!/usr/bin/env bash
# The project's one test command (README's quick start, .ci/run):
#   1. cargo test            every Rust unit and integration test (dev profile: opt-level 1, deps at 3)
#   2. include/sdxl.h        regenerated with cbindgen; fails if it differs from the committed header
#   3. tests/c/run.sh        the header compiled on its own as C and C++, the C programs under valgrind
#   4. .NET tests            with Mono, when mcs and mono are installed (SDXL_SKIP_DOTNET=1 skips them)
# Needs: cargo, gcc, g++, valgrind and cbindgen at the version cbindgen.toml names
# (cargo install cbindgen --version <it> --locked; .ci/run does all of this).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

echo "==== cargo test"
cargo test

echo "==== include/sdxl.h is what cbindgen generates"
cbindgen_version="$(sed -n 's/^# cbindgen-version: *//p' cbindgen.toml)"
if [[ "$(cbindgen --version 2>/dev/null || true)" != "cbindgen $cbindgen_version" ]]; then
    echo "test_all: need cbindgen $cbindgen_version (found: $(cbindgen --version 2>/dev/null || echo none)):" \
        "cargo install cbindgen --version $cbindgen_version --locked" >&2
    exit 1
fi
committed="$(mktemp)"
trap 'rm -f "$committed"' EXIT
cp include/sdxl.h "$committed"
cbindgen --quiet --config cbindgen.toml --output include/sdxl.h src/ffi/mod.rs
if git rev-parse --is-inside-work-tree >/dev/null 2>&1 && git ls-files --error-unmatch include/sdxl.h >/dev/null 2>&1; then
    git diff --exit-code -- include/ || {
        echo "test_all: include/sdxl.h was stale; it is regenerated now: review and commit it" >&2
        exit 1
    }
fi
diff -u "$committed" include/sdxl.h || {
    echo "test_all: include/sdxl.h was stale; it is regenerated now: review and commit it" >&2
    exit 1
}

echo "==== C tests (tests/c/run.sh)"
tests/c/run.sh

# ---- .NET (Mono) -------------------------------------------------------------
if [[ "${SDXL_SKIP_DOTNET:-0}" != 1 ]] && command -v mcs >/dev/null 2>&1 && command -v mono >/dev/null 2>&1; then
    echo "==== .NET tests (tools/dotnet_test.sh)"
    SDXL_NO_CARGO=1 tools/dotnet_test.sh
else
    echo "==== .NET tests skipped (no mcs/mono; CI installs them)"
fi
# ------------------------------------------------------------------------------

echo "==== all tests passed"
