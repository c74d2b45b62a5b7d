"""SIGHUP re-reads decoded's configuration (the --config file, the
environment, the flags winning as at start) and applies the prefill peer
list, --kv-key-id and --local-prefill-max-tokens in place: new peers connect,
removed ones take no new request and close once their transfers are over,
unchanged ones keep their sessions; an invalid configuration changes nothing.
prefilld's SIGHUP: its --log-level and --drain-timeout, and its keys.

Tiny dummy weights (token-id prompts): nothing here needs the real model.
One case alone:
    DECODED=build/decoded/decoded PREFILLD=build/prefilld/prefilld \\
    venv/bin/python -m pytest tests/integration/test_disagg_reload.py -k swap
"""
import concurrent.futures as cf
import json
import os
import random
import signal
import subprocess

from harness import Decoded, Prefilld, binary, free_port, prefilld_binary, write_key
from test_disagg import peer_up, served_name, wait_for

MODEL = ("--load-format", "dummy", "--model-shape", '{"preset":"tiny","n_ctx":4096}')
MEM = ("--kv-cache-memory", "64MiB")
N_VOCAB = 256


def prompt(n, salt=0):
    rng = random.Random(n * 7919 + salt)
    return [rng.randrange(1, N_VOCAB - 1) for _ in range(n)]


def complete(d, p, max_tokens=4, timeout=120):
    status, out = d.json("POST", "/v1/completions",
                         {"prompt": p, "max_tokens": max_tokens, "temperature": 0,
                          "ignore_eos": True}, timeout=timeout)
    assert status == 200, (status, out)
    return out["choices"][0]["text"]


def write_cfg(path, **opts):
    """decoded's --config file: option names as keys ('_' for '-')."""
    with open(path, "w") as f:
        json.dump({k.replace("_", "-"): v for k, v in opts.items()}, f)


def hup(d, marker, n_before):
    """SIGHUP, then wait for the n_before+1-th line containing marker."""
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: d.log().count(marker) > n_before, 30, d.name + "'s reload: " + marker)


def peer_gauge(d, addr):
    return d.metric('pdserve:kv_peer_up{model_name="%s",peer="%s"}' % (d.model_name, addr))


def served_by(d, peers, n, salt):
    """n requests; how far each peer's prefill counter moved."""
    before = [p.metric("pdserve:prefill_requests_total") for p in peers]
    for i in range(n):
        complete(d, prompt(20 + i, salt))
    return [p.metric("pdserve:prefill_requests_total") - b for p, b in zip(peers, before)]


