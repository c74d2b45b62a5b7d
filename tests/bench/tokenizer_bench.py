#!/usr/bin/env python3
"""Encode throughput: pdserve's tokenizer beside Hugging Face `tokenizers`, on
the same 10 MB mixed-text file, in one run. Prints a table and the ratio, and
checks that both produced the same ids (a digest of every id in order).

    ~/.cache/pdserve/golden-venv/bin/python tests/bench/tokenizer_bench.py \
        build/tests/bench/tokenizer_bench ~/.cache/pdserve/SmolLM2-135M-Instruct.Q4_1.gguf

The reference is the tokenizer transformers 4.47.1 builds from the same GGUF
(tokenizers 0.21.4, Rust), encode_batch and encode_batch_fast (no offsets) over
the file's lines with add_special_tokens=False, in-process, with 1 and with 2 Rayon threads (each in
a subprocess, because Rayon's pool size is fixed at first use). pdserve's
program encodes the same lines with 1 and 2 threads. The two alternate, one
run each per round; figures are medians over --repeat rounds (only the
encoding is timed, not loading). MB/s is 10^6 bytes of input per second. The corpus is written once to
--corpus (default /tmp/pdserve_tok_bench.txt) from tests/golden/tokenizer_corpus.jsonl
and a seeded generator: ~60% prose in many scripts, ~20% code, ~20% numbers,
emoji and mixed text, one document per line (newlines inside escaped away).
"""
import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SIZE = 10 * 1000 * 1000


def build_corpus(path):
    rnd = random.Random(7)
    with open(os.path.join(ROOT, "tests/golden/tokenizer_corpus.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(x) for x in f]
    by_kind = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r["text"].replace("\r", "").replace("\n", " "))
    words = re.findall(r"\S+", " ".join(by_kind["prose"]))
    code = by_kind["code"]
    other = by_kind["numbers"] + by_kind["emoji"] + by_kind["mixed"] + by_kind["unicode"]
    out, n = [], 0
    while n < SIZE:
        p = rnd.random()
        if p < 0.6:  # prose: new sentences from the corpus' words
            line = " ".join(rnd.choice(words) for _ in range(rnd.randint(8, 60)))
        elif p < 0.8:
            line = rnd.choice(code) + "    " + rnd.choice(code)
        else:
            line = " ".join(rnd.choice(other) for _ in range(rnd.randint(1, 4)))
        line = line.replace("\n", " ")
        out.append(line)
        n += len(line.encode("utf-8")) + 1
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


def digest(encodings):
    """The C program's digest: sum over lines of (2 line + 1) * sum over ids of
    (id + 1) * (position + 1), mod 2^64."""
    total, mask = 0, (1 << 64) - 1
    for i, e in enumerate(encodings):
        h = 0
        for k, t in enumerate(e.ids):
            h += (t + 1) * (k + 1)
        total = (total + (h & mask) * (2 * i + 1)) & mask
    return total


def hf_worker(model, corpus, repeat):
    """Runs in a subprocess whose RAYON_NUM_THREADS is already set."""
    from transformers import AutoTokenizer

    d, name = os.path.split(os.path.abspath(model))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name).backend_tokenizer
    tok.encode_special_tokens = True  # as pdserve without PD_TOK_PARSE_SPECIAL
    with open(corpus, encoding="utf-8") as f:
        lines = f.read().split("\n")[:-1]
    nbytes = os.path.getsize(corpus)
    res = {}
    for fn in ("encode_batch", "encode_batch_fast"):  # _fast: no offsets
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            enc = getattr(tok, fn)(lines, add_special_tokens=False)
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        res[fn] = {"s": med, "mbs": nbytes / med / 1e6, "tokens": sum(len(e.ids) for e in enc),
                   "digest": f"{digest(enc):016x}"}
    print(json.dumps(res))


def run_hf(model, corpus, repeat, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="true")
    out = subprocess.run([sys.executable, __file__, "--hf-worker", model, corpus, str(repeat)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_c(prog, model, corpus, repeat, threads):
    out = subprocess.run([prog, model, corpus, "--repeat", str(repeat), "--threads", str(threads)],
                         check=True, capture_output=True, text=True).stdout
    m = re.search(r"(\d+) tokens.*median ([\d.]+) s.* ([\d.]+) MB/s.*digest ([0-9a-f]+)", out)
    return {"tokens": int(m.group(1)), "s": float(m.group(2)), "mbs": float(m.group(3)),
            "digest": m.group(4)}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--hf-worker":
        hf_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bench", help="build/tests/bench/tokenizer_bench")
    ap.add_argument("model", help="the default model's GGUF")
    ap.add_argument("--corpus", default="/tmp/pdserve_tok_bench.txt")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    if not os.path.exists(a.corpus):
        build_corpus(a.corpus)
    size = os.path.getsize(a.corpus)
    with open(a.corpus, encoding="utf-8") as f:
        n_lines = f.read().count("\n")
    print(f"corpus: {a.corpus}, {size} bytes, {n_lines} lines; median of {a.repeat} runs")
    # Rounds interleave the two so that whatever else the machine does hits
    # both alike; each figure is the median over rounds.
    runs = {(t, who): [] for t in (1, 2) for who in ("pd", "hf")}
    for _ in range(a.repeat):
        for threads in (1, 2):
            runs[(threads, "pd")].append(run_c(a.bench, a.model, a.corpus, 1, threads))
            runs[(threads, "hf")].append(run_hf(a.model, a.corpus, 1, threads))
    def med(r):
        return sorted(r, key=lambda x: x["s"])[len(r) // 2]

    print("| threads | pdserve MB/s | HF encode_batch MB/s | HF encode_batch_fast MB/s "
          "| pdserve / HF (faster of the two) | tokens | same ids |")
    print("|---|---|---|---|---|---|---|")
    same_all = True
    for threads in (1, 2):
        pd = med(runs[(threads, "pd")])
        hb = med([r["encode_batch"] for r in runs[(threads, "hf")]])
        hf = med([r["encode_batch_fast"] for r in runs[(threads, "hf")]])
        same = all(pd["digest"] == h["digest"] and pd["tokens"] == h["tokens"] for h in (hb, hf))
        same_all = same_all and same
        print(f"| {threads} | {pd['mbs']:.2f} | {hb['mbs']:.2f} | {hf['mbs']:.2f} | "
              f"{pd['mbs'] / max(hb['mbs'], hf['mbs']):.2f} | {pd['tokens']} | "
              f"{'yes' if same else 'NO'} |")
    if not same_all:
        sys.exit("ids differ between pdserve and the reference")


if __name__ == "__main__":
    main()
