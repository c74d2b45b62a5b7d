"""Caps on what clients can make decoded hold: slow readers, idle
connections, the connection cap, the header deadline (slowloris, slow
bodies, keep-alive), the per-source cap, the waiting queue; cancellation
when a client leaves; metrics. Dummy weights (fast, content irrelevant)."""
import json
import os
import resource
import socket
import threading
import time

import pytest

from harness import Decoded, TINY, cpu_s, read_until_closed, sse_events, wait_for

GOOD = {"prompt": [1, 2, 3], "max_tokens": 4, "temperature": 0}


def raw_post(port, body, rcvbuf=None):
    """A socket that sent a POST and has read nothing."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    data = json.dumps(body).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return s


def serves(d):
    status, body = d.json("POST", "/v1/completions", GOOD)
    assert status == 200, body
    assert body["usage"]["completion_tokens"] == 4


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        try:  # root may raise the hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, max(n, hard)))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= n


def test_slow_reader_is_cut_and_others_served():
    with Decoded(*TINY, "--max-client-buffer", "64KiB") as d:
        # a client that asks for a long, fat stream and never reads
        s = raw_post(d.port, {"prompt": [1, 2], "max_tokens": 14000, "logprobs": 20,
                              "ignore_eos": True, "stream": True}, rcvbuf=4096)
        try:
            wait_for(lambda: d.metric("pdserve:http_slow_clients_cut_total") >= 1, 120,
                     "the slow reader to be cut")
            assert "client is not reading" in d.log()
            serves(d)
            wait_for(lambda: d.metric('pdserve:request_success_total{model_name="dummy:tiny+custom",'
                                      'finished_reason="abort"}') >= 1, 30, "the abort")
            assert d.metric("pdserve:num_requests_running") == 0
        finally:
            s.close()
        serves(d)


def test_1000_idle_connections_then_a_request():
    if not raise_nofile(1200):
        pytest.skip("cannot raise RLIMIT_NOFILE to 1200")
    with Decoded(*TINY) as d:
        fds_before = len(os.listdir("/proc/%d/fd" % d.proc.pid))
        socks = []
        try:
            for _ in range(1000):
                socks.append(socket.create_connection(("127.0.0.1", d.port), timeout=10))
            wait_for(lambda: d.metric("pdserve:http_connections") >= 1000, 30,
                     "1000 accepted connections")
            serves(d)
        finally:
            for s in socks:
                s.close()
        wait_for(lambda: d.metric("pdserve:http_connections") <= 1, 30, "connections to close")
        serves(d)
        # every socket was closed: no descriptor leaked (the admin one may linger)
        wait_for(lambda: len(os.listdir("/proc/%d/fd" % d.proc.pid)) <= fds_before + 1, 10,
                 "descriptors to be released")


def test_connection_cap_holds_and_idle_ones_time_out():
    with Decoded(*TINY, "--max-connections", "8", "--header-timeout", "2") as d:
        idle = [socket.create_connection(("127.0.0.1", d.port), timeout=10) for _ in range(20)]
        try:
            time.sleep(0.5)
            # the kernel completed every handshake; decoded took only 8
            assert d.metric("pdserve:http_connections") == 8
            # a real client is served once the idle ones time out (header timeout)
            t0 = time.time()
            serves(d)
            assert time.time() - t0 < 30
            assert d.metric("pdserve:http_connections") <= 8
            # the first idle ones were closed by the daemon
            idle[0].settimeout(10)
            assert idle[0].recv(1) == b""
        finally:
            for s in idle:
                s.close()
        serves(d)


HEAD = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Padding: " + b"a" * 200 + b"\r\n")


class Trickle(threading.Thread):
    """n connections, each sending `data` one byte every `every` s from its
    connect on, until stop(); records when each was closed by the server
    (seconds after its connect) and what it said."""

    def __init__(self, port, n, data=HEAD, every=1.0):
        super().__init__(daemon=True)
        self.port, self.n, self.data, self.every = port, n, data, every
        self.socks, self.born = [], []
        self.closed = {}  # index -> (seconds after its connect, bytes received)
        self.halt = threading.Event()

    def _poke(self, i, pos):
        """Read what the server said, if anything (then it has closed: stop),
        else send the next byte."""
        s = self.socks[i]
        s.setblocking(False)
        try:
            self.closed[i] = (time.time() - self.born[i], s.recv(4096))
            return
        except BlockingIOError:
            pass
        except OSError:
            self.closed[i] = (time.time() - self.born[i], b"")
            return
        finally:
            s.setblocking(True)
        try:
            s.send(self.data[pos:pos + 1])
        except OSError:
            self.closed[i] = (time.time() - self.born[i], b"")

    def run(self):
        for _ in range(self.n):  # each connection says its first byte at once
            if self.halt.is_set():
                return
            try:
                self.socks.append(socket.create_connection(("127.0.0.1", self.port), timeout=10))
            except OSError:
                continue
            self.born.append(time.time())
            self._poke(len(self.socks) - 1, 0)
        pos = 1
        while not self.halt.wait(self.every) and pos < len(self.data):
            for i in range(len(self.socks)):
                if i not in self.closed:
                    self._poke(i, pos)
            pos += 1

    def stop(self):
        self.halt.set()
        self.join(30)
        for s in self.socks:
            s.close()


def refused(d, reason):
    return sum(v for k, v in d.metrics().items()
               if k.startswith("pdserve:http_connections_refused_total")
               and 'reason="%s"' % reason in k)


def test_slowloris_headers_cut_at_the_deadline():
    with Decoded(*TINY, "--header-timeout", "2") as d:
        t = Trickle(d.port, 5, every=0.25)
        t.start()
        try:
            wait_for(lambda: len(t.closed) == 5, 10, "the trickling connections to be cut")
        finally:
            t.stop()
        for when, got in t.closed.values():
            # at the deadline (2 s from the accept), not at the idle timeout
            # that every trickled byte would restart
            assert 1.5 < when < 3.5, when
            assert got.startswith(b"HTTP/1.1 408") and b"request_timeout" in got, got
        assert refused(d, "deadline") == 5
        serves(d)


def test_slowloris_at_the_connection_cap_does_not_hold_the_api():
    """1,030 connections trickling a header byte a second, past the default
    cap of 1,024: a real request waits at most --header-timeout + 1 s."""
    if not raise_nofile(2400):
        pytest.skip("cannot raise RLIMIT_NOFILE to 2400")
    timeout = 5
    with Decoded(*TINY, "--header-timeout", str(timeout)) as d:
        cpu0, t_start = cpu_s(d.proc.pid), time.time()
        t = Trickle(d.port, 1030, every=1.0)
        t.start()
        try:
            wait_for(lambda: d.metric("pdserve:http_connections") >= 1024, 30,
                     "the cap to be reached")
            t0 = time.time()
            status, body = d.json("POST", "/v1/completions", GOOD, timeout=30)
            waited = time.time() - t0
            assert status == 200, body
            print("a request at the cap during a slowloris waited %.2f s" % waited)
            assert waited < timeout + 1, waited
            assert not t.halt.is_set() and len(t.closed) < 1030  # it was still going on
            # a trickle costs the daemon little (a sanitizer build gets 3x the room)
            cpu, wall = cpu_s(d.proc.pid) - cpu0, time.time() - t_start
            print("decoded used %.2f CPU s over %.1f s of it" % (cpu, wall))
            slow = 3 if os.environ.get("PDSERVE_SANITIZE", "none") not in ("", "none") else 1
            assert cpu < 0.5 * wall * slow, (cpu, wall)
        finally:
            t.stop()
        assert refused(d, "deadline") >= 1  # room was made by cutting the slow ones
        serves(d)


def test_slow_body_cut_and_keep_alive_requests_timed_too():
    with Decoded(*TINY, "--header-timeout", "2") as d:
        body = json.dumps(GOOD).encode()
        # headers at once, then the body a byte every 0.5 s for 1.5 s, then
        # nothing (a byte sent after the cut would draw a reset that can
        # discard the answer): cut 2 s after the headers
        s = socket.create_connection(("127.0.0.1", d.port))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                  % len(body))
        t0 = time.time()
        for b in body[:3]:
            s.send(bytes([b]))
            time.sleep(0.5)
        got = read_until_closed(s)
        assert got.startswith(b"HTTP/1.1 408") and b"body" in got, got
        assert 1.5 < time.time() - t0 < 5
        s.close()
        # a first request in full, then the second one's head trickled on the
        # same connection: timed from its first byte
        s = socket.create_connection(("127.0.0.1", d.port))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                  % (len(body), body))
        s.settimeout(30)
        first = b""
        while b'"completion_tokens"' not in first:
            first += s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        t0 = time.time()
        for b in HEAD[:3]:
            s.send(bytes([b]))
            time.sleep(0.5)
        got = read_until_closed(s)
        assert b"HTTP/1.1 408" in got, got
        assert 1.5 < time.time() - t0 < 5
        s.close()
        serves(d)


def test_chunked_body_then_keep_alive():
    """A chunked request is followed to its end: the connection is not cut
    while the server answers, and the next request on it is served."""
    with Decoded(*TINY, "--header-timeout", "2") as d:
        body = json.dumps(GOOD).encode()
        s = socket.create_connection(("127.0.0.1", d.port))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        s.settimeout(30)
        first = b""
        while b'"completion_tokens"' not in first:
            first += s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        time.sleep(1.0)  # idle between requests is the idle timeout's, not a deadline
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        second = b""
        while b"\r\n\r\n" not in second:
            second += s.recv(65536)
        assert second.startswith(b"HTTP/1.1 200"), second
        s.close()


def test_nul_in_headers_refused():
    with Decoded(*TINY, "--api-key", "sekret") as d:
        s = socket.create_connection(("127.0.0.1", d.port))
        body = json.dumps(GOOD).encode()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                  b"Authorization: Bearer sekret\x00junk\r\nContent-Length: %d\r\n\r\n%s"
                  % (len(body), body))
        got = read_until_closed(s)
        s.close()
        assert got.startswith(b"HTTP/1.1 400") and b"NUL" in got, got
        assert refused(d, "bad_request") == 1
        status, out = d.json("POST", "/v1/completions", GOOD,
                             headers={"Authorization": "Bearer sekret"})
        assert status == 200, out


def test_connections_per_source_capped():
    with Decoded(*TINY, "--max-connections-per-source", "3") as d:
        held = [socket.create_connection(("127.0.0.1", d.port)) for _ in range(3)]
        try:
            wait_for(lambda: d.metric("pdserve:http_connections") >= 3, 10, "3 connections")
            s = socket.create_connection(("127.0.0.1", d.port))
            got = read_until_closed(s)
            s.close()
            assert got.startswith(b"HTTP/1.1 429") and b"too_many_connections" in got, got
            assert refused(d, "per_source") == 1
        finally:
            for h in held:
                h.close()
        wait_for(lambda: d.metric("pdserve:http_connections") <= 1, 10, "connections closed")
        serves(d)


def test_full_queue_is_429_with_retry_after():
    with Decoded(*TINY, "--max-num-seqs", "1", "--max-waiting", "1") as d:
        long = {"prompt": [1, 2], "max_tokens": 14000, "ignore_eos": True, "stream": True}
        a = raw_post(d.port, long)
        wait_for(lambda: d.metric("pdserve:num_requests_running") == 1, 30, "the first to run")
        b = raw_post(d.port, long)
        wait_for(lambda: d.metric("pdserve:num_requests_waiting") == 1, 30, "the second to wait")
        status, headers, data = d.request("POST", "/v1/completions", GOOD)
        assert status == 429, data
        assert headers["retry-after"] == "1"
        assert json.loads(data)["error"]["type"] == "rate_limit_error"
        a.close()
        b.close()
        wait_for(lambda: d.metric("pdserve:num_requests_running") == 0 and
                 d.metric("pdserve:num_requests_waiting") == 0, 60, "the queue to empty")
        serves(d)


def test_client_gone_cancels_non_streamed_request():
    with Decoded(*TINY) as d:
        s = raw_post(d.port, {"prompt": [1, 2], "max_tokens": 15000, "ignore_eos": True})
        wait_for(lambda: d.metric("pdserve:num_requests_running") == 1, 30, "it to run")
        s.close()
        wait_for(lambda: d.metric("pdserve:num_requests_running") == 0, 30, "the cancel")
        assert "abort (client gone)" in d.log()
        assert d.metric("pdserve:kv_cache_blocks_used") == 0
        serves(d)


def test_client_gone_cancels_stream():
    with Decoded(*TINY) as d:
        s = raw_post(d.port, {"prompt": [1, 2], "max_tokens": 15000, "ignore_eos": True,
                              "stream": True})
        assert s.recv(100).startswith(b"HTTP/1.1 200")
        s.close()
        wait_for(lambda: d.metric("pdserve:num_requests_running") == 0, 30, "the cancel")
        wait_for(lambda: "abort (client gone)" in d.log(), 10, "the log line")
        serves(d)


def test_client_gone_cancels_every_choice_of_several_prompts():
    for stream in (False, True):
        with Decoded(*TINY) as d:
            s = raw_post(d.port, {"prompt": [[1, 2], [3, 4, 5], [6]], "max_tokens": 15000,
                                  "ignore_eos": True, "stream": stream})
            wait_for(lambda: d.metric("pdserve:num_requests_running") == 3, 30, "3 choices")
            s.close()
            wait_for(lambda: d.metric("pdserve:num_requests_running") == 0, 30, "the cancels")
            wait_for(lambda: "abort (client gone)" in d.log(), 10, "the log line")
            assert "choices=3" in d.log()
            assert d.metric('pdserve:request_success_total{model_name="dummy:tiny+custom",'
                            'finished_reason="abort"}') == 3
            wait_for(lambda: d.metric("pdserve:kv_cache_blocks_used") == 0, 10, "the blocks")
            serves(d)


def test_metrics_named_like_vllm():
    with Decoded(*TINY) as d:
        serves(d)
        status, headers, data = d.request("GET", "/metrics", admin=True)
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        text = data.decode()
        for name in ["pdserve:time_to_first_token_seconds_bucket",
                     "pdserve:inter_token_latency_seconds_count",
                     "pdserve:e2e_request_latency_seconds_sum",
                     "pdserve:num_requests_running", "pdserve:num_requests_waiting",
                     "pdserve:prompt_tokens_total", "pdserve:generation_tokens_total",
                     "pdserve:kv_cache_blocks_used", "pdserve:kv_cache_blocks_free",
                     "pdserve:kv_cache_usage_perc", "pdserve:request_success_total"]:
            assert name + "{" in text, name
        m = d.metrics()
        label = '{model_name="dummy:tiny+custom"}'
        assert m["pdserve:prompt_tokens_total" + label] == 3
        assert m["pdserve:generation_tokens_total" + label] == 4
        assert m["pdserve:time_to_first_token_seconds_count" + label] == 1
        assert m["pdserve:inter_token_latency_seconds_count" + label] == 3
        assert m["pdserve:kv_cache_blocks_used" + label] == 0
        assert m["pdserve:kv_cache_blocks_free" + label] > 0
        # /metrics is on the admin address only
        assert d.request("GET", "/metrics")[0] == 404


def test_streaming_sse_shape_raw():
    with Decoded(*TINY) as d:
        status, headers, data = d.request("POST", "/v1/completions",
                                          dict(GOOD, stream=True, max_tokens=5))
        assert status == 200 and headers["content-type"] == "text/event-stream"
        events = sse_events(data)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert len(chunks) == 6
        assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 5 + ["length"]
        assert all("usage" not in c for c in chunks)
        text = "".join(c["choices"][0]["text"] for c in chunks)
        status, whole = d.json("POST", "/v1/completions", dict(GOOD, max_tokens=5))
        assert whole["choices"][0]["text"] == text
