#!/usr/bin/env bash
# The project's one test command (README's quick start, .ci/run):
#   1. cargo test            every Rust unit and integration test (dev profile: opt-level 1, deps at 3)
#   2. include/sdxl.h        regenerated with cbindgen; fails if it differs from the committed header
#   3. tests/c/run.sh        the header compiled on its own as C and C++, the C programs under valgrind
#   4. .NET tests            with Mono, when mcs and mono are installed (SDXL_SKIP_DOTNET=1 skips them)
#   5. fuzz smoke            every fuzz target 20 s under libFuzzer + ASan (tools/fuzz/run.sh smoke;
#                            installs nightly Rust and cargo-fuzz through rustup when missing, builds
#                            the fuzzers: ~10 min cold; SDXL_NO_FUZZ=1 skips it)
# Needs: cargo, gcc and g++ (checked first, before anything is built). cbindgen, at the version
# cbindgen.toml names, is installed into target/tools/ when it is not on PATH. Without valgrind
# the C programs run without it (said so below); without Mono the .NET tests are skipped.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

echo "==== tools"
missing=()
for tool in cargo gcc g++; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if (( ${#missing[@]} )); then
    echo "test_all: missing ${missing[*]}: install them first (Debian/Ubuntu: apt-get install -y gcc g++; Rust from rustup.rs)" >&2
    exit 1
fi
command -v valgrind >/dev/null 2>&1 || echo "test_all: valgrind not found: the C programs will run without it (apt-get install -y valgrind to check memory errors too)"
cbindgen_version="$(sed -n 's/^# cbindgen-version: *//p' cbindgen.toml)"
cbindgen=cbindgen
if [[ "$(cbindgen --version 2>/dev/null || true)" != "cbindgen $cbindgen_version" ]]; then
    cbindgen="$root/target/tools/bin/cbindgen"
    if [[ "$("$cbindgen" --version 2>/dev/null || true)" != "cbindgen $cbindgen_version" ]]; then
        echo "test_all: installing cbindgen $cbindgen_version into target/tools (once; about 2 minutes)"
        cargo install cbindgen --version "$cbindgen_version" --locked --root "$root/target/tools"
    fi
fi
"$cbindgen" --version

echo "==== cargo test"
cargo test

echo "==== include/sdxl.h is what cbindgen generates"
committed="$(mktemp)"
trap 'rm -f "$committed"' EXIT
cp include/sdxl.h "$committed"
"$cbindgen" --quiet --config cbindgen.toml --output include/sdxl.h src/ffi/mod.rs
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

if [[ "${SDXL_NO_FUZZ:-0}" != 1 ]] && command -v rustup >/dev/null 2>&1; then
    echo "==== fuzz smoke (tools/fuzz/run.sh smoke 20)"
    tools/fuzz/run.sh build
    tools/fuzz/run.sh smoke 20
else
    echo "==== fuzz smoke skipped (SDXL_NO_FUZZ=1, or no rustup to install nightly Rust with)"
fi

echo "==== all tests passed"