def test_sighup_swaps_prefill_peers_and_keeps_unchanged_sessions(tmp_path):
    psk = write_key(tmp_path / "k.psk")
    cfg = tmp_path / "decoded.json"
    base = dict(kv_psk_file=str(psk), local_prefill_max_tokens=0)
    with Prefilld(*MODEL, *MEM, psk=psk) as a, Prefilld(*MODEL, *MEM, psk=psk) as b:
        write_cfg(cfg, prefill=[a.addr], **base)
        with Decoded(*MODEL, *MEM, "--config", str(cfg)) as d:
            d.model_name = served_name(d)
            wait_for(lambda: peer_up(d, a.addr), 60, "a session to A")
            assert served_by(d, [a, b], 1, 1) == [1, 0]
            assert d.metric("pdserve:prompt_tokens_total") == 0, "prefilled locally"
            hs = d.metric("pdserve:kv_handshakes_total")

            # the same list again: no session is dropped or made
            hup(d, "SIGHUP: prefill peers: unchanged; 1 kept", 0)
            assert peer_up(d, a.addr)
            assert "KV session down" not in d.log()
            assert served_by(d, [a, b], 1, 2) == [1, 0]
            assert d.metric("pdserve:kv_handshakes_total") == hs

            # invalid configurations change nothing: a file that does not
            # parse, a value out of range, a peer that does not resolve, a
            # peer named twice, a key id the key file lacks
            bad = [("{\"prefill\": [", "configuration not reloaded, nothing changed"),
                   (dict(prefill=[b.addr], kv_lease_ms=1, **base), "kv-lease-ms"),
                   (dict(prefill=[a.addr, "nohostport"], **base), "nohostport"),
                   (dict(prefill=[b.addr, a.addr, b.addr], **base),
                    "--prefill: %s is named twice" % b.addr),
                   (dict(prefill=[b.addr], kv_key_id="nope", **base), "--kv-key-id nope")]
            for i, (content, why) in enumerate(bad):
                if isinstance(content, str):
                    cfg.write_text(content)
                else:
                    write_cfg(cfg, **content)
                n_err = d.log().count("SIGHUP: configuration not reloaded") + \
                    d.log().count("SIGHUP: prefill peers and key id not changed")
                d.proc.send_signal(signal.SIGHUP)
                wait_for(lambda: d.log().count("SIGHUP: configuration not reloaded") +
                         d.log().count("SIGHUP: prefill peers and key id not changed") > n_err,
                         30, "the refused reload %d" % i)
                line = [ln for ln in d.log().splitlines() if "not reloaded" in ln or
                        "not changed" in ln][-1]
                assert why in line, (i, line)
                assert d.request("GET", "/health")[0] == 200
                assert peer_up(d, a.addr) and not peer_up(d, b.addr)
                assert served_by(d, [a, b], 1, 10 + i) == [1, 0], i
                assert d.metric("pdserve:kv_handshakes_total") == hs
                assert "KV session down" not in d.log()
            # the peer that did not resolve left no series behind
            assert "nohostport" not in d.request("GET", "/metrics", admin=True)[2].decode()

            # B instead of A
            write_cfg(cfg, prefill=[b.addr], **base)
            hup(d, "SIGHUP: prefill peers: added %s; removed %s (closed); 0 kept"
                % (b.addr, a.addr), 0)
            wait_for(lambda: peer_up(d, b.addr), 60, "a session to B")
            # A's session is closed on decoded's side and therefore on A's
            assert peer_gauge(d, a.addr) == 0
            assert d.metric("pdserve:kv_sessions") == 1
            wait_for(lambda: a.metric("pdserve:kv_sessions") == 0, 30, "A to see it closed")
            assert served_by(d, [a, b], 3, 3) == [0, 3]
            assert d.metric("pdserve:prompt_tokens_total") == 0, "prefilled locally"
            assert d.metric("pdserve:prefill_failovers_total") == 0


def test_removed_peer_finishes_its_transfer_before_it_is_closed(tmp_path):
    psk = write_key(tmp_path / "k.psk")
    cfg = tmp_path / "decoded.json"
    # leases long enough to keep A's session through the stop below
    lease = ("--kv-lease-ms", "30000")
    base = dict(kv_psk_file=str(psk), local_prefill_max_tokens=0, kv_lease_ms=30000,
                prefill_timeout_ms=60000)
    # the new list names a peer that is not there: a new request then has
    # no peer but A, which it must not get
    dead = "127.0.0.1:%d" % free_port()
    with Prefilld(*MODEL, *MEM, *lease, psk=psk) as a:
        write_cfg(cfg, prefill=[a.addr], **base)
        with Decoded(*MODEL, *MEM, "--config", str(cfg)) as d:
            d.model_name = served_name(d)
            wait_for(lambda: peer_up(d, a.addr), 60, "a session to A")
            q = prompt(200, 4)
            a.send(signal.SIGSTOP)
            ex = cf.ThreadPoolExecutor(1)
            try:
                fut = ex.submit(complete, d, q)
                wait_for(lambda: d.metric("pdserve:num_requests_remote_prefill") == 1, 30,
                         "the request to wait on A")
                write_cfg(cfg, prefill=[dead], **base)
                hup(d, "SIGHUP: prefill peers: added %s; removed %s (closing after 1 "
                    "transfer); 0 kept" % (dead, a.addr), 0)
                # a new request does not go to A (stopped: it would hang
                # there) but fails over to local prefill
                complete(d, prompt(20, 5))
                assert d.metric("pdserve:prompt_tokens_total") == 20
                assert d.metric('pdserve:prefill_failovers_total{model_name="%s",'
                                'reason="no_peer"}' % d.model_name) == 1
                assert peer_up(d, a.addr) and not fut.done()
            finally:
                a.send(signal.SIGCONT)
            fut.result(timeout=120)
            ex.shutdown()
            # A finished its transfer (no failover for it), then was closed
            wait_for(lambda: peer_gauge(d, a.addr) == 0, 30, "A's session to close")
            assert a.metric("pdserve:prefill_requests_total") == 1
            assert d.metric("pdserve:prefill_failovers_total") == 1
            assert d.metric("pdserve:remote_prompt_tokens_total") == 200
            assert "removed from the peer list by a reload" in d.log()
            wait_for(lambda: a.metric("pdserve:kv_sessions") == 0, 30, "A to see it closed")
            wait_for(lambda: d.metric("pdserve:kv_cache_blocks_used") == 0, 10, "blocks back")


