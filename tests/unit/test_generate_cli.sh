#!/usr/bin/env bash
# pdserve-generate from the outside: flags, batching, determinism, errors.
set -u
gen="$1"
model="${PDSERVE_MODEL:-}" # the default model, for the text-prompt checks
for v in $(env | grep -o '^PDSERVE_[A-Z_]*'); do unset "$v"; done
fails=0; passes=0
check() {
    local name="$1"; shift
    if "$@"; then echo "ok $name"; passes=$((passes + 1)); else echo "FAIL $name"; fails=$((fails + 1)); fi
}
d=(--load-format dummy --model-shape tiny --seed 4)

out=$("$gen" --help); rc=$?
check help_exits_0 test $rc -eq 0
check help_lists_sampling grep -q -- "--top-p" <<<"$out"

out=$("$gen" "${d[@]}" --prompt-ids 1,2,3 -n 5); rc=$?
check generates test $rc -eq 0
check short_n_sets_max_tokens grep -q "output 0 (5 tokens, length)" <<<"$out"

solo=$("$gen" "${d[@]}" --prompt-ids 9,8,7 -n 6 | grep "^output 0")
both=$("$gen" "${d[@]}" --prompt-ids 1,2 --prompt-ids 9,8,7 -n 6 | grep "^output 1")
check batch_equals_solo test "${solo#output 0}" = "${both#output 1}"

a=$("$gen" "${d[@]}" --prompt-ids 3,4 -n 12 --temperature 1 --sampling-seed 7 | grep ^output)
b=$("$gen" "${d[@]}" --prompt-ids 3,4 -n 12 --temperature 1 --sampling-seed 7 | grep ^output)
c=$("$gen" "${d[@]}" --prompt-ids 3,4 -n 12 --temperature 1 --sampling-seed 8 | grep ^output)
check same_seed_same_tokens test "$a" = "$b"
check other_seed_other_tokens test "$a" != "$c"

out=$("$gen" "${d[@]}" --prompt-ids 1 -n 3 --logprobs 2); rc=$?
check logprobs_lines test "$(grep -c 'logprob .* top: .* | ' <<<"$out")" -eq 3

err=$("$gen" "${d[@]}" --prompt-ids 1,zz 2>&1); rc=$?
check bad_ids_refused test $rc -eq 1
check bad_ids_named grep -q '"1,zz" is not a list of token ids' <<<"$err"
err=$("$gen" "${d[@]}" --prompt-ids 1,999 2>&1); rc=$?
check out_of_vocab_refused grep -q "token id 999 at position 1 is out of range" <<<"$err"
err=$("$gen" "${d[@]}" --prompt-ids 1 --top-p 0 2>&1); rc=$?
check bad_top_p_exits_2 test $rc -eq 2
err=$("$gen" "${d[@]}" 2>&1); rc=$?
check no_prompt_exits_2 test $rc -eq 2

err=$("$gen" "${d[@]}" --prompt hello 2>&1); rc=$?
check text_prompt_needs_tokenizer grep -q "needs a model with a tokenizer" <<<"$err"

# text in, text out, through the model's tokenizer and chat template
skipped=0
if [ -n "$model" ] && [ -f "$model" ]; then
    out=$("$gen" "$model" --chat --prompt "What is the capital of France?" -n 32); rc=$?
    check chat_prompt_exits_0 test $rc -eq 0
    check chat_prompt_answers grep -q "^output text: .*Paris" <<<"$out"
    check chat_stops_at_end_of_turn grep -q "tokens, stop)" <<<"$out"
    out=$("$gen" "$model" --prompt "def fibonacci(n):" -n 4 --ignore-eos); rc=$?
    check text_prompt_tokenized grep -q "^prompt text: def fibonacci(n):" <<<"$out"
else
    echo "skip text prompts: no default model (PDSERVE_MODEL)"; skipped=1
fi

echo "$passes passed, $fails failed, $skipped skipped"
[ "$fails" -eq 0 ] || exit 1
[ "$skipped" -eq 0 ] || exit 77
