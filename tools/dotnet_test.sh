#!/usr/bin/env bash
# Builds and runs the .NET library's tests with Mono (installs nothing; CI installs
# mono-mcs and mono-runtime). Usage: tools/dotnet_test.sh [test-name-filter ...]
#   SDXL_NO_CARGO=1   use target/debug/libsdxl.so as it is (no cargo build)
#   SDXL_SKIP_E2E=1   skip the tests that run the real library
#   SDXL_NATIVE_LIBRARY=/path/libsdxl.so   the library under test (default target/debug/libsdxl.so);
#                     the tests find it through this override, as an application would
# The last line printed is "N passed, N failed".
# Exit code: the number of failed tests (or 1..2 when building fails).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="target/dotnet"

for tool in mcs mono; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "dotnet_test: '$tool' not found (apt-get install -y mono-mcs mono-runtime)" >&2
        exit 2
    fi
done

if [[ "${SDXL_NO_CARGO:-0}" != 1 ]]; then
    # A no-op when the library is up to date.
    cargo build --lib
elif [[ ! -f target/debug/libsdxl.so ]]; then
    echo "dotnet_test: target/debug/libsdxl.so missing (run cargo build --lib)" >&2
    exit 2
fi

mkdir -p "$out"
# C# 7.2 (what the .NET 8 SDK build of dotnet/src/DeviceOperations.Sdxl.csproj also uses).
mcs -langversion:7.2 -warnaserror+ -nologo -target:library -out:"$out/DeviceOperations.Sdxl.dll" \
    -r:System.dll -r:System.Core.dll \
    bindings/csharp/*.cs dotnet/src/*.cs
mcs -langversion:7.2 -warnaserror+ -nologo -target:exe -out:"$out/tests.exe" \
    -r:"$out/DeviceOperations.Sdxl.dll" -r:System.dll -r:System.Core.dll \
    dotnet/tests/*.cs

set +e
SDXL_REPO_ROOT="$root" SDXL_NATIVE_LIBRARY="${SDXL_NATIVE_LIBRARY:-$root/target/debug/libsdxl.so}" \
    mono --debug "$out/tests.exe" "$@"
failures=$?
set -e
exit "$failures"
