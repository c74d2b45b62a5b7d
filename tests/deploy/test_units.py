#!/usr/bin/env python3
"""Run each installed unit's ExecStart= as systemd would and check the notify
protocol: READY=1 once serving, WATCHDOG=1 at the interval asked for,
RELOADING=1 then READY=1 on SIGHUP (ExecReload=), STOPPING=1 on SIGTERM and
exit 0.

    test_units.py BUILD_DIR

The units are staged with `meson install --destdir`; ExecStart's binary is
taken from the stage, ${CONFIGURATION_DIRECTORY} is a folder holding a config
for a tiny dummy model (the real one is not needed to test the protocol),
CREDENTIALS_DIRECTORY a folder with prefilld's key (as LoadCredential=
provides it), %i the instance "0"; prefilld@0 reads a key directory and
must pick up a second key on SIGHUP (rotation by reload). The sandboxing
settings are systemd's to apply and are not exercised here (no systemd as
PID 1): docs/operations.md."""
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def add_key(folder, name, key_id=None):
    """A key file as `prefilld --gen-psk` writes it ("ID HEX64"), 0640 as in
    /etc/pdserve/keys.d; in a key directory the file name is the id."""
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write(f"{key_id or name} {os.urandom(32).hex()}\n")
    os.chmod(path, 0o640)


def unit_service(path, instance):
    """ExecStart argv and Environment= of a unit file, %i expanded."""
    argv, env = None, {}
    with open(path) as f:
        for line in f:
            line = line.strip().replace("%i", instance)
            if line.startswith("ExecStart="):
                argv = shlex.split(line[len("ExecStart="):])
            elif line.startswith("Environment="):
                k, v = line[len("Environment="):].split("=", 1)
                env[k] = v
    if not argv:
        fail(f"{path}: no ExecStart=")
    return argv, env


class Notify:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.seen = []

    def expect(self, want, timeout, proc):
        """Wait for a message with the assignment `want`; returns it."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if proc.poll() is not None:
                fail(f"daemon exited ({proc.returncode}) before {want}; saw {self.seen}")
            self.sock.settimeout(0.2)
            try:
                msg = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            lines = msg.split("\n")
            self.seen.append(lines[0])
            if want in lines:
                return lines
        fail(f"no {want} within {timeout} s; saw {self.seen}")


def run_unit(root, prefix, unit, instance, tmp):
    argv, env_extra = unit_service(os.path.join(root, "lib/systemd/system", unit), instance)
    conf_dir = os.path.join(tmp, "etc-pdserve")
    creds = os.path.join(tmp, "credentials")
    os.makedirs(conf_dir, exist_ok=True)
    os.makedirs(creds, exist_ok=True)
    daemon = unit.split("@")[0].split(".")[0]
    name = f"{daemon}.json" if "@" not in unit else f"{daemon}-{instance}.json"
    conf = {"load-format": "dummy", "model-shape": "tiny", "admin-port": 0,
            "kv-cache-memory": "16MiB", "drain-timeout": 5}
    keys_dir = None
    if daemon == "decoded":
        conf["port"] = 0
    else:
        conf["kv-port"] = 0
        if "@" in unit:  # a key directory, re-read on reload
            keys_dir = os.path.join(tmp, f"keys.d-{instance}")
            os.makedirs(keys_dir)
            os.chmod(keys_dir, 0o750)
            add_key(keys_dir, "k1")
            conf["kv-psk-file"] = keys_dir
        else:  # LoadCredential=: a file in $CREDENTIALS_DIRECTORY
            add_key(creds, "kv.psk", key_id="k1")
            conf["kv-psk-file"] = os.path.join(creds, "kv.psk")
    with open(os.path.join(conf_dir, name), "w") as f:
        json.dump(conf, f)
    bindir = os.path.join(prefix, "bin") + "/"
    if not argv[0].startswith(bindir):
        fail(f"{unit}: ExecStart {argv[0]} not under {bindir}")
    argv[0] = root + argv[0][len(prefix):]
    argv = [a.replace("${CONFIGURATION_DIRECTORY}", conf_dir) for a in argv]
    sock_path = os.path.join(tmp, f"notify-{unit}")
    n = Notify(sock_path)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="400000",
               CONFIGURATION_DIRECTORY=conf_dir, CREDENTIALS_DIRECTORY=creds, **env_extra)
    env.pop("WATCHDOG_PID", None)
    print(f"{unit}: {' '.join(argv)}")
    log_path = os.path.join(tmp, f"{unit}.log")
    log = open(log_path, "w+")
    proc = subprocess.Popen(argv, env=env, stderr=log)
    try:
        n.expect("READY=1", 120, proc)
        n.expect("WATCHDOG=1", 5, proc)
        if keys_dir:
            add_key(keys_dir, "k2")  # rotation: the new key joins on reload
        proc.send_signal(signal.SIGHUP)
        lines = n.expect("RELOADING=1", 5, proc)
        if not any(x.startswith("MONOTONIC_USEC=") for x in lines):
            fail(f"{unit}: RELOADING=1 without MONOTONIC_USEC: {lines}")
        n.expect("READY=1", 5, proc)
        if keys_dir:
            deadline = time.monotonic() + 5
            while "2 keys loaded" not in open(log_path).read():
                if time.monotonic() > deadline:
                    fail(f"{unit}: no '2 keys loaded' after SIGHUP: {open(log_path).read()}")
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        n.expect("STOPPING=1", 10, proc)
        rc = proc.wait(30)
        if rc != 0:
            fail(f"{unit}: exit status {rc} after SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.seek(0)
        sys.stdout.write(log.read())
        log.close()
    print(f"{unit}: {' | '.join(n.seen)}")


def check_limits(path):
    """The caps every unit must carry (issue: a crash loop must not leave the
    service failed; memory and tasks bounded)."""
    keys = {}
    with open(path) as f:
        for line in f:
            k, sep, v = line.strip().partition("=")
            if sep and not k.startswith("#"):
                keys.setdefault(k, v)
    for k, want in (("StartLimitIntervalSec", "0"), ("Restart", "on-failure")):
        if keys.get(k) != want:
            fail("%s: %s=%s, want %s" % (path, k, keys.get(k), want))
    for k in ("MemoryMax", "TasksMax", "RestartSec", "LimitNOFILE"):
        if not keys.get(k):
            fail("%s: no %s=" % (path, k))


def main():
    build = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        stage = os.path.join(tmp, "stage")
        subprocess.run(["meson", "install", "-C", build, "--no-rebuild", "--quiet",
                        "--destdir", stage], check=True, stdout=subprocess.DEVNULL)
        opts = json.loads(subprocess.run(["meson", "introspect", build, "--buildoptions"],
                                         check=True, capture_output=True).stdout)
        prefix = next(o["value"] for o in opts if o["name"] == "prefix")
        root = stage + prefix
        for unit, inst in (("decoded.service", ""), ("decoded@.service", "0"),
                           ("prefilld.service", ""), ("prefilld@.service", "0")):
            check_limits(os.path.join(root, "lib/systemd/system", unit))
            run_unit(root, prefix, unit, inst, tmp)
    print("units OK")


if __name__ == "__main__":
    main()
