#!/usr/bin/env bash
# Builds libsdxl (debug), compiles include/sdxl.h on its own as C and C++, compiles the
# C tests with -Wall -Wextra -Werror and runs each under valgrind; any compiler warning,
# failed check, memory error or definite leak fails the script. cancel_request races a cancel
# against the next request: a few races under valgrind (memory), then 2000 without it (timing;
# SDXL_RACE_ITERATIONS changes the count). Then each program again, built with AddressSanitizer
# (gcc's libasan): the C side instrumented, every allocation of the process (the library's
# too) checked for double and invalid frees, and LeakSanitizer's leak check at exit.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
lib_dir="$target_dir/debug"
build_dir="$root/tests/c/build"
CC="${CC:-gcc}"
CXX="${CXX:-g++}"
warnings=(-Wall -Wextra -Werror)

for tool in "$CC" "$CXX"; do
    command -v "$tool" >/dev/null || { echo "tests/c/run.sh: $tool is missing (apt-get install -y gcc g++)" >&2; exit 1; }
done
# Without valgrind the programs still run (their own checks), but memory errors go unseen.
run_checked=(valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite
    --show-leak-kinds=definite --suppressions="$root/tests/c/valgrind.supp")
if ! command -v valgrind >/dev/null; then
    echo "tests/c/run.sh: valgrind is missing (apt-get install -y valgrind): running the programs without it"
    run_checked=()
fi

echo "== header is ASCII and compiles on its own"
if LC_ALL=C grep -n '[^[:print:][:space:]]' include/sdxl.h; then
    echo "include/sdxl.h has non-ASCII characters (MSVC reads them in the local code page)" >&2
    exit 1
fi
"$CC" -std=c99 -pedantic "${warnings[@]}" -fsyntax-only -x c include/sdxl.h
"$CC" -std=c11 "${warnings[@]}" -fsyntax-only -x c include/sdxl.h
"$CXX" -std=c++11 -pedantic "${warnings[@]}" -fsyntax-only -x c++ include/sdxl.h

echo "== cargo build --lib (debug: the debug_panic message exists only there)"
cargo build --lib --quiet
test -f "$lib_dir/libsdxl.so" || { echo "no $lib_dir/libsdxl.so" >&2; exit 1; }

mkdir -p "$build_dir"
programs=(bad_inputs generate refiner controlnet upscale cancel_request free_while_running)
for program in "${programs[@]}"; do
    echo "== compile tests/c/$program.c"
    "$CC" -std=c11 -g -pthread "${warnings[@]}" -I include -o "$build_dir/$program" "tests/c/$program.c" \
        -L "$lib_dir" -lsdxl -Wl,-rpath,"$lib_dir"
done

status=0
for program in "${programs[@]}"; do
    echo "== ${run_checked[0]:-run} tests/c/build/$program"
    # Under valgrind a request takes seconds: a handful of races checks the memory there.
    if ! SDXL_RACE_ITERATIONS=6 "${run_checked[@]}" "$build_dir/$program"; then
        echo "FAILED: $program" >&2
        status=1
    fi
done
# AddressSanitizer needs gcc's libasan (libgcc-*-dev, installed with gcc) and ptrace-free
# LeakSanitizer; SDXL_NO_ASAN=1 skips this pass.
if [ "${SDXL_NO_ASAN:-0}" != 1 ]; then
    for program in "${programs[@]}"; do
        echo "== AddressSanitizer tests/c/build/$program.asan"
        "$CC" -std=c11 -g -pthread -fsanitize=address -fno-omit-frame-pointer "${warnings[@]}" -I include \
            -o "$build_dir/$program.asan" "tests/c/$program.c" -L "$lib_dir" -lsdxl -Wl,-rpath,"$lib_dir"
        if ! SDXL_RACE_ITERATIONS=50 ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1 \
            LSAN_OPTIONS=suppressions="$root/tests/c/lsan.supp":print_suppressions=0 "$build_dir/$program.asan"; then
            echo "FAILED: $program under AddressSanitizer" >&2
            status=1
        fi
    done
fi
echo "== run tests/c/build/cancel_request (${SDXL_RACE_ITERATIONS:-2000} races at full speed)"
if ! SDXL_RACE_ITERATIONS="${SDXL_RACE_ITERATIONS:-2000}" "$build_dir/cancel_request"; then
    echo "FAILED: cancel_request (full speed)" >&2
    status=1
fi
if [ "$status" -eq 0 ]; then
    echo "tests/c: all programs passed${run_checked[0]:+ under valgrind}, and under AddressSanitizer unless SDXL_NO_ASAN=1"
fi
exit "$status"
