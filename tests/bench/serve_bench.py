#!/usr/bin/env python3
"""serve_bench: load on decoded's OpenAI API, as vLLM's benchmark_serving
measures it.

At each concurrency level C, C clients each send --requests-per-client
streamed completions back to back; every request has its own prompt of
--prompt-tokens random token ids and asks for exactly --max-tokens tokens
(ignore_eos), so each level does the same work per request. Per level:
requests/s and output tokens/s over the level's wall time, time to first
token (TTFT) and inter-token latency (ITL: the gaps between streamed chunks
of one request) p50/p99, end-to-end latency p50.

    # start decoded here (free loopback ports), run, stop it:
    ~/.cache/pdserve/venv/bin/python tests/bench/serve_bench.py \\
        --decoded build/decoded/decoded -- ~/.cache/pdserve/SmolLM2-135M-Instruct.Q4_1.gguf
    # or against a running server:
    ~/.cache/pdserve/venv/bin/python tests/bench/serve_bench.py --url http://127.0.0.1:8000

Arguments after "--" go to decoded. Prints one Markdown table. Needs httpx
(the openai package brings it). Timings never decide a test; this is a
measuring tool only.
"""
import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time

import httpx


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs, p):
    """The p-th percentile, nearest rank (xs non-empty)."""
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, int(round(p / 100.0 * len(xs) + 0.5)) - 1))
    return xs[k]


class Daemon:
    """A daemon on free loopback ports, its log in a temporary file; start()
    returns once its health URL answers 200."""

    def start(self, name, argv, health_url, timeout, log_prefix):
        self.log = tempfile.NamedTemporaryFile(prefix=log_prefix, suffix=".log", delete=False)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PDSERVE_")}
        env.pop("NOTIFY_SOCKET", None)
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(name + " exited:\n" + open(self.log.name).read())
            try:
                if httpx.get(health_url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise SystemExit(name + " did not come up")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.unlink(self.log.name)


class Server(Daemon):
    """decoded started on free loopback ports; its log in a temporary file."""

    def __init__(self, binary, args, timeout):
        self.port, self.admin = free_port(), free_port()
        self.start("decoded", [binary, "--port", str(self.port), "--admin-port",
                               str(self.admin)] + args,
                   self.url + "/health", timeout, "serve_bench-")

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def metrics(self):
        text = httpx.get("http://127.0.0.1:%d/metrics" % self.admin, timeout=10).text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                out[k] = float(v)
        return out


async def one_request(client, url, model, prompt, max_tokens, headers):
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    if model:
        body["model"] = model
    t0 = time.perf_counter()
    stamps, n_out, text = [], 0, []
    async with client.stream("POST", url + "/v1/completions", json=body,
                             headers=headers) as r:
        if r.status_code != 200:
            raise RuntimeError("HTTP %d: %s" % (r.status_code, (await r.aread())[:200]))
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if "error" in ev:
                raise RuntimeError(ev["error"]["message"])
            if ev.get("usage"):
                n_out = ev["usage"]["completion_tokens"]
            if ev.get("choices") and ev["choices"][0].get("text"):
                stamps.append(time.perf_counter())
                text.append(ev["choices"][0]["text"])
    t1 = time.perf_counter()
    if not stamps:
        raise RuntimeError("no text streamed")
    return {"ttft": stamps[0] - t0, "itl": [b - a for a, b in zip(stamps, stamps[1:])],
            "e2e": t1 - t0, "n_out": n_out, "text": "".join(text)}


async def level(url, model, c, per_client, prompt_tokens, max_tokens, vocab, seed, headers):
    rng = random.Random(seed * 1000 + c)
    prompts = [[rng.randrange(vocab) for _ in range(prompt_tokens)] for _ in range(c * per_client)]
    results = []
    limits = httpx.Limits(max_connections=c + 4, max_keepalive_connections=c + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(3600.0), limits=limits) as client:
        async def worker(i):
            for k in range(per_client):
                results.append(await one_request(client, url, model, prompts[i * per_client + k],
                                                 max_tokens, headers))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(c)))
        wall = time.perf_counter() - t0
    itl = [x for r in results for x in r["itl"]]
    n_out = sum(r["n_out"] for r in results)
    ttft = [r["ttft"] for r in results]
    e2e = [r["e2e"] for r in results]
    return {"c": c, "n": len(results), "wall": wall, "rps": len(results) / wall,
            "tps": n_out / wall, "ttft50": pct(ttft, 50), "ttft99": pct(ttft, 99),
            "itl50": pct(itl, 50) if itl else 0, "itl99": pct(itl, 99) if itl else 0,
            "e2e50": pct(e2e, 50), "n_out": n_out}


def main():
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running server (else --decoded starts one)")
    ap.add_argument("--decoded", help="the decoded binary to start; arguments after --")
    ap.add_argument("--model", help="the served model name (default: the server's)")
    ap.add_argument("--api-key")
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--min-requests", type=int, default=4,
                    help="at least this many requests per level (low concurrency)")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=1000, help="prompt ids are drawn below this")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--start-timeout", type=float, default=300)
    a = ap.parse_args(argv)
    if bool(a.url) == bool(a.decoded):
        ap.error("give --url or --decoded")

    server = Server(a.decoded, extra, a.start_timeout) if a.decoded else None
    url = a.url.rstrip("/") if a.url else server.url
    headers = {"Authorization": "Bearer " + a.api_key} if a.api_key else {}
    try:
        model = a.model or httpx.get(url + "/v1/models", headers=headers,
                                     timeout=30).json()["data"][0]["id"]
        # warm-up: page the weights in, first-touch the pool
        asyncio.run(level(url, model, 1, 1, a.prompt_tokens, 4, a.vocab, 0, headers))
        print("| concurrency | requests | req/s | output tok/s | TTFT p50 (s) | TTFT p99 (s) "
              "| ITL p50 (s) | ITL p99 (s) | e2e p50 (s) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for c in (int(x) for x in a.concurrency.split(",")):
            per = max(a.requests_per_client, -(-a.min_requests // c))
            r = asyncio.run(level(url, model, c, per, a.prompt_tokens, a.max_tokens, a.vocab,
                                  a.seed, headers))
            print("| %d | %d | %.2f | %.1f | %.3f | %.3f | %.3f | %.3f | %.2f |"
                  % (c, r["n"], r["rps"], r["tps"], r["ttft50"], r["ttft99"], r["itl50"],
                     r["itl99"], r["e2e50"]), flush=True)
        if server:
            m = server.metrics()
            def tot(prefix):
                return sum(v for k, v in m.items() if k.startswith(prefix))
            count = tot("pdserve:batch_size_count")
            print("\nengine steps %d, mean sequences per step %.1f, preemptions %d"
                  % (count, tot("pdserve:batch_size_sum") / count if count else 0,
                     tot("pdserve:num_preemptions_total")))
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    main()
