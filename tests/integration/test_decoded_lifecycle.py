"""Start-up and shut-down as systemd sees them: READY=1 only once the port
accepts, STOPPING=1 and a bounded drain on SIGTERM, exit 0."""
import json
import os
import signal
import socket
import tempfile
import time

from harness import TINY, Decoded, sse_events, write_key

LONG = {"prompt": [1, 2], "ignore_eos": True, "stream": True, "temperature": 0}


def open_stream(port, body):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    data = json.dumps(body).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return s


def read_all(s):
    out = b""
    while True:
        b = s.recv(65536)
        if not b:
            return out
        out += b


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, timeout):
        self.path = os.path.join(tempfile.mkdtemp(), "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(timeout)

    def recv(self):
        return self.sock.recv(4096).decode()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(os.path.dirname(self.path))


def dechunk(raw):
    """HTTP/1.1 chunked body -> bytes."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    body = b""
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        body += rest[:size]
        rest = rest[size + 2:]
    return head, body


def test_sigterm_mid_stream_completes_and_exits_0():
    with Decoded(*TINY, "--drain-timeout", "60") as d:
        s = open_stream(d.port, dict(LONG, max_tokens=3000))
        first = s.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        d.proc.send_signal(signal.SIGTERM)
        head, body = dechunk(first + read_all(s))
        events = sse_events(body)
        assert events[-1] == "[DONE]"
        last = json.loads(events[-2])
        assert last["choices"][0]["finish_reason"] == "length"
        n_text = sum(1 for e in events[:-1] if json.loads(e)["choices"][0]["text"])
        assert n_text == 3000
        assert d.proc.wait(60) == 0
        log = d.log()
        assert "Terminated: stopping; 1 requests running" in log
        assert "stopped" in log


def test_drain_timeout_cuts_and_exits_0():
    with Decoded(*TINY, "--drain-timeout", "1") as d:
        s = open_stream(d.port, dict(LONG, max_tokens=16000))
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        t0 = time.time()
        d.proc.send_signal(signal.SIGTERM)
        rest = read_all(s)
        assert d.proc.wait(30) == 0
        assert time.time() - t0 < 20
        events = sse_events(rest)
        # the stream ends with an error event naming the shutdown, then [DONE]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["type"] == "service_unavailable"
        assert "drain timeout: cutting 1 requests" in d.log()


def test_sighup_without_peers_changes_nothing():
    # the configuration is read again (test_disagg_reload.py applies peers)
    with Decoded(*TINY) as d:
        d.proc.send_signal(signal.SIGHUP)
        time.sleep(0.2)
        assert d.proc.poll() is None
        assert d.request("GET", "/health")[0] == 200
        assert "SIGHUP: no prefill peers before or after: nothing to change" in d.log()
        assert d.stop() == 0


def test_second_signal_cuts_at_once():
    with Decoded(*TINY, "--drain-timeout", "600") as d:
        s = open_stream(d.port, dict(LONG, max_tokens=16000))
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        d.proc.send_signal(signal.SIGINT)
        read_all(s)
        assert d.proc.wait(30) == 0


def test_notify_ready_only_when_port_accepts():
    with NotifySocket(60) as ns, Decoded(*TINY, env={"NOTIFY_SOCKET": ns.path}, wait=False) as d:
        messages = []
        while True:
            msg = ns.recv()
            messages.append(msg)
            if "READY=1" in msg.split("\n"):
                # right now, before anything else: both ports must accept
                socket.create_connection(("127.0.0.1", d.port), timeout=5).close()
                socket.create_connection(("127.0.0.1", d.admin_port), timeout=5).close()
                break
        assert any(m.startswith("STATUS=loading model") for m in messages), messages
        d.wait_ready()
        assert d.request("GET", "/health")[0] == 200
        d.proc.send_signal(signal.SIGTERM)
        while ns.recv() != "STOPPING=1":
            pass
        assert d.proc.wait(30) == 0


def test_port_in_use_fails_without_ready():
    with NotifySocket(0.5) as ns, socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        d = Decoded(*TINY, env={"NOTIFY_SOCKET": ns.path}, wait=False)
        d.port = blocker.getsockname()[1]
        with d:
            assert d.proc.wait(30) == 1
            assert "cannot listen on 127.0.0.1:%d" % d.port in d.log()
            msgs = []
            try:
                while True:
                    msgs.append(ns.recv())
            except socket.timeout:
                pass
            assert not any("READY=1" in m for m in msgs), msgs
            assert any(m.startswith("STATUS=failed") for m in msgs), msgs


def test_health_and_models_without_model_field():
    with Decoded(*TINY, "--served-model-name", "tiny-test") as d:
        status, body = d.json("GET", "/v1/models")
        assert status == 200 and body["data"][0]["id"] == "tiny-test"
        status, body = d.json("POST", "/v1/completions", {"prompt": [5], "max_tokens": 2})
        assert status == 200 and body["model"] == "tiny-test"
        assert d.stop() == 0


def test_watchdog_fed_while_compute_thread_lives():
    with NotifySocket(10) as ns:
        env = {"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "400000"}
        with Decoded(*TINY, env=env) as d:
            seen = 0
            deadline = time.time() + 10
            while seen < 3 and time.time() < deadline:
                if ns.recv() == "WATCHDOG=1":
                    seen += 1
            assert seen == 3
            # fed while it works, too
            status, _ = d.json("POST", "/v1/completions", {"prompt": [1], "max_tokens": 200})
            assert status == 200
            assert d.stop() == 0


def test_device_auto_says_where_and_the_kv_path(tmp_path):
    # auto serves wherever it can and says where when that is not the GPU;
    # with prefill peers it names the way KV blocks take into the pool (in
    # place on the CPU, through page-locked staging on a GPU)
    psk = write_key(tmp_path / "k.psk")
    with Decoded(*TINY, "--device", "auto", "--log-level", "info", "--prefill", "127.0.0.1:9",
                 "--kv-psk-file", psk) as d:
        assert d.request("GET", "/health")[0] == 200
        on_cpu = "--device auto: the CPU (" in d.log()
        assert ("KV channel: blocks move in place from and to the host pool" if on_cpu
                else "KV channel: the GPU pool staged through") in d.log(), d.log()
    if on_cpu:  # no usable GPU (or no CUDA in this build): cuda is refused with the reason
        d = Decoded(*TINY, "--device", "cuda", wait=False)
        with d:
            assert d.proc.wait(60) == 1
            assert "--device cuda: " in d.log(), d.log()
