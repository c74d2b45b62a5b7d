#!/usr/bin/env python3
"""KV transfer GB/s with common/kvchan/kvx beside ucx_perftest, in one run (docs/perf.md).

    python3 tests/bench/kvx_bench.py build/tests/bench/kvx_bench [--reps 5] [--quick]

For each transport row -- shared memory (UCX's choice with
MM_ERROR_HANDLING=y), TCP over loopback (UCX_TLS=tcp), and TCP across a
network-namespace pair (veth, 192.0.2.0/24; root and `ip` only, else the row
says "skipped:" and why, e.g. "needs root") -- it runs:
  * kvx_bench serve + kvx_bench bw, tags on and tags off (two processes, pools of
    max(256 MiB, 4 x LLC) per side, runs rotating through them), median of --reps;
  * ucx_perftest server + client for ucp_am_bw, ucp_put_bw and ucp_get with -e
    (error-handling endpoints, as kvx uses), the same UCX_TLS / NET_DEVICES /
    MM_ERROR_HANDLING / RNDV_SCHEME=get_zcopy, the same sizes; ucp_am_bw again
    with -E sleep (event-driven waiting, as kvx);
  * connect + handshake latency (median of 30 connects) and the latency of one
    737,280-byte block (the default model's 16-token fp32 block), PREFILL to DONE.
and prints one markdown table per row with the ratios:
  on/best   kvx tags on over the best perftest operation
  off/am    kvx tags off over perftest ucp_am_bw (the same operation)
  off/sleep kvx tags off over ucp_am_bw with -E sleep (perftest waiting for events
            after posting instead of polling: kvx's way, on its event loop)
  on/off    tags on over tags off
  on/model  tags on over min(tags off, tag GB/s x crypto threads)
GB/s is 10^9 bytes per second. Timings never decide a test.

With --pool pinned or device (a CUDA build on a GPU machine) the pools are
the GPU's, as the daemons' two GPU paths have them, in blocks of
--block-bytes (default 2 MiB: Llama-3-8B's 16-token bf16 block), runs of 16
and 256 MiB (128 blocks: one 2k-token prompt's KV), tagged on the GPU; the rows are
the same host (UCX's choice: cuda_ipc for device pools where UCX takes CUDA
memory) and UCX_TLS=tcp, each tags on beside tags off, without perftest:
  pinned  page-locked host pools beside device pools of twins: the staged path
          (the sender's GPU tags each run in the device pool and copies it down,
          the receiver's copies it up and checks it there; tags off: no copies)
  device  device pools UCX moves itself (the direct path; needs a UCX that
          takes CUDA memory, e.g. PyPI's libucx-cu13)
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

SIZES = ["16K", "64K", "256K", "1M", "4M", "16M", "64M"]


def nbytes(s):
    m = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * m[s[-1]] if s[-1] in m else int(s)


def llc_bytes():
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    for d in os.listdir(base) if os.path.isdir(base) else []:
        try:
            size = open(os.path.join(base, d, "size")).read().strip()
            best = max(best, nbytes(size))
        except (OSError, ValueError):
            pass
    return best or (32 << 20)


class Row:
    def __init__(self, name, env, ip_s, ip_r, ns_s=None, ns_r=None, dev_s="lo", dev_r="lo"):
        self.name, self.env, self.ip_s, self.ip_r = name, env, ip_s, ip_r
        self.ns_s, self.ns_r, self.dev_s, self.dev_r = ns_s, ns_r, dev_s, dev_r

    def wrap(self, ns, argv):
        return (["ip", "netns", "exec", ns] if ns else []) + argv


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_pair(row, bench, server_args, client_args, timeout=900):
    """kvx_bench serve + a client mode; the client's stdout."""
    port = free_port()
    env = dict(os.environ, **row.env)
    srv = subprocess.Popen(row.wrap(row.ns_s, [bench, "serve", "--ip", row.ip_s, "--port",
                                               str(port)] + server_args),
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = srv.stdout.readline()
        while line and not line.startswith("listening"):
            line = srv.stdout.readline()
        if not line:
            raise RuntimeError("kvx_bench serve did not start")
        out = subprocess.run(row.wrap(row.ns_r, [bench] + client_args +
                                      ["--ip", row.ip_r, "--connect", "%s:%d" % (row.ip_s, port)]),
                             capture_output=True, text=True, env=env, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError("kvx_bench %s: %s" % (client_args[0], out.stderr[-500:]))
        return out.stdout
    finally:
        srv.send_signal(signal.SIGTERM)
        try:
            srv.wait(timeout=30)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()


def perftest(row, test, size, sleep=False):
    """GB/s of one ucx_perftest run; sleep: -E sleep (wait for events after
    posting, as kvx does on its event loop) instead of polling the worker."""
    iters = max(20, min(20000, (256 << 20) // size))
    port = free_port()
    base_env = {"UCX_RNDV_SCHEME": "get_zcopy"}
    base_env.update(row.env)
    args = ["-t", test, "-s", str(size), "-n", str(iters), "-w", str(max(5, iters // 10)), "-e",
            "-p", str(port)] + (["-E", "sleep"] if sleep else [])
    env_s = dict(os.environ, UCX_NET_DEVICES=row.dev_s, **base_env)
    env_r = dict(os.environ, UCX_NET_DEVICES=row.dev_r, **base_env)
    srv = subprocess.Popen(row.wrap(row.ns_s, ["ucx_perftest"] + args), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=env_s)
    try:
        for _ in range(50):
            time.sleep(0.1)
            out = subprocess.run(row.wrap(row.ns_r, ["ucx_perftest", row.ip_s, "-f"] + args),
                                 capture_output=True, text=True, env=env_r, timeout=600)
            if "Connection refused" not in out.stdout + out.stderr:
                break
        lines = [l for l in out.stdout.splitlines() if re.match(r"^\s+\d+\s", l)]
        if out.returncode != 0 or not lines:
            return None
        mbs = float(lines[-1].split()[5])  # overall bandwidth, MB/s (2^20 bytes)
        return mbs * (1 << 20) / 1e9
    finally:
        srv.kill()
        srv.wait()


def parse(out, key):
    res = {}
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == key:
            res[f[1]] = f[2:]
    return res


def setup_netns():
    """The namespace pair's row, or why there is none."""
    if os.geteuid() != 0:
        return None, "needs root (ip netns)"
    if not shutil.which("ip"):
        return None, "no ip command (iproute2) here"
    cmds = [["ip", "netns", "add", "pdkvA"], ["ip", "netns", "add", "pdkvB"],
            ["ip", "link", "add", "pdkvA0", "type", "veth", "peer", "name", "pdkvB0"],
            ["ip", "link", "set", "pdkvA0", "netns", "pdkvA"],
            ["ip", "link", "set", "pdkvB0", "netns", "pdkvB"],
            ["ip", "-n", "pdkvA", "addr", "add", "192.0.2.1/24", "dev", "pdkvA0"],
            ["ip", "-n", "pdkvB", "addr", "add", "192.0.2.2/24", "dev", "pdkvB0"],
            ["ip", "-n", "pdkvA", "link", "set", "pdkvA0", "up"],
            ["ip", "-n", "pdkvB", "link", "set", "pdkvB0", "up"],
            ["ip", "-n", "pdkvA", "link", "set", "lo", "up"],
            ["ip", "-n", "pdkvB", "link", "set", "lo", "up"]]
    for c in cmds:
        r = subprocess.run(c, capture_output=True, text=True)
        if r.returncode != 0:
            teardown_netns()
            return None, "`%s` failed: %s" % (" ".join(c), (r.stderr or r.stdout).strip())
    return Row("tcp, netns pair (veth)", {"UCX_TLS": "tcp"}, "192.0.2.1", "192.0.2.2",
               "pdkvA", "pdkvB", "pdkvA0", "pdkvB0"), None


def teardown_netns():
    for ns in ("pdkvA", "pdkvB"):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def bw_on_off(row, bench, common, sizes, reps):
    """kvx_bench bw on row, tags on and tags off (both sides alike): the two
    parsed results."""
    sz = ",".join(sizes)
    on = parse(run_pair(row, bench, common, ["bw", "--sizes", sz, "--reps", str(reps)]
                        + common), "bw")
    off = parse(run_pair(row, bench, common + ["--no-integrity"],
                         ["bw", "--sizes", sz, "--reps", str(reps), "--no-integrity"]
                         + common), "bw")
    return on, off


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bench")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--crypto-threads", type=int, default=0,
                    help="both sides' tag threads (0: kvx's default, a quarter of the CPUs)")
    ap.add_argument("--quick", action="store_true", help="1M and 16M only, 2 reps")
    ap.add_argument("--pool", choices=("host", "pinned", "device"), default="host",
                    help="where the pools are (pinned, device: the GPU's paths, see above)")
    ap.add_argument("--block-bytes", default="2M", help="--pool pinned/device: the block size")
    ap.add_argument("--gpu-sizes", default="16M,256M", help="--pool pinned/device: run sizes")
    ap.add_argument("--gpu-pool-mib", type=int, default=1024,
                    help="--pool pinned/device: each side's pool")
    a = ap.parse_args()
    if a.pool != "host":
        return gpu_pools(a)
    sizes = ["1M", "16M"] if a.quick else SIZES
    reps = 2 if a.quick else a.reps
    pool_mib = max(256, 4 * llc_bytes() >> 20)
    out = subprocess.run([a.bench, "tags", "--reps", "3"], capture_output=True, text=True,
                         check=True).stdout
    tags = parse(out, "tags")
    tag_gbps = float(tags["16384"][0])
    default_ct = int(next(iter(parse(out, "crypto-threads"))))
    ct = a.crypto_threads or default_ct
    common = ["--pool-mib", str(pool_mib), "--crypto-threads", str(ct)]
    print("# KV transfer: kvx_bench beside ucx_perftest (-e), %d cores, LLC %d MiB, pools %d MiB,"
          " crypto threads %d%s, medians of %d"
          % (os.cpu_count(), llc_bytes() >> 20, pool_mib, ct,
             " (kvx's default here)" if ct == default_ct else "", reps))
    print("# block tags, one thread, 16 KiB blocks: %.2f GB/s" % tag_gbps)
    rows = [Row("shared memory (UCX default, MM_ERROR_HANDLING=y)", {"UCX_MM_ERROR_HANDLING": "y"},
                "127.0.0.1", "127.0.0.1"),
            Row("tcp, loopback", {"UCX_TLS": "tcp"}, "127.0.0.1", "127.0.0.1")]
    ns_row, ns_why = setup_netns()
    try:
        for row in rows + [ns_row or "skipped"]:
            if row == "skipped":
                print("\n## tcp, netns pair (veth)\nskipped: %s" % ns_why)
                continue
            on, off = bw_on_off(row, a.bench, common, sizes, reps)
            lat = parse(run_pair(row, a.bench, ["--block-bytes", "737280", "--pool-mib", "64"],
                                 ["lat", "--block-bytes", "737280", "--pool-mib", "64", "--n",
                                  "100" if a.quick else "300"]), "lat")
            hs = parse(run_pair(row, a.bench, common, ["hs", "--n", "10" if a.quick else "30"]),
                       "hs")
            tl = next(iter(on.values()))[1] if on and len(next(iter(on.values()))) > 1 else "?"
            print("\n## %s -- kvx transports: %s" % (row.name, tl))
            print("connect + handshake: %s us median; one 737,280-byte block, PREFILL -> DONE"
                  " (tags on): %s us median" % (hs.get("", ["?"])[0] if "" in hs else
                                                  " ".join(" ".join(v) for v in hs.values()) or
                                                  next(iter(hs), "?"),
                                                  lat.get("737280", ["?"])[0]))
            print("\n| run | kvx tags on | kvx tags off | perftest am | put | get | am sleep |"
                  " on/best | off/am | off/sleep | on/off | on/model |")
            print("|---|---|---|---|---|---|---|---|---|---|---|---|")
            for s in sizes:
                b = str(nbytes(s))
                g_on = float(on[b][0])
                g_off = float(off[b][0])
                pt = {t: perftest(row, t, nbytes(s)) for t in ("ucp_am_bw", "ucp_put_bw", "ucp_get")}
                best = max([v for v in pt.values() if v] or [float("nan")])
                am = pt["ucp_am_bw"] or float("nan")
                am_sleep = perftest(row, "ucp_am_bw", nbytes(s), sleep=True) or float("nan")
                model = min(g_off, tag_gbps * ct)
                f = lambda v: "%.2f" % v if v else "n/a"
                print("| %s | %.2f | %.2f | %s | %s | %s | %s | %.2f | %.2f | %.2f | %.2f | %.2f |"
                      % (s, g_on, g_off, f(pt["ucp_am_bw"]), f(pt["ucp_put_bw"]), f(pt["ucp_get"]),
                         f(am_sleep), g_on / best, g_off / am, g_off / am_sleep, g_on / g_off,
                         g_on / model))
                sys.stdout.flush()
    finally:
        if ns_row:
            teardown_netns()


def gpu_pools(a):
    reps = 2 if a.quick else a.reps
    sizes = a.gpu_sizes.split(",")
    common = ["--pool", a.pool, "--block-bytes", str(nbytes(a.block_bytes)), "--pool-mib",
              str(a.gpu_pool_mib)]
    print("# KV transfer, GPU pools (--pool %s), blocks of %s, medians of %d"
          % (a.pool, a.block_bytes, reps))
    rows = [Row("same host (UCX's choice)", {}, "127.0.0.1", "127.0.0.1"),
            Row("tcp, loopback", {"UCX_TLS": "tcp"}, "127.0.0.1", "127.0.0.1")]
    print("\n| row | run | kvx transports | tags on (GB/s) | tags off (GB/s) | on/off |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        on, off = bw_on_off(row, a.bench, common, sizes, reps)
        for s in sizes:
            b = str(nbytes(s))
            g_on, g_off = float(on[b][0]), float(off[b][0])
            tl = on[b][1] if len(on[b]) > 1 else "?"
            print("| %s | %s | %s | %.2f | %.2f | %.2f |" % (row.name, s, tl, g_on, g_off,
                                                             g_on / g_off))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
