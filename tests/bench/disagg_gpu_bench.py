#!/usr/bin/env python3
"""disagg_gpu_bench: time to first token on the GPU, the same prompts
prefilled by decoded itself and by a prefilld on the same machine through the
KV channel with tags on, in one run (issue 24's figures; docs/perf.md).

Rows, each with its own targets (disaggregated / local TTFT):
  (a) same host, UCX's choice: the direct path where the UCX loaded takes CUDA
      memory (the device pools to UCX, cuda_ipc between the two processes),
      else staged; the path and UCX's transports are printed from the logs.
      Targets: <= 1.05 at 2k tokens, <= 1.02 at 8k.
  (b) UCX_TLS=tcp and --no-kv-direct (staged through page-locked host memory):
      the stand-in for a network between two nodes. Targets: <= 1.25 at 2k,
      <= 1.10 at 8k; once per prefilld chunk size in --chunks (prefilld's
      --max-num-batched-tokens: smaller chunks ship the first blocks sooner).
Also printed: each daemon's start-up (dummy weights generated on the GPU),
and decoded's channel figures per row (KV bytes received over the time from
PREFILL sent to DONE, which includes prefilld's compute).

Needs only python3 and the binaries (no pytest, no httpx: a GPU node has
neither), through tests/integration/harness.py:

    DECODED=bin/decoded PREFILLD=bin/prefilld python3 disagg_gpu_bench.py \\
        [--model-shape llama3-8b] [--lengths 2048,8176] [--reps 3] [--chunks 2048,512]

Exit 77 without a usable GPU. Timings never decide a test; this is a
measuring tool (tests/gpu/check.sh runs it; on the emulator it runs on a tiny
shape only to check itself).
"""
import argparse
import os
import random
import re
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
for d in (os.path.join(HERE, "..", "integration"), HERE):  # source tree, or the bundle's tests/
    if os.path.exists(os.path.join(d, "harness.py")):
        sys.path.insert(0, d)
        break
from harness import Decoded, Prefilld, wait_for, write_key  # noqa: E402

TARGETS = {"a": ((2048, 1.05), (8192, 1.02)), "b": ((2048, 1.25), (8192, 1.10))}


def target(row, n):
    """The row's target for a prompt of n tokens: that of the nearest length named."""
    return min(TARGETS[row], key=lambda t: abs(t[0] - n))[1]


def ttft(d, ids):
    """Seconds to the first (and only) token of a non-streamed completion."""
    t0 = time.perf_counter()
    status, out = d.json("POST", "/v1/completions",
                         {"prompt": ids, "max_tokens": 1, "temperature": 0, "ignore_eos": True},
                         timeout=600)
    dt = time.perf_counter() - t0
    if status != 200:
        raise SystemExit("completion failed: %s %s" % (status, out))
    return dt


def measure(d, prompts, reps):
    ttft(d, prompts[0][1][0][:16])  # warm-up: first use of every kernel and graph
    return {n: statistics.median(ttft(d, p) for p in ps[:reps]) for n, ps in prompts}


def line_with(log, text):
    return next((x.split(": ", 2)[-1] for x in log.splitlines() if text in x), "?")


def am_protocols(log):
    """UCX_PROTO_INFO's tables for active messages as kvx sends its CHUNKs
    (ucp_am_send*, not the reply-flag or fast-completion variants) out of the
    daemons' logs, each (configuration, memory type)'s once."""
    out, seen, keep, cfg = [], set(), False, ""
    for x in log.splitlines():
        x = re.sub(r"^\[[0-9.]+\] \[[^]]*\]", "", x).strip()
        if not x.startswith("|"):
            continue
        if re.search(r" cfg#\d+", x):
            cfg = x.strip(" |")
        elif re.search(r"\| [^|]* by ucp_", x):
            head = cfg + ": " + x.strip(" |")
            keep = ("active message by ucp_am_send*" in x and "reply" not in x and
                    "fast-completion" not in x and head not in seen)
            seen.add(head)
            if keep:
                out.append(head)
        elif keep and "Range" not in x:
            out.append("  " + re.sub(r"\s+", " ", x))
    return "\n".join(out)


