#!/usr/bin/env python3
"""Writes the seed corpora of fuzz_tok_encode and fuzz_tok_decode from the
tokenizer golden data (tests/golden/tokenizer_*.jsonl) plus ill-formed UTF-8.
Plain Python, no packages; run from the repo root:

    python3 tests/fuzz/make_tok_corpus.py

Input formats are described at the top of each target.
"""
import json
import os

ENC = "tests/fuzz/corpus/tok_encode"
DEC = "tests/fuzz/corpus/tok_decode"
PARSE_SPECIAL, ADD_BOS, NO_BOS, SPM = 1, 2, 4, 8

INVALID = [b"abc\x80def", b"\xe3\x81", b"x\xf0\x9f\x98", b"\xed\xa0\x80", b"\xe0\x80\xaf",
           b"\xff\xfe\xc0\xc1", b"ok \x80\x80 ok", b"\xf4\x90\x80\x80", b"\xc3\x28 \xa0\xa1",
           b"<|im_start|>\xffuser", b"1\xe2\x82 2"]


def lines(name):
    with open(f"tests/golden/{name}", encoding="utf-8") as f:
        return [json.loads(x) for x in f]


def main():
    for d in (ENC, DEC):
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):
            os.unlink(os.path.join(d, f))
    corpus = lines("tokenizer_corpus.jsonl")
    kinds = {}
    for i, r in enumerate(corpus):  # a few of each kind, both tokenizers
        k = r["kind"]
        if kinds.get(k, 0) >= 6 or not r["text"]:
            continue
        kinds[k] = kinds.get(k, 0) + 1
        text = bytes.fromhex(r["text_hex"]) if "text_hex" in r else r["text"].encode()
        ctl = [0, PARSE_SPECIAL, ADD_BOS | PARSE_SPECIAL, SPM, SPM | PARSE_SPECIAL, NO_BOS | 0x30][i % 6]
        with open(f"{ENC}/{k}-{i}", "wb") as f:
            f.write(bytes([ctl]) + text)
    for i, b in enumerate(INVALID):
        with open(f"{ENC}/invalid-{i}", "wb") as f:
            f.write(bytes([(SPM if i % 2 else 0) | (i % 3 and PARSE_SPECIAL)]) + b)
    for name, spm in (("tokenizer_smollm.jsonl", 0), ("tokenizer_spm.jsonl", 1)):
        for i, r in enumerate(lines(name)[:400:25]):
            ids = r.get("sp", r["ids"])
            ctl = spm | (2 if i % 2 else 0) | ((i % 16) << 2)
            blob = bytes([ctl]) + b"".join((x + 4).to_bytes(3, "little") for x in ids)
            with open(f"{DEC}/{name.split('_')[1].split('.')[0]}-{i}", "wb") as f:
                f.write(blob)
    with open(f"{DEC}/bad-ids", "wb") as f:  # -4, n_vocab and beyond
        f.write(bytes([0]) + (0).to_bytes(3, "little") + (49156).to_bytes(3, "little"))


if __name__ == "__main__":
    main()