def test_first_peer_by_reload_and_an_empty_list_prefills_locally(tmp_path):
    psk = write_key(tmp_path / "k.psk")
    cfg = tmp_path / "decoded.json"
    base = dict(kv_psk_file=str(psk), local_prefill_max_tokens=0)
    with Prefilld(*MODEL, *MEM, psk=psk) as a:
        write_cfg(cfg, local_prefill_max_tokens=0)  # no key file yet: no channel to make
        with Decoded(*MODEL, *MEM, "--config", str(cfg)) as d:
            d.model_name = served_name(d)
            complete(d, prompt(10, 6))
            assert d.metric("pdserve:prompt_tokens_total") == 10
            hup(d, "no prefill peers before or after", 0)
            # the first peer: the KV channel is made on the reload, with the
            # kv-* options of the configuration read then (the key file too)
            write_cfg(cfg, prefill=[a.addr], **base)
            hup(d, "SIGHUP: prefill peers: added 1 (first: %s)" % a.addr, 0)
            wait_for(lambda: peer_up(d, a.addr), 60, "a session to A")
            assert served_by(d, [a], 2, 7) == [2]
            assert d.metric("pdserve:prompt_tokens_total") == 10
            # and none again: prompts prefill locally, not "no healthy peer"
            write_cfg(cfg, prefill=[], **base)
            hup(d, "removed %s (closed); 0 kept" % a.addr, 0)
            complete(d, prompt(12, 8))
            assert d.metric("pdserve:prompt_tokens_total") == 22
            assert d.metric("pdserve:prefill_failovers_total") == 0
            assert peer_gauge(d, a.addr) == 0
            # the flags still win over the file: --prefill on the command
            # line is what a reload keeps
    with Prefilld(*MODEL, *MEM, psk=psk) as a, Prefilld(*MODEL, *MEM, psk=psk) as b:
        write_cfg(cfg, prefill=[b.addr], **base)
        with Decoded(*MODEL, *MEM, "--config", str(cfg), "--prefill", a.addr) as d:
            d.model_name = served_name(d)
            wait_for(lambda: peer_up(d, a.addr), 60, "a session to A")
            hup(d, "SIGHUP: prefill peers: unchanged; 1 kept", 0)
            assert served_by(d, [a, b], 1, 9) == [1, 0]


def test_reloaded_key_id_is_used_by_new_sessions_only(tmp_path):
    # key directories (one file per key, named for its id) on both sides
    dirs = []
    old, new = os.urandom(32), os.urandom(32)
    for side in ("p", "d"):
        kd = tmp_path / side
        kd.mkdir(mode=0o750)
        write_key(kd / "k-old", old, "k-old")
        write_key(kd / "k-new", new, "k-new")
        dirs.append(kd)
    cfg = tmp_path / "decoded.json"
    base = dict(kv_psk_file=str(dirs[1]), local_prefill_max_tokens=0)
    with Prefilld(*MODEL, *MEM, psk=dirs[0]) as a, Prefilld(*MODEL, *MEM, psk=dirs[0]) as b:
        write_cfg(cfg, prefill=[a.addr], kv_key_id="k-old", **base)
        with Decoded(*MODEL, *MEM, "--config", str(cfg)) as d:
            d.model_name = served_name(d)
            wait_for(lambda: peer_up(d, a.addr), 60, "a session to A")
            hs = a.metric("pdserve:kv_handshakes_total")
            write_cfg(cfg, prefill=[a.addr, b.addr], kv_key_id="k-new", **base)
            hup(d, "SIGHUP: prefill peers: added %s; 1 kept; new sessions use key k-new"
                % b.addr, 0)
            wait_for(lambda: peer_up(d, b.addr), 60, "a session to B")
            assert "KV session up: prefill peer %s (key k-new;" % b.addr in d.log()
            # A's session, made with k-old, goes on
            assert "KV session up: prefill peer %s (key k-old;" % a.addr in d.log()
            assert a.metric("pdserve:kv_handshakes_total") == hs
            assert "KV session down" not in d.log()
            assert sum(served_by(d, [a, b], 4, 11)) == 4


