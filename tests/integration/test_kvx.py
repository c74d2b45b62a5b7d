"""common/kvchan/kvx end to end: real UCX between real processes (tests/kvx/kvx_peer.c).

The peer binary comes from $KVX_PEER (or $DECODED, which run_pytest.sh sets
from its first argument). One case alone:
    KVX_PEER=build/tests/kvx_peer venv/bin/python -m pytest tests/integration/test_kvx.py -k tamper

Pools are tiny (64 blocks of 4 KiB on the receiver) so sanitizer and valgrind
runs stay quick; every byte of every destination block is checked by the
receiver itself (counter-based contents), which exits non-zero on a mismatch.
"""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time

import pytest

PEER = os.environ.get("KVX_PEER") or os.environ.get("DECODED")
IP = "127.0.0.1"


def peer_bin():
    if not PEER or not os.access(PEER, os.X_OK) or "kvx_peer" not in os.path.basename(PEER):
        pytest.skip("set KVX_PEER to the kvx_peer binary")
    return PEER


def free_port():
    with socket.socket() as s:
        s.bind((IP, 0))
        return s.getsockname()[1]


def data_ports():
    lo = random.randrange(30000, 59000, 100)
    return lo, lo + 99


def write_key(path, key=None):
    key = key or os.urandom(32)
    with open(path, "w") as f:
        f.write("k1 " + key.hex() + "\n")
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def keys(tmp_path):
    return write_key(tmp_path / "good.psk"), write_key(tmp_path / "bad.psk")


def last_json(text):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError("no JSON summary in output:\n" + text)


class Sender:
    def __init__(self, psk, port=None, dports=None, *extra, tmp=None):
        self.port = port or free_port()
        self.dports = dports or data_ports()
        self.args = [peer_bin(), "--role", "send", "--kv-ip", IP, "--kv-port", str(self.port),
                     "--kv-data-ports", "%d-%d" % self.dports, "--psk-file", str(psk),
                     "--pool-blocks", "512", *extra]
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        line = self.proc.stdout.readline()
        while line and not line.startswith("listening"):  # UCX may log to stdout first
            line = self.proc.stdout.readline()
        if not line.startswith("listening"):
            self.proc.kill()
            out, err = self.proc.communicate(timeout=10)
            raise AssertionError("sender did not start: %s %s %s" % (line, out, err))
        return self

    def addr(self):
        return "%s:%d" % (IP, self.port)

    def stop(self):
        """SIGTERM, then its summary."""
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        out, err = self.proc.communicate(timeout=30)
        self.err = err
        assert self.proc.returncode == 0, err
        return last_json(out)

    def __exit__(self, *a):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def recv_args(psk, addr, *extra, dports=None):
    dports = dports or data_ports()
    return [peer_bin(), "--role", "recv", "--connect", addr, "--kv-ip", IP,
            "--kv-data-ports", "%d-%d" % dports, "--psk-file", str(psk),
            "--pool-blocks", "64", "--block-bytes", "4096", *extra]


def start_recv(psk, addr, *extra, **kw):
    return subprocess.Popen(recv_args(psk, addr, *extra, **kw), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=60):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, last_json(out), err


def test_two_receivers_byte_exact(keys):
    good, _ = keys
    with Sender(good) as s:
        r1 = start_recv(good, s.addr(), "--requests", "150", "--inflight", "8", "--seed", "1")
        r2 = start_recv(good, s.addr(), "--requests", "150", "--inflight", "8", "--seed", "1",
                        "--id-base", "1000000")
        for r in (r1, r2):
            rc, sm, err = finish(r)
            assert rc == 0, err
            assert sm["ok"] == 150 and sm["failed"] == 0 and sm["mismatches"] == 0
            assert sm["bytes_checked"] > 0 and sm["free_blocks"] == sm["pool_blocks"]
            # the UCX this run is meant for (run_ucx_wheel.sh sets it) is the one loaded
            want = os.environ.get("PDSERVE_EXPECT_UCX")
            assert not want or sm["ucx"].startswith(want), (sm["ucx"], want)
        ss = s.stop()
    # every request ended and every source block came back (a receiver that exits
    # right after its last DONE may take its last ACK with it: that run is reclaimed)
    assert ss["ended_ok"] + ss["ended_failed"] == 300 and ss["ended_ok"] >= 290
    assert ss["free_blocks"] == ss["pool_blocks"]


