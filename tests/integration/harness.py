"""Start the real decoded on loopback ports picked here, talk HTTP to it.

    from harness import Decoded, TINY
    with Decoded(*TINY, "--max-connections", "8") as d:
        status, headers, body = d.request("POST", "/v1/completions", {"prompt": [1, 2]})
        d.json("POST", "/v1/completions", {...})      # -> (status, parsed JSON)

The daemon binary comes from $DECODED (meson sets it). Its stderr goes to a
file (d.log() reads it). Every daemon is killed at the end of its `with`
block, whatever happened. A test file runs alone:
    DECODED=build/decoded/decoded venv/bin/python -m pytest tests/integration/test_decoded_limits.py -k slow
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import time

# dummy weights with a context long enough for long streams; no tokenizer
TINY = ("--load-format", "dummy", "--model-shape", '{"preset":"tiny","n_ctx":16384}',
        "--kv-cache-memory", "64MiB")


def binary():
    path = os.environ.get("DECODED")
    if not path or not os.access(path, os.X_OK):
        raise RuntimeError("set DECODED to the decoded binary")
    return path


def default_model():
    """The default model's path, or None (tests that need it skip with 77)."""
    p = os.environ.get("PDSERVE_MODEL")
    return p if p and os.path.isfile(p) else None


def wait_for(cond, timeout=60, what="condition", poll=0.05):
    """Poll cond() until it is true; AssertionError naming `what` after timeout s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(poll)
    raise AssertionError("timed out waiting for " + what)


def cpu_s(pid):
    """CPU seconds (user + system) process pid has used so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_until_closed(s, timeout=10):
    """Everything socket s receives until the server closes it (EOF or a
    reset), waiting at most timeout s for each read."""
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            b = s.recv(4096)
            if not b:
                break
            data += b
    except ConnectionResetError:
        pass
    return data


def post_and_hold(port, path, body):
    """POST body (JSON) on a raw connection and return the socket unread: a
    client that can then leave mid-request (close it)."""
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))
    return s


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Daemon:
    """What starting, watching and stopping a daemon share: the environment
    (no PDSERVE_* or NOTIFY_SOCKET from outside, plus extra_env), the log
    file, waiting for /health, and the clean stop every `with` block checks
    (exit 0 on SIGTERM, no sanitizer report). Subclasses set `name`, build
    the command line and say how to GET their health and metrics."""

    name = "daemon"

    def _spawn(self, cmd):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PDSERVE_")}
        env.pop("NOTIFY_SOCKET", None)
        env.update(self.extra_env)
        self.logf = tempfile.NamedTemporaryFile(prefix=self.name + "-", suffix=".log",
                                                delete=False)
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT, env=env)

    def _health(self):
        raise NotImplementedError

    def _admin_text(self, path):
        raise NotImplementedError

    def wait_ready(self):
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s:\n%s" % (self.name, self.proc.returncode,
                                                               self.log()))
            try:
                if self._health() == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("%s did not come up:\n%s" % (self.name, self.log()))

    def _start_ready(self, spawn, repick):
        """spawn() and wait until ready. A port picked here can be taken
        between free_port and the daemon's bind (UCX's data listeners of
        daemons in tests running beside this one take random ports): when the
        daemon exits saying so, repick() names new ports (False: they were
        given, not picked) and it starts again, at most three times."""
        for attempt in range(3):
            spawn()
            try:
                self.wait_ready()
                return
            except RuntimeError:
                if (attempt == 2 or self.proc.poll() is None or
                        "Address already in use" not in self.log() or not repick()):
                    raise
                os.unlink(self.logf.name)

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Send sig and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        # a clean stop is part of every test: exit 0, and under sanitizers
        # no leak or undefined behaviour reported
        problem = None
        if self.proc and self.proc.poll() is None:
            try:
                rc = self.stop(signal.SIGTERM, timeout=60)
                if rc != 0:
                    problem = "%s exited with %d on SIGTERM" % (self.name, rc)
            except subprocess.TimeoutExpired:
                problem = "%s did not stop on SIGTERM" % self.name
        log = self.log() if self.proc else ""
        for bad in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            if bad in log:
                problem = problem or "sanitizer report in the %s log" % self.name
        if exc[0] is not None or problem:
            print("---- %s log ----\n%s" % (self.name, log))
        if self.proc:
            os.unlink(self.logf.name)
        if problem and exc[0] is None:
            raise AssertionError(problem)

    def log(self):
        with open(self.logf.name, errors="replace") as f:
            return f.read()

    def metrics(self):
        out = {}
        for line in self._admin_text("/metrics").splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def metric(self, prefix):
        """Sum of every series whose name (with labels) starts with prefix."""
        return sum(v for k, v in self.metrics().items() if k.startswith(prefix))


