#!/usr/bin/env bash
# Build llama.cpp (the reference engine_bench compares with) from the PyPI
# llama-cpp-python sdist's vendor/llama.cpp, into a cache outside the repo.
# Nothing of llama.cpp is committed; this script only fetches and builds it.
#
#   tests/bench/llama_cpp_build.sh            # -> $PD_LLAMA_CPP (default below)
#   build/tests/bench/engine_bench --llama-cpp ~/.cache/pdserve/llama.cpp-0.3.36/bin MODEL.gguf
#
# Builds llama-bench, llama-batched-bench and llama-quantize (the last makes
# the k-quant test files: tests/golden/make_kquant_models.sh), CPU only,
# for this machine's instruction set (GGML_NATIVE), OpenMP threads as
# llama.cpp ships by default. Takes ~10 minutes on 2 cores.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${PD_CACHE:-$HOME/.cache/pdserve}"
OUT="${PD_LLAMA_CPP:-$CACHE/llama.cpp-$VERSION}"
PIP="${PIP:-python3 -m pip}"

if [ -x "$OUT/bin/llama-bench" ] && [ -x "$OUT/bin/llama-batched-bench" ] &&
    [ -x "$OUT/bin/llama-quantize" ]; then
    echo "llama.cpp already built in $OUT/bin"
    exit 0
fi
command -v cmake >/dev/null || { echo "llama_cpp_build: cmake is needed" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
$PIP download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$work"
tar -xzf "$work/llama_cpp_python-$VERSION.tar.gz" -C "$work"
src="$work/llama_cpp_python-$VERSION/vendor/llama.cpp"
[ -f "$src/CMakeLists.txt" ] || { echo "llama_cpp_build: no vendor/llama.cpp in the sdist" >&2; exit 1; }
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF \
    >"$work/cmake.log" || { cat "$work/cmake.log" >&2; exit 1; }
cmake --build "$work/build" -j"$(nproc)" --target llama-bench llama-batched-bench llama-quantize \
    >"$work/build.log" 2>&1 || { tail -50 "$work/build.log" >&2; exit 1; }
mkdir -p "$OUT/bin.tmp"
for t in llama-bench llama-batched-bench llama-quantize; do
    cp "$work/build/bin/$t" "$OUT/bin.tmp/"
done
echo "llama-cpp-python $VERSION sdist, vendor/llama.cpp" >"$OUT/bin.tmp/VERSION"
rm -rf "$OUT/bin" && mv "$OUT/bin.tmp" "$OUT/bin"
echo "llama.cpp built in $OUT/bin"
