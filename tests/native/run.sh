#!/usr/bin/env bash
# Native kernel tests, no Python: every compiled SIMD variant against its reference (test_kernels_native.cpp).
#   1. x86-64 (AVX2 / AVX-512 where the CPU has them) with AddressSanitizer + UndefinedBehaviorSanitizer, then
#      with ThreadSanitizer;
#   2. AArch64 NEON with the dot-product extension, cross-compiled and run under qemu-user.
# Needs g++; for step 2: g++-aarch64-linux-gnu and qemu-user (apt-get install -y g++-aarch64-linux-gnu qemu-user).
# Usage: tests/native/run.sh [x86|arm64|all]  (default all; arm64 is skipped with a note if the tools are missing)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${NATIVE_BUILD_DIR:-$root/build/native}
mkdir -p "$out"
which=${1:-all}

# Every kernel source except the Python bindings.
srcs=()
for f in "$root"/kernels/*.cpp; do
  case $(basename "$f") in module.cpp|*_py.cpp) ;; *) srcs+=("$f") ;; esac
done
flags=(-std=c++17 -I"$root/kernels" -Wall -Wextra -Wno-maybe-uninitialized -Wno-uninitialized)

if [[ $which == all || $which == x86 ]]; then
  echo "== x86-64, ASan + UBSan"
  g++ "${flags[@]}" -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined \
    "$root/tests/native/test_kernels_native.cpp" "${srcs[@]}" -pthread -o "$out/test_kernels_x86_asan"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 "$out/test_kernels_x86_asan"
  # The thread pool's claims and hand-offs (test_parallel_for) under ThreadSanitizer.
  echo "== x86-64, ThreadSanitizer"
  g++ "${flags[@]}" -O1 -g -fsanitize=thread "$root/tests/native/test_kernels_native.cpp" "${srcs[@]}" -pthread \
    -o "$out/test_kernels_x86_tsan"
  TSAN_OPTIONS=halt_on_error=1 "$out/test_kernels_x86_tsan"
fi

if [[ $which == all || $which == arm64 ]]; then
  if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
    echo "== AArch64: skipped (install g++-aarch64-linux-gnu and qemu-user)"
    [[ $which == arm64 ]] && exit 1 || exit 0
  fi
  echo "== AArch64 (armv8.2-a+dotprod) under qemu-user"
  aarch64-linux-gnu-g++ "${flags[@]}" -O2 -march=armv8.2-a+dotprod \
    "$root/tests/native/test_kernels_native.cpp" "${srcs[@]}" -pthread -o "$out/test_kernels_arm64"
  qemu-aarch64 -L /usr/aarch64-linux-gnu "$out/test_kernels_arm64"
  # The kernels carry their own target attributes: a plain armv8-a build must compile and pass too.
  echo "== AArch64 (armv8-a baseline; NEON kernels enabled at run time) under qemu-user"
  aarch64-linux-gnu-g++ "${flags[@]}" -O2 \
    "$root/tests/native/test_kernels_native.cpp" "${srcs[@]}" -pthread -o "$out/test_kernels_arm64_base"
  qemu-aarch64 -L /usr/aarch64-linux-gnu "$out/test_kernels_arm64_base"
fi
