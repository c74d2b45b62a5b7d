"""Two hosts: prefilld and decoded in two network namespaces joined by a veth
pair (192.0.2.1/24 and 192.0.2.2/24, TEST-NET-1), UCX over TCP only
(UCX_TLS=tcp). Requests are served across it, prefilled remotely, and `ss`
inside each namespace shows every listening socket of both daemons on its
configured address: the KV listener and the HTTP/admin listeners on theirs,
everything else (UCX's data sockets) on --kv-ip within --kv-data-ports. Then
the link goes down (requests fail over to local prefill and are answered)
and up again (decoded reconnects; prefill is remote again), neither daemon
restarted. A --kv-ip that is a secondary address of its interface is refused
at start by both daemons (UCX would bind the interface's first address), and
a flood from another address of decoded's host does not keep decoded from its
session.

Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN): without it every test is skipped
(run_pytest.sh then exits 77 with the reason). Namespaces are removed even on
failure. Binaries as in test_disagg.py ($DECODED, $PREFILLD).
"""
import json
import os
import re
import signal
import subprocess
import tempfile
import time

import pytest

from harness import default_model, write_key

SANITIZED = os.environ.get("PDSERVE_SANITIZE", "none") not in ("", "none")
MODEL_PATH = None if SANITIZED else default_model()
MODEL = (["--model", MODEL_PATH] if MODEL_PATH else
         ["--load-format", "dummy", "--model-shape", '{"preset":"tiny","n_ctx":4096}'])
N_VOCAB = 49152 if MODEL_PATH else 256
P_IP, D_IP = "192.0.2.1", "192.0.2.2"
KV_PORT, P_ADMIN = 14579, 14580
API_PORT, D_ADMIN = 8000, 8001
P_DATA, D_DATA = (30000, 30099), (31000, 31099)


def sh(*cmd, check=True):
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check)


