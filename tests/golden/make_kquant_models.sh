#!/usr/bin/env bash
# K-quant test models (Q4_K, Q6_K) for test_engine's engine_kquants_match_f32,
# which skips (77) without them: the gguf Python package cannot write these
# types, so llama.cpp's llama-quantize makes them (tests/bench/llama_cpp_build.sh
# builds it into the cache), outside CI's time budget. From the repo root:
#
#   tests/bench/llama_cpp_build.sh
#   tests/golden/make_kquant_models.sh [BUILD_DIR]     # -> ~/.cache/pdserve/kquant/
#
# A dummy shape whose widths are multiples of 256 (a k-quant super-block),
# written as f32 by pdserve-inspect, then quantized whole (--pure: every
# matrix, the embedding included) to each type.
set -euo pipefail
BUILD="${1:-build}"
CACHE="${PD_CACHE:-$HOME/.cache/pdserve}"
QUANTIZE="${PD_LLAMA_QUANTIZE:-$(ls -d "$CACHE"/llama.cpp-*/bin 2>/dev/null | tail -1)/llama-quantize}"
OUT="$CACHE/kquant"
[ -x "$QUANTIZE" ] || { echo "make_kquant_models: no llama-quantize (tests/bench/llama_cpp_build.sh)" >&2; exit 1; }
mkdir -p "$OUT"
"$BUILD/common/tools/pdserve-inspect" --load-format dummy --seed 7 \
    --model-shape '{"n_layer":2,"n_embd":256,"n_ff":512,"n_head":4,"n_head_kv":2,"n_vocab":1024,"tied_output":false}' \
    --write-gguf "$OUT/f32.gguf" >/dev/null
for t in Q4_K Q6_K; do
    "$QUANTIZE" --pure "$OUT/f32.gguf" "$OUT/$t.gguf.tmp" "$t" >/dev/null 2>&1
    mv "$OUT/$t.gguf.tmp" "$OUT/$t.gguf"
done
rm -f "$OUT/f32.gguf"
echo "k-quant models in $OUT: $(cd "$OUT" && ls)"
