#!/usr/bin/env python3
"""prefix_bench: what prefix caching buys on multi-turn traffic, measured side
by side in one run: the same pinned workload against decoded with the cache
(--enable-prefix-caching, the default) and without it
(--no-enable-prefix-caching on both daemons), disaggregated (decoded with a
prefilld peer, every prompt remote) and local (decoded alone).

The workload (docs/perf.md, issue 28): a 1,024-token system prompt shared by
4 clients, each holding a 6-turn conversation; a turn sends the system
prompt, the conversation so far and 64 new user tokens, and generates 32
tokens (streamed, greedy, ignore_eos), whose text goes back into the
conversation as the next turn's history (through /tokenize, as a client
resending text would). The 4 clients run at once. Prompts are token ids
drawn from a seeded generator, so every mode sees the same conversation
prefixes.

Printed per mode: TTFT p50/p99 over all turns and over turns 4-6, the KV
bytes the KV channel moved (decoded's pdserve:kv_bytes_received_total), the
prefix-cache hit rate, and the ratios no-cache / cache side by side.

    ninja -C build
    ~/.cache/pdserve/venv/bin/python tests/bench/prefix_bench.py --build build \\
        -- --model ~/.cache/pdserve/SmolLM2-135M-Instruct.Q4_1.gguf

Arguments after "--" go to both daemons. On one host both daemons share its
cores. Timings never decide a test; this is a measuring tool only.
"""
import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from disagg_bench import Prefilld, wait_peer  # noqa: E402
from serve_bench import Server, one_request, pct  # noqa: E402


async def conversation(client, url, rng_seed, system, o, ttft):
    rng = random.Random(rng_seed)
    history = []
    for k in range(o.turns):
        user = [rng.randrange(100, o.vocab - 100) for _ in range(o.user_tokens)]
        prompt = system + history + user
        res = await one_request(client, url, None, prompt, o.gen_tokens, {})
        ttft[k].append(res["ttft"])
        r = await client.post(url + "/tokenize", json={"prompt": res["text"]})
        r.raise_for_status()
        history += user + r.json()["tokens"]


async def workload(url, o):
    rng = random.Random(o.seed)
    system = [rng.randrange(100, o.vocab - 100) for _ in range(o.system_tokens)]
    ttft = [[] for _ in range(o.turns)]
    limits = httpx.Limits(max_connections=o.clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(3600.0), limits=limits) as client:
        await one_request(client, url, None, [1, 2, 3], 2, {})  # warm-up, shares nothing
        await asyncio.gather(*(conversation(client, url, o.seed * 100 + c, system, o, ttft)
                               for c in range(o.clients)))
    return ttft


def total(m, name):
    return sum(v for k, v in m.items() if k.startswith(name))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--system-tokens", type=int, default=1024)
    ap.add_argument("--user-tokens", type=int, default=64)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--modes", default="disaggregated,local")
    ap.add_argument("args", nargs="*", help="after --: model options for both daemons")
    o = ap.parse_args()
    dec = os.path.join(o.build, "decoded", "decoded")
    pre = os.path.join(o.build, "prefilld", "prefilld")
    tmp = tempfile.mkdtemp(prefix="prefix_bench-")
    psk = os.path.join(tmp, "kv.psk")
    subprocess.run([pre, "--gen-psk", psk], check=True, stdout=subprocess.DEVNULL)
    rows = {}
    for mode in o.modes.split(","):
        for cache in (True, False):
            flag = [] if cache else ["--no-enable-prefix-caching"]
            p = Prefilld(pre, o.args + flag, psk) if mode == "disaggregated" else None
            try:
                extra = (["--prefill", "127.0.0.1:%d" % p.kv, "--kv-psk-file", psk,
                          "--local-prefill-max-tokens", "0"] if p else [])
                srv = Server(dec, o.args + flag + extra, 300)
                try:
                    if p:
                        wait_peer(srv)
                    ttft = asyncio.run(workload(srv.url, o))
                    m = srv.metrics()
                finally:
                    srv.stop()
            finally:
                if p:
                    p.stop()
            if p and total(m, "pdserve:prompt_tokens_total"):
                raise SystemExit("disaggregated: a prompt was prefilled locally (failover)")
            late = [t for k in range(3, o.turns) for t in ttft[k]]
            every = [t for ts in ttft for t in ts]
            q = total(m, "pdserve:prefix_cache_queries_total")
            rows[(mode, cache)] = {
                "p50": pct(every, 50), "p99": pct(every, 99),
                "late50": pct(late, 50), "late99": pct(late, 99),
                "bytes": total(m, "pdserve:kv_bytes_received_total"),
                "hit": total(m, "pdserve:prefix_cache_hits_total") / q if q else 0.0,
            }
            print("%s, cache %s: done" % (mode, "on" if cache else "off"), file=sys.stderr)

    print("workload: %d clients x %d turns, %d-token system prompt, %d user and %d generated "
          "tokens a turn\n" % (o.clients, o.turns, o.system_tokens, o.user_tokens,
                               o.gen_tokens))
    print("| mode | prefix cache | TTFT p50 (s) | TTFT p99 (s) | turns 4+ p50 (s) | "
          "turns 4+ p99 (s) | KV bytes shipped | decoded hit rate |")
    print("|---|---|---|---|---|---|---|---|")
    for (mode, cache), r in rows.items():
        print("| %s | %s | %.3f | %.3f | %.3f | %.3f | %s | %.0f %% |" % (
            mode, "on" if cache else "off", r["p50"], r["p99"], r["late50"], r["late99"],
            "%.1f MiB" % (r["bytes"] / 2**20) if mode == "disaggregated" else "-",
            100 * r["hit"]))
    print()
    print("| mode | turns 4+ TTFT p50, off / on | KV bytes shipped, on vs off |")
    print("|---|---|---|")
    for mode in o.modes.split(","):
        on, off = rows[(mode, True)], rows[(mode, False)]
        shipped = ("%.0f %% fewer" % (100 * (1 - on["bytes"] / off["bytes"]))
                   if mode == "disaggregated" and off["bytes"] else "-")
        print("| %s | %.2fx | %s |" % (mode, off["late50"] / on["late50"], shipped))


if __name__ == "__main__":
    main()