@pytest.fixture
def netns():
    tag = "%d" % (os.getpid() % 100000)
    ns_p, ns_d = "pdsP" + tag, "pdsD" + tag
    veth_p, veth_d = "vpdP" + tag, "vpdD" + tag
    try:
        r = sh("ip", "netns", "add", ns_p, check=False)
    except FileNotFoundError:
        pytest.skip("no `ip` command (iproute2)")
    if r.returncode != 0:
        pytest.skip("cannot create a network namespace (needs root): " + r.stderr.strip())
    try:
        sh("ip", "netns", "add", ns_d)
        sh("ip", "link", "add", veth_p, "type", "veth", "peer", "name", veth_d)
        sh("ip", "link", "set", veth_p, "netns", ns_p)
        sh("ip", "link", "set", veth_d, "netns", ns_d)
        for ns, dev, ip in ((ns_p, veth_p, P_IP), (ns_d, veth_d, D_IP)):
            sh("ip", "-n", ns, "addr", "add", ip + "/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield ns_p, ns_d, veth_d, veth_p
    finally:
        sh("ip", "netns", "del", ns_p, check=False)
        sh("ip", "netns", "del", ns_d, check=False)  # the veth pair goes with it


class Proc:
    def __init__(self, ns, cmd):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PDSERVE_")}
        env.pop("NOTIFY_SOCKET", None)
        env["UCX_TLS"] = "tcp"
        self.logf = tempfile.NamedTemporaryFile(prefix="netns-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns] + cmd, stdout=self.logf,
                                     stderr=subprocess.STDOUT, env=env)

    def log(self):
        with open(self.logf.name, errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return "timeout"
        return self.proc.returncode


def dump_logs(p, d):
    print("---- prefilld ----\n" + p.log())
    if d:
        print("---- decoded ----\n" + d.log())


def curl(ns, url, body=None, timeout=300):
    cmd = ["ip", "netns", "exec", ns, "curl", "-sS", "--max-time", str(timeout), "-w",
           "\n%{http_code}", url]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    r = sh(*cmd, check=False)
    if r.returncode != 0:
        return 0, r.stderr
    text, _, code = r.stdout.rpartition("\n")
    return int(code), text


def wait_health(ns, port, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.proc.poll() is None, "daemon exited:\n" + proc.log()
        if curl(ns, "http://127.0.0.1:%d/health" % port, timeout=2)[0] == 200:
            return
        time.sleep(0.1)
    raise AssertionError("no /health:\n" + proc.log())


def metric(ns, port, name):
    code, text = curl(ns, "http://127.0.0.1:%d/metrics" % port)
    assert code == 200, text
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def listening(ns, pid):
    """(proto, addr, port) of every listening socket of process pid in ns."""
    out = []
    for proto, flags in (("tcp", "-Hltnp"), ("udp", "-Hlunp")):
        r = sh("ip", "netns", "exec", ns, "ss", flags)
        for line in r.stdout.splitlines():
            if "pid=%d," % pid not in line:
                continue
            local = line.split()[3]
            addr, _, port = local.rpartition(":")
            out.append((proto, addr.strip("[]").split("%")[0], int(port)))
    return out


def check_sockets(socks, fixed, kv_ip, lo, hi, who):
    assert socks, who + ": no listening sockets found"
    for proto, addr, port in socks:
        if (addr, port) in fixed:
            continue
        assert proto == "tcp" and addr == kv_ip and lo <= port <= hi, \
            "%s: %s socket on %s:%d, outside %s:%d-%d" % (who, proto, addr, port, kv_ip, lo, hi)
    for f in fixed:
        assert any((a, p) == f for _, a, p in socks), "%s: nothing listens on %s:%d" % (who, *f)


def test_two_namespaces_over_tcp(netns, tmp_path):
    ns_p, ns_d, veth_d, _ = netns
    psk = write_key(tmp_path / "k.psk")
    pre = os.environ.get("PREFILLD")
    dec = os.environ.get("DECODED")
    if not pre or not dec:
        pytest.skip("set PREFILLD and DECODED")
    mem = ["--kv-cache-memory", "128MiB"]
    p = Proc(ns_p, [pre, *MODEL, *mem, "--kv-ip", P_IP, "--kv-port", str(KV_PORT),
                    "--kv-data-ports", "%d-%d" % P_DATA, "--admin-host", "127.0.0.1",
                    "--admin-port", str(P_ADMIN), "--kv-psk-file", psk])
    d = None
    try:
        wait_health(ns_p, P_ADMIN, p)
        d = Proc(ns_d, [dec, *MODEL, *mem, "--kv-ip", D_IP, "--kv-data-ports", "%d-%d" % D_DATA,
                        "--prefill", "%s:%d" % (P_IP, KV_PORT), "--kv-psk-file", psk,
                        "--local-prefill-max-tokens", "0", "--host", "127.0.0.1", "--port",
                        str(API_PORT), "--admin-host", "127.0.0.1", "--admin-port",
                        str(D_ADMIN)])
        wait_health(ns_d, API_PORT, d)
        deadline = time.time() + 60
        while metric(ns_d, D_ADMIN, "pdserve:kv_peer_up") != 1:
            assert time.time() < deadline, "no KV session across the namespaces:\n" + d.log()
            time.sleep(0.2)
        total = 0
        for n in (1, 17, 100, 300):
            ids = [(7 * k + n) % (N_VOCAB - 2) + 1 for k in range(n)]
            code, text = curl(ns_d, "http://127.0.0.1:%d/v1/completions" % API_PORT,
                              {"prompt": ids, "max_tokens": 4, "temperature": 0,
                               "ignore_eos": True})
            assert code == 200, text
            out = json.loads(text)
            assert out["usage"]["completion_tokens"] == 4, out
            total += n
        assert metric(ns_d, D_ADMIN, "pdserve:remote_prompt_tokens_total") == total
        assert metric(ns_d, D_ADMIN, "pdserve:prompt_tokens_total") == 0
        assert metric(ns_d, D_ADMIN, "pdserve:kv_bytes_received_total") > 0
        assert metric(ns_p, P_ADMIN, "pdserve:kv_bytes_sent_total") > 0
        # every listening socket where it was configured
        ps = listening(ns_p, p.proc.pid)
        ds = listening(ns_d, d.proc.pid)
        print("prefilld listens on", ps, "; decoded on", ds)
        check_sockets(ps, {(P_IP, KV_PORT), ("127.0.0.1", P_ADMIN)}, P_IP, *P_DATA, "prefilld")
        check_sockets(ds, {("127.0.0.1", API_PORT), ("127.0.0.1", D_ADMIN)}, D_IP, *D_DATA,
                      "decoded")
        assert re.search(r"KV session up: prefill peer %s:%d" % (re.escape(P_IP), KV_PORT),
                         d.log())
        # link down: the session's lease ends and requests fail over to local
        # prefill (retry, then local: one peer) and are still answered; link
        # up: decoded reconnects and prefills remotely again, with no restart
        # of either daemon
        sh("ip", "-n", ns_d, "link", "set", veth_d, "down")
        deadline = time.time() + 60
        while metric(ns_d, D_ADMIN, "pdserve:kv_peer_up") != 0:
            assert time.time() < deadline, "the session outlived the link:\n" + d.log()
            time.sleep(0.2)
        local0 = metric(ns_d, D_ADMIN, "pdserve:prompt_tokens_total")
        ids = [(11 * k) % (N_VOCAB - 2) + 1 for k in range(20)]
        code, text = curl(ns_d, "http://127.0.0.1:%d/v1/completions" % API_PORT,
                          {"prompt": ids, "max_tokens": 2, "temperature": 0})
        assert code == 200, text
        assert metric(ns_d, D_ADMIN, "pdserve:prompt_tokens_total") == local0 + 20
        sh("ip", "-n", ns_d, "link", "set", veth_d, "up")
        deadline = time.time() + 60
        while metric(ns_d, D_ADMIN, "pdserve:kv_peer_up") != 1:
            assert time.time() < deadline, "no reconnect after link up:\n" + d.log()
            time.sleep(0.2)
        remote0 = metric(ns_d, D_ADMIN, "pdserve:remote_prompt_tokens_total")
        ids = [(13 * k) % (N_VOCAB - 2) + 1 for k in range(30)]
        code, text = curl(ns_d, "http://127.0.0.1:%d/v1/completions" % API_PORT,
                          {"prompt": ids, "max_tokens": 2, "temperature": 0})
        assert code == 200, text
        assert metric(ns_d, D_ADMIN, "pdserve:remote_prompt_tokens_total") == remote0 + 30
    except BaseException:
        dump_logs(p, d)
        raise
    finally:
        rcs = [x.stop() for x in (d, p) if x]
        logs = [x.log() for x in (d, p) if x]
        for x in (d, p):
            if x:
                os.unlink(x.logf.name)
    assert rcs == [0, 0], rcs
    for log in logs:
        for bad in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            assert bad not in log, log


def test_secondary_kv_ip_refused(netns, tmp_path):
    ns_p, ns_d, veth_d, veth_p = netns
    psk = write_key(tmp_path / "k.psk")
    pre, dec = os.environ.get("PREFILLD"), os.environ.get("DECODED")
    if not pre or not dec:
        pytest.skip("set PREFILLD and DECODED")
    sh("ip", "-n", ns_p, "addr", "add", "192.0.2.11/24", "dev", veth_p)
    sh("ip", "-n", ns_d, "addr", "add", "192.0.2.12/24", "dev", veth_d)
    for ns, binary, extra in ((ns_p, pre, ["--kv-ip", "192.0.2.11"]),
                              (ns_d, dec, ["--kv-ip", "192.0.2.12", "--prefill",
                                           "%s:%d" % (P_IP, KV_PORT)])):
        r = subprocess.run(["ip", "netns", "exec", ns, binary, *MODEL, "--kv-cache-memory",
                            "64MiB", "--kv-psk-file", psk, *extra], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode != 0, r.stderr
        out = r.stderr + r.stdout
        assert "secondary address" in out and "first address is" in out, out
        assert "dummy or macvlan" in out, out


def test_flood_from_another_address_does_not_keep_decoded_out(netns, tmp_path):
    """An attacker on decoded's host, from its own address, floods prefilld's
    KV port with silent connections; decoded (another source) still gets its
    session within 3 s while it goes on."""
    ns_p, ns_d, veth_d, _ = netns
    psk = write_key(tmp_path / "k.psk")
    pre, dec = os.environ.get("PREFILLD"), os.environ.get("DECODED")
    if not pre or not dec:
        pytest.skip("set PREFILLD and DECODED")
    attacker_ip = "192.0.2.99"
    sh("ip", "-n", ns_d, "addr", "add", attacker_ip + "/24", "dev", veth_d)
    mem = ["--kv-cache-memory", "64MiB"]
    p = Proc(ns_p, [pre, *MODEL, *mem, "--kv-ip", P_IP, "--kv-port", str(KV_PORT),
                    "--kv-data-ports", "%d-%d" % P_DATA, "--admin-host", "127.0.0.1",
                    "--admin-port", str(P_ADMIN), "--kv-psk-file", psk])
    d = flood = None
    try:
        wait_health(ns_p, P_ADMIN, p)
        script = ("import socket,sys,time\n"
                  "held=[]\n"
                  "for i in range(1500):\n"
                  "    s=socket.socket(); s.bind((sys.argv[1],0))\n"
                  "    try: s.connect((sys.argv[2],int(sys.argv[3]))); held.append(s)\n"
                  "    except OSError: s.close()\n"
                  "    time.sleep(0.004)\n"
                  "time.sleep(30)\n")
        flood = subprocess.Popen(["ip", "netns", "exec", ns_d, "python3", "-c", script,
                                  attacker_ip, P_IP, str(KV_PORT)])
        time.sleep(1.5)
        d = Proc(ns_d, [dec, *MODEL, *mem, "--kv-ip", D_IP, "--kv-data-ports", "%d-%d" % D_DATA,
                        "--prefill", "%s:%d" % (P_IP, KV_PORT), "--kv-psk-file", psk,
                        "--host", "127.0.0.1", "--port", str(API_PORT), "--admin-host",
                        "127.0.0.1", "--admin-port", str(D_ADMIN)])
        wait_health(ns_d, API_PORT, d)
        t0 = time.time()
        while metric(ns_d, D_ADMIN, "pdserve:kv_peer_up") != 1:
            assert time.time() - t0 < 3, "no KV session during the flood:\n" + d.log()
            time.sleep(0.05)
        assert flood.poll() is None  # the flood was still going on
        assert metric(ns_p, P_ADMIN,
                      'pdserve:kv_handshake_failures_total{daemon="prefilld",reason="cap"}') > 0
    except BaseException:
        dump_logs(p, d)
        raise
    finally:
        if flood:
            flood.kill()
            flood.wait()
        rcs = [x.stop() for x in (d, p) if x]
        for x in (d, p):
            if x:
                os.unlink(x.logf.name)
    assert rcs == [0] * len(rcs), rcs