def metric_sum(d, name):
    return sum(v for k, v in d.metrics().items() if k.startswith("pdserve:" + name))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-shape", default="llama3-8b")
    ap.add_argument("--lengths", default="2048,8176")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--chunks", default="2048,512",
                    help="prefilld's --max-num-batched-tokens for row (b), each a row")
    ap.add_argument("--kv-cache-memory", default="4GiB")
    ap.add_argument("--vocab", type=int, default=500, help="token ids drawn below this "
                    "(any shape's vocabulary is larger; the time does not depend on them)")
    ap.add_argument("--rows", default="a,b")
    ap.add_argument("--budget-s", type=float, default=0,
                    help="the run's share of a device session: after decoded alone started "
                         "(its start-up is each daemon's), row (b)'s later chunk sizes are "
                         "dropped while the daemons still to start would not fit (0: no limit)")
    ap.add_argument("--emulated", action="store_true", help="a dry run on the emulator")
    o = ap.parse_args()
    lengths = [int(x) for x in o.lengths.split(",")]
    model = ["--load-format", "dummy", "--model-shape", o.model_shape, "--device", "cuda",
             "--kv-cache-dtype", "bf16", "--kv-cache-memory", o.kv_cache_memory,
             "--log-level", "info"]
    tmp = tempfile.mkdtemp(prefix="disagg_gpu_bench-")
    psk = write_key(os.path.join(tmp, "k.psk"))
    rng = random.Random(1)
    print("# disagg_gpu_bench: TTFT disaggregated (prefilld on this machine, tags on) / "
          "local (decoded alone), model shape %s, median of %d per length" % (o.model_shape,
                                                                            o.reps))
    sys.stdout.flush()

    t_start = t0 = time.perf_counter()
    loc = Decoded(*model, wait=False, timeout=600)
    with loc:
        try:
            loc.wait_ready()
        except RuntimeError:
            if "--device cuda: " in loc.log():
                print("skip: no usable GPU: " + loc.log().strip().splitlines()[-1])
                sys.exit(77)
            raise
        t_loc = time.perf_counter() - t0
        prompts = [(n, [[rng.randrange(1, o.vocab) for _ in range(n)] for _ in range(o.reps)])
                   for n in lengths]
        t0 = time.perf_counter()
        local = measure(loc, prompts, o.reps)
        t_local_reqs = time.perf_counter() - t0
        print("local: %s (%.1f s)" % (", ".join("%d tokens %.3f s" % (n, local[n])
                                                for n in lengths), t_local_reqs))
    print("start-up: decoded alone %.1f s" % t_loc)
    sys.stdout.flush()

    plan = [(row, chunk) for row in o.rows.split(",")
            for chunk in (o.chunks.split(",") if row == "b" else [None])]
    spent = time.perf_counter() - t_start
    # two daemons per row, each about as long to start as decoded alone, and
    # each row's requests about as long as the local ones
    per_row = 2 * t_loc + (t_local_reqs if t_local_reqs else 0)
    while o.budget_s and len(plan) > 2 and spent + len(plan) * per_row > o.budget_s:
        print("dropped row (%s) chunk %s: %d rows at about %.0f s each would pass "
              "--budget-s %.0f after %.0f s" % (plan[-1][0], plan[-1][1], len(plan), per_row,
                                                o.budget_s, spent))
        plan.pop()
    rows = []
    for row, chunk in plan:
        # UCX_PROTO_INFO (UCX >= 1.15): the protocols UCX picked, per memory type,
        # in the daemons' logs -- what RNDV_SCHEME=get_zcopy becomes on CUDA memory
        env = dict({"UCX_TLS": "tcp"} if row == "b" else {}, UCX_PROTO_INFO="y")
        staged = ["--no-kv-direct"] if row == "b" else []
        pre = model + staged + (["--max-num-batched-tokens", chunk] if chunk else [])
        t0 = time.perf_counter()
        with Prefilld(*pre, psk=psk, env=env, timeout=600) as p:
            t_p = time.perf_counter() - t0
            t0 = time.perf_counter()
            with Decoded(*model, *staged, "--kv-psk-file", psk, "--prefill", p.addr,
                         "--local-prefill-max-tokens", "0", "--prefill-timeout-ms", "600000",
                         env=env, timeout=600) as d:
                t_d = time.perf_counter() - t0
                wait_for(lambda: metric_sum(d, "kv_sessions") == 1, 60, "a KV session")
                b0 = metric_sum(p, "kv_bytes_sent_total")
                dis = measure(d, prompts, o.reps)
                got = metric_sum(p, "kv_bytes_sent_total") - b0
                assert metric_sum(d, "prompt_tokens_total") == 0, "a prompt went local"
                path = line_with(d.log(), "KV channel: the device pool goes") \
                    if "(direct)" in d.log() else line_with(d.log(), "KV channel: blocks staged")
                tags = line_with(d.log(), "KV channel: block tags")
                tl = re.search(r"UCX transports ([^)]*)\)", d.log())
                rows.append((row, chunk, path, tags, tl.group(1) if tl else "?", dis,
                             got, t_p, t_d))
                proto = am_protocols(p.log() + d.log())
                print("UCX protocols, row (%s):%s" % (row, "\n" + proto if proto else
                      " none logged (UCX_PROTO_INFO needs UCX >= 1.15)"))
                print("row (%s)%s: %s; transports %s; prefilld up in %.1f s, decoded "
                      "in %.1f s; %s" % (row, " chunk %s" % chunk if chunk else "", path,
                                         rows[-1][4], t_p, t_d, ", ".join(
                                             "%d tokens %.3f s (ratio %.3f, target %.2f)" %
                                             (n, dis[n], dis[n] / local[n], target(row, n))
                                             for n in lengths)))
                sys.stdout.flush()

    print()
    print("| row | prefilld chunk | tokens | TTFT local (s) | TTFT disaggregated (s) | ratio "
          "| target | met |")
    print("|---|---|---|---|---|---|---|---|")
    missed = 0
    for row, chunk, path, tags, tl, dis, got, t_p, t_d in rows:
        for n in lengths:
            r, t = dis[n] / local[n], target(row, n)
            missed += r > t
            print("| (%s) %s | %s | %d | %.3f | %.3f | %.3f | %.2f | %s |"
                  % (row, "tcp, staged" if row == "b" else "same host", chunk or "default", n,
                     local[n], dis[n], r, t, "yes" if r <= t else "no"))
    print()
    for row, chunk, path, tags, tl, dis, got, t_p, t_d in rows:
        print("(%s)%s: %s | %s | UCX %s | %.1f MiB of KV sent" %
              (row, " chunk " + chunk if chunk else "", path, tags, tl, got / 2**20))
    print("disagg_gpu_bench: %d of %d ratios over their targets%s" %
          (missed, len(rows) * len(lengths), " (emulated: timings mean nothing)"
           if o.emulated else ""))


if __name__ == "__main__":
    main()