class Decoded(_Daemon):
    name = "decoded"

    def __init__(self, *args, env=None, wait=True, timeout=120):
        self.args = list(args)
        self.extra_env = env or {}
        self.wait = wait
        self.timeout = timeout
        self.proc = None
        self._pick_ports()

    def _pick_ports(self):
        self.port = free_port()
        self.admin_port = free_port()
        while self.admin_port == self.port:
            self.admin_port = free_port()
        return True

    # -- lifecycle --
    def start(self):
        def spawn():
            self._spawn([binary(), "--port", str(self.port), "--admin-port",
                         str(self.admin_port)] + self.args)
        if self.wait:
            self._start_ready(spawn, self._pick_ports)
        else:
            spawn()
        return self

    def _health(self):
        return self.request("GET", "/health", timeout=2)[0]

    def _admin_text(self, path):
        status, _, data = self.request("GET", path, admin=True)
        assert status == 200
        return data.decode()

    @property
    def base_url(self):
        return "http://127.0.0.1:%d/v1" % self.port

    # -- HTTP --
    def request(self, method, path, body=None, headers=None, timeout=60, admin=False):
        """(status, headers dict (lower-case keys), body bytes)."""
        port = self.admin_port if admin else self.port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            h = {"Content-Type": "application/json"}
            h.update(headers or {})
            if body is not None and not isinstance(body, (bytes, bytearray)):
                body = json.dumps(body).encode()
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            conn.close()

    def json(self, method, path, body=None, **kw):
        status, _, data = self.request(method, path, body, **kw)
        try:
            return status, json.loads(data)
        except ValueError:
            return status, data


def sse_events(body):
    """The data: payloads of an SSE body, in order."""
    out = []
    for block in body.decode().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                out.append(line[6:])
    return out


def assert_error(status, body, want_status, param=None):
    assert status == want_status, (status, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


# ---- prefilld, for the disaggregated tests (tests/integration/test_disagg.py) ----

def prefilld_binary():
    path = os.environ.get("PREFILLD")
    if not path or not os.access(path, os.X_OK):
        raise RuntimeError("set PREFILLD to the prefilld binary")
    return path


def write_key(path, key=None, key_id="k1"):
    """A key file as prefilld --gen-psk writes it: one line "ID HEX64", mode 0600."""
    key = key or os.urandom(32)
    with open(path, "w") as f:
        f.write("%s %s\n" % (key_id, key.hex()))
    os.chmod(path, 0o600)
    return str(path)


class Prefilld(_Daemon):
    """The real prefilld on loopback ports picked here (kv_port, admin_port),
    or on the ones given (a restart on the same port). Killed at the end of
    its `with` block; a clean stop must exit 0 with no sanitizer report."""

    name = "prefilld"

    def __init__(self, *args, psk, kv_port=None, env=None, timeout=120):
        self.args = list(args)
        self.psk = psk
        self.given_kv_port = kv_port
        self._pick_ports()
        self.extra_env = env or {}
        self.timeout = timeout
        self.proc = None

    def _pick_ports(self):
        """The KV port given (a restart on the same port) stays; the rest are picked."""
        self.kv_port = self.given_kv_port or free_port()
        self.admin_port = free_port()
        while self.admin_port == self.kv_port:
            self.admin_port = free_port()

    def _repick(self):
        if self.given_kv_port and "(admin address): Address already in use" not in self.log():
            return False  # the KV port given is the one taken
        self._pick_ports()
        return True

    def start(self):
        def spawn():
            self._spawn([prefilld_binary(), "--kv-port", str(self.kv_port), "--admin-port",
                         str(self.admin_port), "--kv-psk-file", str(self.psk)] + self.args)
        self._start_ready(spawn, self._repick)
        return self

    def _health(self):
        return self.request("GET", "/health", timeout=2)[0]

    def _admin_text(self, path):
        status, data = self.request("GET", path)
        assert status == 200
        return data.decode()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.kv_port

    def send(self, sig):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """As any daemon's, but a stopped (SIGSTOP) prefilld is woken first."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        return super().stop(sig, timeout)

    def request(self, method, path, timeout=10):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        try:
            conn.request(method, path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()
