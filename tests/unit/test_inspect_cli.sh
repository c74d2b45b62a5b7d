#!/usr/bin/env bash
# pdserve-inspect from the outside: flags, config sources, errors and exit codes.
set -u
inspect="$1"
# hermetic: no PDSERVE_* from the caller (tests/run.sh exports PDSERVE_MODEL)
for v in $(env | grep -o '^PDSERVE_[A-Z_]*'); do unset "$v"; done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0; passes=0

check() { # name, condition...
    local name="$1"; shift
    if "$@"; then echo "ok $name"; passes=$((passes + 1)); else echo "FAIL $name"; fails=$((fails + 1)); fi
}

out=$("$inspect" --help); rc=$?
check help_exits_0 test $rc -eq 0
check help_lists_presets grep -q "llama3-8b" <<<"$out"
check help_lists_env grep -q "PDSERVE_MODEL_SHAPE" <<<"$out"

err=$("$inspect" --no-such-flag 2>&1); rc=$?
check unknown_flag_exits_2 test $rc -eq 2
check unknown_flag_named grep -q -- "--no-such-flag" <<<"$err"

err=$("$inspect" --load-format dummy --model-shape nope 2>&1); rc=$?
check unknown_shape_exits_1 test $rc -eq 1
check unknown_shape_named grep -q 'unknown model shape "nope"' <<<"$err"

err=$("$inspect" --load-format sideways 2>&1); rc=$?
check bad_enum_lists_choices grep -q "auto|gguf|dummy" <<<"$err"

err=$("$inspect" "$tmp/missing.gguf" 2>&1); rc=$?
check missing_file_exits_1 test $rc -eq 1
check missing_file_named grep -q "missing.gguf" <<<"$err"

out=$("$inspect" --load-format dummy --model-shape tiny --seed 3); rc=$?
check dummy_tiny_exits_0 test $rc -eq 0
check dummy_tiny_arch grep -q "2 layers, width 64, ffn 128, 4 heads (2 kv, GQA 2), head dim 16" <<<"$out"
fp1=$(awk '/^fingerprint/ {print $2}' <<<"$out")
check fingerprint_is_64_hex grep -Eq '^[0-9a-f]{64}$' <<<"$fp1"

# the environment is a source below flags: PDSERVE_SEED changes the fingerprint, --seed wins
fp_env=$(PDSERVE_SEED=4 "$inspect" --load-format dummy --model-shape tiny | awk '/^fingerprint/ {print $2}')
fp_flag=$(PDSERVE_SEED=4 "$inspect" --load-format dummy --model-shape tiny --seed 3 | awk '/^fingerprint/ {print $2}')
check env_seed_changes_fingerprint test "$fp_env" != "$fp1"
check flag_beats_env test "$fp_flag" = "$fp1"

# a config file is a source too
printf '{"load-format": "dummy", "model-shape": "tiny", "seed": 3}\n' >"$tmp/c.json"
fp_cfg=$("$inspect" --config "$tmp/c.json" | awk '/^fingerprint/ {print $2}')
check config_file_applies test "$fp_cfg" = "$fp1"
out=$("$inspect" --config "$tmp/c.json" --print-config); rc=$?
check print_config_exits_0 test $rc -eq 0
check print_config_shows_merged grep -q '"model-shape":[[:space:]]*"tiny"' <<<"$out"

# the 8B shape is described without allocating its 16 GB
out=$("$inspect" --load-format dummy --model-shape llama3-8b); rc=$?
check llama3_8b_meta_only test $rc -eq 0
check llama3_8b_size grep -q "291 tensors, 14.96 GiB" <<<"$out"

# write a dummy model as GGUF, read it back as a file
out=$("$inspect" --load-format dummy --model-shape tiny-gqa3 --seed 5 --write-gguf "$tmp/t.gguf"); rc=$?
check write_gguf_exits_0 test $rc -eq 0
out2=$("$inspect" --tensors "$tmp/t.gguf"); rc=$?
check written_gguf_loads test $rc -eq 0
check written_gguf_same_arch test "$(grep ^architecture <<<"$out")" = "$(grep ^architecture <<<"$out2")"
check written_gguf_lists_tensors grep -q "blk.2.ffn_down.weight" <<<"$out2"

# the argument outranks $PDSERVE_MODEL (a lower source), so a stale variable cannot hijack it
out=$(PDSERVE_MODEL=/nonexistent.gguf "$inspect" "$tmp/t.gguf"); rc=$?
check argument_beats_env_model test $rc -eq 0

# a Hugging Face checkpoint directory (the test models; $2: the source tree)
hf="${2:-}/tests/golden/hf"
out=$("$inspect" "$hf/qwen3"); rc=$?
check checkpoint_exits_0 test $rc -eq 0
check checkpoint_says_so grep -q "(Hugging Face checkpoint, safetensors)" <<<"$out"
check checkpoint_arch grep -q "qwen3: 2 layers, width 128, ffn 384, 4 heads (2 kv, GQA 2), head dim 64" <<<"$out"
check checkpoint_qk_norm grep -q "and on each head of q and k" <<<"$out"
check checkpoint_f16 grep -q "F16 *25 tensors" <<<"$out"
out=$("$inspect" --tensors "$hf/mistral/"); rc=$?
check sharded_checkpoint_loads test $rc -eq 0
check sharded_checkpoint_tensors grep -q "blk.2.attn_q.weight" <<<"$out"
out=$("$inspect" "$hf/llama31" --write-gguf "$tmp/l.gguf"); rc=$?
check checkpoint_written_as_gguf test $rc -eq 0
out2=$("$inspect" "$tmp/l.gguf"); rc=$?
check checkpoint_gguf_has_factors grep -q "per-dimension factors, rotating adjacent pairs" <<<"$out2"
err=$("$inspect" --load-format safetensors "$tmp/l.gguf" 2>&1); rc=$?
check safetensors_format_needs_directory test $rc -eq 1
check safetensors_format_names_it grep -q "l.gguf" <<<"$err"

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
