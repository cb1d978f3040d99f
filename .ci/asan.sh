#!/usr/bin/env bash
# The Python test suite against an AddressSanitizer + UBSan build of the kernels extension.
# Usage: .ci/asan.sh [tests/FILE.py ...] [-- pytest args]   (inside the venv that has the dev extras)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${ASAN_BUILD_DIR:-$root/build/asan}
stage=$build/stage

cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLLAVA_EDGE_SANITIZE=ON \
  -DPython_EXECUTABLE="$(command -v python)" -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" >/dev/null
cmake --build "$build" -j2 >/dev/null

# A copy of the package with the sanitized extension, imported instead of the installed one.
rm -rf "$stage" && mkdir -p "$stage"
cp -r "$root/llava_edge" "$stage/"
find "$stage/llava_edge" -name '_kernels*.so' -delete
cp "$build"/_kernels*.so "$stage/llava_edge/"

export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
# Python itself leaks by design at exit; halt on any memory error or undefined behaviour.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export PYTHONPATH="$stage"
cd "$stage"
python -c "import llava_edge, llava_edge._kernels as k; assert llava_edge.__file__.startswith('$stage'), llava_edge.__file__"
args=()
for a in "$@"; do [[ $a == tests/* ]] && args+=("$root/$a") || args+=("$a"); done
[ ${#args[@]} -gt 0 ] || args=("$root/tests")
python -m pytest -q -p no:cacheprovider "${args[@]}"
