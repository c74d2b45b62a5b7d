#!/usr/bin/env python3
"""disagg_bench: what disaggregation costs and what it buys, measured side by
side in one run: decoded with a prefilld peer over the KV channel
(--prefill, every prompt remote) against decoded prefilling locally, same
model, same machine.

1. TTFT at prompts of 128, 512 and 2048 tokens: the median of --reps
   sequential requests per length and mode, and the ratio disaggregated /
   local (the transfer's overhead: PREFILL, blocks, tags, DONE).
2. Inter-token latency of short streamed requests (--fg-clients at once)
   while one client keeps sending 2048-token prompts: p50/p99 in both modes
   (with local prefill the long prompts' chunks share decoded's engine steps;
   disaggregated, they run on prefilld).

    ninja -C build
    ~/.cache/pdserve/venv/bin/python tests/bench/disagg_bench.py --build build \\
        -- --model ~/.cache/pdserve/SmolLM2-135M-Instruct.Q4_1.gguf

Arguments after "--" go to both daemons (the model, --kv-cache-dtype);
--prefilld-arg=OPT adds one for prefilld alone (its chunk size). Prints Markdown tables.
On one host both daemons share its cores, so (2) shows the mechanism, not the
benefit of a second node. Timings never decide a test; this is a measuring
tool only.
"""
import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_bench import Daemon, Server, free_port, one_request, pct  # noqa: E402


class Prefilld(Daemon):
    """prefilld on free loopback ports with a fresh key."""

    def __init__(self, binary, args, psk, timeout=300):
        self.kv, self.admin = free_port(), free_port()
        self.start("prefilld", [binary, "--kv-port", str(self.kv), "--admin-port",
                                str(self.admin), "--kv-psk-file", psk] + args,
                   "http://127.0.0.1:%d/health" % self.admin, timeout, "disagg_bench-")


def wait_peer(srv, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if sum(v for k, v in srv.metrics().items() if k.startswith("pdserve:kv_peer_up")) >= 1:
            return
        time.sleep(0.1)
    raise SystemExit("decoded has no KV session with prefilld")


async def ttfts(url, lengths, reps, vocab, seed):
    rng = random.Random(seed)
    out = {}
    async with httpx.AsyncClient(timeout=httpx.Timeout(3600.0)) as client:
        await one_request(client, url, None, [1, 2, 3], 2, {})  # warm-up
        for n in lengths:
            xs = []
            for _ in range(reps):
                prompt = [rng.randrange(1, vocab) for _ in range(n)]
                xs.append((await one_request(client, url, None, prompt, 2, {}))["ttft"])
            out[n] = statistics.median(xs)
    return out


async def interference(url, fg_clients, fg_requests, long_tokens, vocab, seed):
    rng = random.Random(seed)
    stop = asyncio.Event()
    itl = []
    limits = httpx.Limits(max_connections=fg_clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(3600.0), limits=limits) as client:
        async def background():
            while not stop.is_set():
                prompt = [rng.randrange(1, vocab) for _ in range(long_tokens)]
                await one_request(client, url, None, prompt, 1, {})

        async def foreground(i):
            for k in range(fg_requests):
                prompt = [rng.randrange(1, vocab) for _ in range(16)]
                r = await one_request(client, url, None, prompt, 32, {})
                itl.extend(r["itl"])

        bg = asyncio.create_task(background())
        await asyncio.sleep(0.5)  # the first long prompt is in
        await asyncio.gather(*(foreground(i) for i in range(fg_clients)))
        stop.set()
        await bg
    return pct(itl, 50), pct(itl, 99)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--lengths", default="128,512,2048")
    ap.add_argument("--fg-clients", type=int, default=4)
    ap.add_argument("--fg-requests", type=int, default=4)
    ap.add_argument("--long-tokens", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--prefilld-arg", action="append", default=[],
                    help="an option for prefilld only (repeatable), e.g. "
                         "--prefilld-arg=--max-num-batched-tokens=512")
    ap.add_argument("--no-interference", action="store_true",
                    help="TTFT only (skips part 2)")
    ap.add_argument("args", nargs="*", help="after --: model options for both daemons")
    o = ap.parse_args()
    lengths = [int(x) for x in o.lengths.split(",")]
    dec = os.path.join(o.build, "decoded", "decoded")
    pre = os.path.join(o.build, "prefilld", "prefilld")
    tmp = tempfile.mkdtemp(prefix="disagg_bench-")
    psk = os.path.join(tmp, "kv.psk")
    subprocess.run([pre, "--gen-psk", psk], check=True, stdout=subprocess.DEVNULL)
    results = {}
    p = Prefilld(pre, o.args + o.prefilld_arg, psk)
    try:
        for mode in ("disaggregated", "local"):
            extra = (["--prefill", "127.0.0.1:%d" % p.kv, "--kv-psk-file", psk,
                      "--local-prefill-max-tokens", "0"] if mode == "disaggregated" else [])
            srv = Server(dec, o.args + extra, 300)
            try:
                if mode == "disaggregated":
                    wait_peer(srv)
                t = asyncio.run(ttfts(srv.url, lengths, o.reps, o.vocab, o.seed))
                i50 = i99 = float("nan")
                if not o.no_interference:
                    i50, i99 = asyncio.run(interference(srv.url, o.fg_clients, o.fg_requests,
                                                        o.long_tokens, o.vocab, o.seed))
                m = srv.metrics()
                local = sum(v for k, v in m.items() if k.startswith("pdserve:prompt_tokens_total"))
                remote = sum(v for k, v in m.items()
                             if k.startswith("pdserve:remote_prompt_tokens_total"))
                results[mode] = (t, i50, i99, local, remote)
            finally:
                srv.stop()
    finally:
        p.stop()
        os.unlink(psk)
        os.rmdir(tmp)
    d, l = results["disaggregated"], results["local"]
    print("| prompt tokens | TTFT disaggregated (s) | TTFT local (s) | ratio |")
    print("|---|---|---|---|")
    for n in lengths:
        print("| %d | %.3f | %.3f | %.2f |" % (n, d[0][n], l[0][n], d[0][n] / l[0][n]))
    if o.no_interference:
        return
    print()
    print("| mode | ITL p50 (s) | ITL p99 (s) | prompt tokens prefilled locally / remotely |")
    print("|---|---|---|---|")
    for name, r in (("disaggregated", d), ("local", l)):
        print("| %s | %.3f | %.3f | %d / %d |" % (name, r[1], r[2], r[3], r[4]))
    print()
    print("ITL p50 ratio disaggregated / local: %.2f; p99: %.2f" % (d[1] / l[1], d[2] / l[2]))


if __name__ == "__main__":
    main()