def test_sighup_reloads_prefilld_log_level_and_drain_timeout(tmp_path):
    """prefilld reads its configuration again on SIGHUP: --log-level and
    --drain-timeout take effect (the drain announced at SIGTERM uses the new
    one), the keys are re-read; an invalid file changes nothing."""
    psk = write_key(tmp_path / "k.psk")
    cfg = tmp_path / "prefilld.json"
    write_cfg(cfg, log_level="info", drain_timeout=30)
    with Prefilld(*MODEL, *MEM, "--config", str(cfg), psk=psk) as p:
        write_cfg(cfg, log_level="debug", drain_timeout=7)
        hup(p, "SIGHUP: log level debug, drain timeout 7s", 0)
        # the keys' line follows the options' line
        wait_for(lambda: "SIGHUP: 1 keys loaded from" in p.log(), 30, "the keys re-read")
        with open(cfg, "w") as f:
            f.write('{"drain-timeout": ')  # cut short: not JSON
        hup(p, "SIGHUP: configuration not reloaded, nothing changed", 0)
        assert p.log().count("keys loaded from") == 1, "keys re-read from a refused reload"
        p.send(signal.SIGTERM)
        wait_for(lambda: "draining for up to 7s" in p.log(), 30, "the drain with the new timeout")


def test_sighup_reloads_decoded_log_level(tmp_path):
    cfg = tmp_path / "decoded.json"
    write_cfg(cfg, log_level="info")
    with Decoded(*MODEL, *MEM, "--config", str(cfg)) as d:
        write_cfg(cfg, log_level="debug", max_num_seqs=7)
        hup(d, "SIGHUP: log level debug", 0)
        # what the table does not mark reloadable is named, and kept
        assert "SIGHUP: --max-num-seqs changed: kept until a restart" in d.log()
        assert d.request("GET", "/health")[0] == 200
        write_cfg(cfg, log_level="loud")  # not a level: refused, nothing changes
        hup(d, "SIGHUP: configuration not reloaded, nothing changed", 0)
        assert "log-level" in d.log().rsplit("not reloaded", 1)[1].splitlines()[0]


def test_sighup_while_stopping_is_not_a_reload(tmp_path):
    """A SIGHUP during the drain is not answered with RELOADING/READY (READY
    after STOPPING would tell systemd the service is back): logged, ignored."""
    with Decoded(*MODEL, *MEM) as d:
        ex = cf.ThreadPoolExecutor(1)
        fut = ex.submit(d.json, "POST", "/v1/completions",
                        {"prompt": [1, 2, 3], "max_tokens": 3000, "ignore_eos": True},
                        timeout=120)
        wait_for(lambda: d.metric("pdserve:num_requests_running") == 1, 30, "a running request")
        d.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining for up to" in d.log(), 10, "the drain")
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP while stopping: not reloaded" in d.log(), 10, "the refusal")
        assert "configuration not reloaded" not in d.log() and "SIGHUP: no prefill" not in d.log()
        status, out = fut.result(timeout=120)
        ex.shutdown()
        assert status == 200 and out["usage"]["completion_tokens"] == 3000, out


def test_a_peer_named_twice_is_refused_at_start(tmp_path):
    psk = write_key(tmp_path / "k.psk")
    peer = "127.0.0.1:%d" % free_port()
    r = subprocess.run([binary(), *MODEL, *MEM, "--kv-psk-file", str(psk), "--prefill", peer,
                        "--prefill", peer, "--port", str(free_port()), "--admin-port",
                        str(free_port())], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "--prefill: %s is named twice" % peer in r.stderr + r.stdout, r.stderr


def test_prefilld_says_its_device_and_kv_path(tmp_path):
    """auto says where it runs when that is not the GPU, and the way KV blocks
    leave the pool; without a usable GPU, cuda is refused with the reason
    (test_disagg_gpu.py runs prefilld on a GPU, emulated or real)."""
    psk = write_key(tmp_path / "k.psk")
    with Prefilld(*MODEL, *MEM, "--device", "auto", "--log-level", "info", psk=psk) as p:
        on_cpu = "--device auto: the CPU (" in p.log()
        assert ("KV channel: blocks move in place from and to the host pool" if on_cpu
                else "KV channel: the GPU pool staged through") in p.log(), p.log()
    if on_cpu:
        r = subprocess.run([prefilld_binary(), *MODEL, *MEM, "--kv-psk-file", str(psk),
                            "--device", "cuda", "--kv-port", str(free_port()), "--admin-port",
                            str(free_port())], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0
        assert "--device cuda: " in r.stderr + r.stdout
