#!/usr/bin/env python3
"""Golden NFC cases for common/text/nfc, from Python's unicodedata (an
independent implementation; its Unicode version is recorded). Run from the
repo root with any python3:

    python3 tests/golden/make_nfc_golden.py

Writes tests/golden/nfc_golden.jsonl: a first line {"unicode": version}, then
{"in": s, "out": unicodedata.normalize("NFC", s)} for: every corpus string
(tests/golden/tokenizer_corpus.jsonl); every code point that NFC changes or
that has a canonical decomposition, alone and after "a"; every combining
mark after three bases; Hangul L+V, LV+T and jamo runs; 3,000 random strings
of 1 to 8 code points mixing marks, letters of several scripts and Hangul
(fixed seed).
"""
import json
import random
import sys
import unicodedata


def main():
    out = []
    with open("tests/golden/tokenizer_corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            t = json.loads(line).get("text", "")
            if "\0" not in t:
                out.append(t)
    cps = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    special = [c for c in cps if unicodedata.decomposition(chr(c)) and
               not unicodedata.decomposition(chr(c)).startswith("<")]
    special += [c for c in cps if unicodedata.normalize("NFC", chr(c)) != chr(c)]
    for c in sorted(set(special)):
        out += [chr(c), "a" + chr(c)]
    marks = [c for c in cps if unicodedata.combining(chr(c))]
    for base in ("e", "\u03b1", "\u0915"):
        out += [base + chr(m) for m in marks]
    for l in range(0x1100, 0x1113):
        out.append(chr(l) + chr(0x1161 + (l % 21)))
    for s in range(0xAC00, 0xD7A4, 28 * 7):
        out.append(chr(s) + chr(0x11A8 + s % 27))
    rng = random.Random(2027)
    pool = marks[:400] + list(range(0x41, 0x7B)) + list(range(0x391, 0x3CA)) + \
        list(range(0x410, 0x450)) + list(range(0x1100, 0x1176)) + list(range(0x11A8, 0x11C3)) + \
        list(range(0x905, 0x940)) + [0xAC00, 0xAC01, 0xD7A3, 0x1E0A, 0x1E0C, 0x212B, 0x2126]
    for _ in range(3000):
        out.append("".join(chr(rng.choice(pool)) for _ in range(rng.randint(1, 8))))
    with open("tests/golden/nfc_golden.jsonl", "w", encoding="utf-8") as f:
        f.write(json.dumps({"unicode": unicodedata.unidata_version}) + "\n")
        for s in out:
            f.write(json.dumps({"in": s, "out": unicodedata.normalize("NFC", s)},
                               ensure_ascii=False) + "\n")
    print(len(out), "cases, Unicode", unicodedata.unidata_version, file=sys.stderr)


if __name__ == "__main__":
    main()
