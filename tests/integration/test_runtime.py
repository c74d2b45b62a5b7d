"""The daemon runtime both daemons run on (common/daemon/runtime.h): one
admin endpoint (the same answers, error shapes and connection cap on decoded
and prefilld), /health saying "stopping" while a daemon drains, and one rule
for a second SIGTERM/SIGINT (the drain deadline now: cut what still runs).
"""
import http.client
import json
import signal
import socket
import threading
import time

import pytest

from harness import TINY, Decoded, Prefilld, post_and_hold, wait_for, write_key

ADMIN_CAP = 64  # PD_RUNTIME_ADMIN_CONNECTIONS

# prefilld busy for seconds with one prompt: a wider dummy model and a long
# prompt (compute-bound on the CPU: long enough to signal during it)
WIDE = ("--load-format", "dummy", "--model-shape",
        '{"preset":"tiny","n_ctx":8192,"n_embd":512,"n_ff":1536,"n_head":8,"n_head_kv":2,'
        '"head_dim":64,"n_layer":8,"n_vocab":256}',
        "--kv-cache-memory", "256MiB")
LONG_PROMPT = [1 + (i * 7) % 250 for i in range(6000)]


def admin(port, method, path, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


@pytest.fixture(params=["decoded", "prefilld"])
def daemon(request, tmp_path):
    if request.param == "decoded":
        d = Decoded(*TINY)
    else:
        d = Prefilld(*TINY, psk=write_key(tmp_path / "k.psk"))
    with d:
        yield d


def test_admin_answers(daemon):
    port = daemon.admin_port
    status, _, body = admin(port, "GET", "/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    status, headers, body = admin(port, "HEAD", "/health")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    status, headers, body = admin(port, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"\npdserve:" in body
    status, _, body = admin(port, "GET", "/nope")
    assert status == 404
    err = json.loads(body)["error"]
    assert (err["type"], err["code"]) == ("not_found_error", "not_found")
    for method in ("POST", "OPTIONS", "PATCH"):  # every method gets the one shape
        status, headers, body = admin(port, method, "/metrics")
        assert status == 405 and headers.get("Allow") == "GET, HEAD", (method, status, headers)
        err = json.loads(body)["error"]
        assert (err["type"], err["code"]) == ("invalid_request_error", "method_not_allowed")


def test_admin_answers_alike_on_both(tmp_path):
    with Decoded(*TINY) as d, Prefilld(*TINY, psk=write_key(tmp_path / "k.psk")) as p:
        for method, path in (("GET", "/nope"), ("POST", "/health"), ("DELETE", "/metrics"),
                             ("OPTIONS", "/health"), ("GET", "/health")):
            a = admin(d.admin_port, method, path)
            b = admin(p.admin_port, method, path)
            assert (a[0], a[2]) == (b[0], b[2]), (method, path, a, b)


def test_admin_connection_cap(daemon):
    idle = [socket.create_connection(("127.0.0.1", daemon.admin_port)) for _ in range(ADMIN_CAP)]
    try:
        time.sleep(0.5)  # every one accepted and counted
        extra = socket.create_connection(("127.0.0.1", daemon.admin_port))
        extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        extra.settimeout(1.5)
        with pytest.raises(socket.timeout):
            extra.recv(1)  # at the cap: waits in the backlog, unserved
        idle.pop().close()  # room again: served
        extra.settimeout(10)
        assert extra.recv(64).startswith(b"HTTP/1.1 200")
        extra.close()
    finally:
        for s in idle:
            s.close()
    assert daemon.proc.poll() is None


def test_decoded_health_stopping_then_second_signal_cuts():
    long = {"prompt": [1, 2], "ignore_eos": True, "stream": True, "temperature": 0,
            "max_tokens": 16000}
    with Decoded(*TINY, "--drain-timeout", "600") as d:
        s = post_and_hold(d.port, "/v1/completions", long)
        s.settimeout(30)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        d.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining for up to 600s" in d.log(), 10, "the drain")
        status, _, body = admin(d.admin_port, "GET", "/health")
        assert (status, json.loads(body)) == (503, {"status": "stopping"})
        d.proc.send_signal(signal.SIGINT)
        assert d.proc.wait(30) == 0
        assert "Interrupt again: cutting 1 requests still running" in d.log()
        s.close()


def test_prefilld_health_stopping_then_second_signal_cuts(tmp_path):
    psk = write_key(tmp_path / "k.psk")
    with Prefilld(*WIDE, "--drain-timeout", "600", psk=psk) as p, \
            Decoded(*WIDE, "--kv-psk-file", psk, "--prefill", p.addr,
                    "--local-prefill-max-tokens", "0", "--prefill-timeout-ms", "600000",
                    "--prefill-failover", "fail") as d:
        # the session first: a prompt sent before it is up fails at once (no peer)
        wait_for(lambda: d.metric("pdserve:kv_sessions") == 1, 60, "the KV session")
        done = []
        t = threading.Thread(target=lambda: done.append(d.json(
            "POST", "/v1/completions", {"prompt": LONG_PROMPT, "max_tokens": 1}, timeout=600)))
        t.start()
        try:
            wait_for(lambda: p.metric("pdserve:num_requests_running") >= 1, 120,
                     "the prefill running")
            p.send(signal.SIGTERM)
            wait_for(lambda: "draining for up to 600s" in p.log(), 10, "the drain")
            status, _, body = admin(p.admin_port, "GET", "/health")
            assert (status, json.loads(body)) == (503, {"status": "stopping"})
            p.send(signal.SIGINT)
            assert p.proc.wait(60) == 0
            assert "Interrupt again: cutting 1 requests still running" in p.log()
        finally:
            t.join(120)
        # the cut prefill failed at decoded, which answered and kept serving
        assert done and done[0][0] in (502, 503), done
        assert d.proc.poll() is None