def test_wrong_key_refused_others_unaffected(keys):
    good, bad = keys
    with Sender(good) as s:
        rb = start_recv(bad, s.addr(), "--requests", "5", "--timeout-ms", "1500", "--allow-fail")
        rg = start_recv(good, s.addr(), "--requests", "100", "--inflight", "8")
        rc, sm, err = finish(rg)
        assert rc == 0 and sm["ok"] == 100 and sm["mismatches"] == 0, err
        rc, sb, err = finish(rb)
        assert rc == 0, err  # no leak or crash on the refused side either
        assert sb["sessions_up"] == 0 and sb["ok"] == 0 and sb["bytes_checked"] == 0
        ss = s.stop()
    assert ss["hs_fail"]["auth"] >= 1
    assert ss["prefills"] == 100  # nothing from the wrong key reached a request


def test_garbage_and_silent_connects_closed(keys):
    good, _ = keys
    with Sender(good, None, None, "--handshake-ms", "500") as s:
        # raw TCP: garbage bytes, and a connect that says nothing (UCX's connection
        # manager holds these; they must not disturb anyone)
        g = socket.create_connection((IP, s.port))
        g.sendall(os.urandom(4096))
        quiet = socket.create_connection((IP, s.port))
        # UCX clients: one sends garbage active messages, one stays silent
        silent = subprocess.Popen([peer_bin(), "--role", "silent", "--connect", s.addr(),
                                   "--timeout-ms", "5000"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        garbage = subprocess.Popen([peer_bin(), "--role", "garbage", "--connect", s.addr(),
                                    "--timeout-ms", "5000"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        rg = start_recv(good, s.addr(), "--requests", "100", "--inflight", "8")
        rc, sm, err = finish(rg)
        assert rc == 0 and sm["ok"] == 100 and sm["mismatches"] == 0, err
        rc, si, err = finish(silent)
        assert rc == 0 and si["closed_by_peer"] == 1, err
        assert si["waited_ms"] < 3000  # closed at the 500 ms deadline (+ tick, + teardown)
        rc, ga, err = finish(garbage)
        assert rc == 0 and ga["closed_by_peer"] == 1, err
        g.close()
        quiet.close()
        # the sender is still serving
        rc, sm, err = finish(start_recv(good, s.addr(), "--requests", "20"))
        assert rc == 0 and sm["ok"] == 20, err
        ss = s.stop()
    assert ss["hs_fail"]["timeout"] >= 1
    assert ss["hs_fail"]["garbage"] >= 1
    assert ss["prefills"] == 120


def test_tamper_fails_request_never_hands_blocks_on(keys):
    good, _ = keys
    with Sender(good, None, None, "--tamper", "3") as s:
        rc, sm, err = finish(start_recv(good, s.addr(), "--requests", "60", "--inflight", "6",
                                        "--expect-tamper", "3"))
        s.stop()
    assert rc == 0, err
    assert sm["failed_by"].get("integrity") == 20  # ids 3, 6, ..., 60
    assert sm["ok"] == 40 and sm["mismatches"] == 0 and sm["handed_on_bad"] == 0
    assert sm["integrity_failures"] >= 20


def test_sender_killed_then_restarted(keys):
    good, _ = keys
    port, dports = free_port(), data_ports()
    with Sender(good, port, dports, "--delay-ms", "20") as a:
        r = start_recv(good, a.addr(), "--requests", "400", "--inflight", "8", "--allow-fail",
                       "--lease-ms", "1000", "--deadline-ms", "2000", "--timeout-ms", "30000")
        time.sleep(0.7)
        a.proc.kill()
        a.proc.wait()
        time.sleep(0.3)
        with Sender(good, port, dports, "--delay-ms", "5") as b:
            rc, sm, err = finish(r)
            sb = b.stop()
    assert rc == 0, err
    assert sm["mismatches"] == 0 and sm["handed_on_bad"] == 0
    assert sm["ok"] + sm["failed"] == 400 and sm["failed"] >= 1
    assert sm["sessions_up"] >= 2 and sb["ended_ok"] >= 1
    assert sm["free_blocks"] == sm["pool_blocks"]


def test_sender_stopped_past_lease(keys):
    good, _ = keys
    with Sender(good, None, None, "--delay-ms", "20", "--lease-ms", "600") as s:
        r = start_recv(good, s.addr(), "--requests", "400", "--inflight", "8", "--allow-fail",
                       "--lease-ms", "600", "--deadline-ms", "1000", "--timeout-ms", "30000")
        time.sleep(0.7)
        s.proc.send_signal(signal.SIGSTOP)
        time.sleep(2.0)  # past the lease: requests fail, blocks are reused
        s.proc.send_signal(signal.SIGCONT)
        rc, sm, err = finish(r)
        ss = s.stop()
    assert rc == 0, err
    assert sm["mismatches"] == 0 and sm["handed_on_bad"] == 0
    assert sm["failed_by"].get("timeout", 0) >= 1
    assert sm["ok"] + sm["failed"] == 400 and sm["sessions_up"] >= 2
    assert ss["free_blocks"] == ss["pool_blocks"]


def test_receiver_killed_sender_reclaims(keys):
    good, _ = keys
    with Sender(good, None, None, "--delay-ms", "30") as s:
        r1 = start_recv(good, s.addr(), "--requests", "500", "--inflight", "8")
        time.sleep(0.7)
        r1.send_signal(signal.SIGSTOP)  # it stops acknowledging; runs pile up unacked
        time.sleep(0.3)
        r1.kill()
        r1.communicate()
        rc, sm, err = finish(start_recv(good, s.addr(), "--requests", "40", "--inflight", "8"))
        assert rc == 0 and sm["ok"] == 40 and sm["mismatches"] == 0, err
        ss = s.stop()
    assert ss["runs_unacked"] >= 1  # the dead receiver's runs came back
    assert ss["ended_failed"] >= 1
    assert ss["free_blocks"] == ss["pool_blocks"]


def listening(pid):
    """(ip, port) of every TCP listening socket of pid."""
    out = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True, check=True).stdout
    socks = []
    for line in out.splitlines():
        if "pid=%d," % pid not in line:
            continue
        local = line.split()[3]
        ip, port = local.rsplit(":", 1)
        socks.append((ip.strip("[]"), int(port)))
    return socks


def test_listening_sockets_on_kv_ip_and_data_ports(keys):
    if not shutil.which("ss"):
        pytest.skip("ss (iproute2) is not installed")
    good, _ = keys
    sdp, rdp = data_ports(), data_ports()
    with Sender(good, None, sdp, "--delay-ms", "50") as s:
        r = start_recv(good, s.addr(), "--requests", "40", "--inflight", "4", dports=rdp)
        time.sleep(1.0)
        socks = {s.proc.pid: (listening(s.proc.pid), sdp), r.pid: (listening(r.pid), rdp)}
        rc, sm, err = finish(r)
        s.stop()
    assert rc == 0, err
    assert (IP, s.port) in socks[s.proc.pid][0]
    for pid, (lst, (lo, hi)) in socks.items():
        for ip, port in lst:
            assert ip == IP, (pid, ip, port)
            assert port == s.port or lo <= port <= hi, (pid, ip, port, lo, hi)


def test_port_in_use_names_it(keys):
    good, _ = keys
    with socket.socket() as blocker:
        blocker.bind((IP, 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        p = subprocess.run([peer_bin(), "--role", "send", "--kv-ip", IP, "--kv-port", str(port),
                            "--psk-file", str(good)], capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    assert "%s:%d" % (IP, port) in p.stderr and "in use" in p.stderr, p.stderr
