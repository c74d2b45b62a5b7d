#!/usr/bin/env python3
"""Exhaustive check of the pre-tokenizer's Unicode classes: every code point
(U+0000..U+10FFFF but surrogates) in six probe strings that tell letters,
numbers, whitespace and the rest apart ("a{c}a", "1{c}1", "!{c}!", " {c}x",
"{c}{c} 1", "'{c}"), encoded by pdserve (PCRE2) and by transformers' tokenizer
for the same GGUF (Oniguruma), compared id for id. 6.7 M probes; about a
minute. Not part of the test suite (it needs transformers); run by hand with
the golden venv (see make_tokenizer_golden.py) after changing the regexes or
moving to another PCRE2:

    ~/.cache/pdserve/golden-venv/bin/python tests/golden/check_tokenizer_unicode.py \
        build/tests/bench/tokenizer_bench ~/.cache/pdserve/SmolLM2-135M-Instruct.Q4_1.gguf

Checks both pre-tokenizer modes (transformers' GGUF conversion, and the
declared "smollm" one against SmolLM2's own Digits + ByteLevel). Exit 1 and a
list of differing code points on any difference.
"""
import os
import struct
import subprocess
import sys
import tempfile

from tokenizers import Tokenizer, pre_tokenizers
from transformers import AutoTokenizer


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    bench, model = sys.argv[1], sys.argv[2]
    probes = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        probes += [f"a{c}a", f"1{c}1", f"!{c}!", f" {c}x", f"{c}{c} 1", f"'{c}"]
    d, name = os.path.split(os.path.abspath(model))
    hf = AutoTokenizer.from_pretrained(d, gguf_file=name).backend_tokenizer
    hf.encode_special_tokens = True
    decl = Tokenizer.from_str(hf.to_str())
    decl.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    decl.encode_special_tokens = True
    bad_total = 0
    with tempfile.TemporaryDirectory() as tmp:
        pin, pout = os.path.join(tmp, "probes.bin"), os.path.join(tmp, "ids.txt")
        with open(pin, "wb") as f:
            for p in probes:
                b = p.encode("utf-8")
                f.write(struct.pack("<I", len(b)) + b)
        for label, ref, flags in (("transformers GGUF", hf, []), ("declared smollm", decl,
                                                                    ["--declared-pre"])):
            subprocess.run([bench, model, "--ids-in", pin, "--ids-out", pout] + flags, check=True)
            with open(pout) as f:
                ours = f.read().split("\n")
            bad = []
            for k in range(0, len(probes), 50000):
                for j, e in enumerate(ref.encode_batch(probes[k:k + 50000], add_special_tokens=False)):
                    if " ".join(map(str, e.ids)) != ours[k + j]:
                        bad.append(k + j)
            cps = sorted({ord(probes[i][1]) for i in bad})
            print(f"{label}: {len(probes)} probes, {len(bad)} differ"
                  + (f" (code points {[hex(c) for c in cps[:40]]})" if bad else ""))
            bad_total += len(bad)
    sys.exit(1 if bad_total else 0)


if __name__ == "__main__":
    main()
