#!/usr/bin/env bash
# Builds and runs the .NET library's tests with Mono (installs nothing; CI installs
# mono-mcs and mono-runtime). Usage: tools/dotnet_test.sh [test-name-filter ...]
#   SDXL_NATIVE_LIBRARY=/path/libsdxl.so   the library under test (its folder also works). When set,
#                     nothing is built with cargo and no debug build is needed; the tests find the
#                     library through this variable, as an application would.
#   (unset)           target/debug/libsdxl.so, built first with `cargo build --lib`
#   SDXL_NO_CARGO=1   use target/debug/libsdxl.so as it is (no cargo build)
#   SDXL_SKIP_E2E=1   skip the tests that run the real library
#   tools/dotnet_test.sh --print-library   prints the library the tests would use and exits
#                     (builds nothing, needs neither cargo nor Mono)
# The last line printed is "N passed, N failed".
# Exit code: the number of failed tests (or 1..2 when building fails).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="target/dotnet"

if [[ -n "${SDXL_NATIVE_LIBRARY:-}" ]]; then
    library="$SDXL_NATIVE_LIBRARY"
    if [[ -d "$library" ]]; then
        library="${library%/}/libsdxl.so"
    fi
    if [[ ! -f "$library" ]]; then
        echo "dotnet_test: SDXL_NATIVE_LIBRARY=$SDXL_NATIVE_LIBRARY: no library at $library" >&2
        exit 2
    fi
    library="$(cd "$(dirname "$library")" && pwd)/$(basename "$library")"
    build_native=0
else
    library="$root/target/debug/libsdxl.so"
    if [[ "${SDXL_NO_CARGO:-0}" == 1 ]]; then build_native=0; else build_native=1; fi
fi

if [[ "${1:-}" == "--print-library" ]]; then
    echo "$library"
    exit 0
fi

for tool in mcs mono; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "dotnet_test: '$tool' not found (apt-get install -y mono-mcs mono-runtime)" >&2
        exit 2
    fi
done

if [[ "$build_native" == 1 ]]; then
    # A no-op when the library is up to date.
    cargo build --lib
elif [[ ! -f "$library" ]]; then
    echo "dotnet_test: $library missing (run cargo build --lib, or set SDXL_NATIVE_LIBRARY)" >&2
    exit 2
fi

mkdir -p "$out"
# C# 7.2 (what the .NET 8 SDK build of dotnet/src/DeviceOperations.Sdxl.csproj also uses).
mcs -langversion:7.2 -warnaserror+ -nologo -target:library -out:"$out/DeviceOperations.Sdxl.dll" \
    -r:System.dll -r:System.Core.dll \
    bindings/csharp/*.cs dotnet/src/*.cs
mcs -langversion:7.2 -warnaserror+ -nologo -target:exe -out:"$out/tests.exe" \
    -r:"$out/DeviceOperations.Sdxl.dll" -r:System.dll -r:System.Core.dll -r:System.Xml.dll \
    dotnet/tests/*.cs

set +e
SDXL_REPO_ROOT="$root" SDXL_NATIVE_LIBRARY="$library" \
    mono --debug "$out/tests.exe" "$@"
failures=$?
set -e
exit "$failures"
