"""Disaggregated serving end to end: decoded --prefill to real prefilld
processes over the KV channel (real UCX, real keys), on loopback.

  * same answers: disaggregated, decoded alone and pdserve-generate agree
    (DESIGN.md's "same output" rule, as test_decoded_batching.py applies it),
    and the metrics say where each prompt was prefilled;
  * faults, each without restarting the survivor: prefilld killed or stopped
    mid-transfer, a peer with the wrong key, decoded killed mid-transfer,
    --prefill-failover=fail with no peer.

Binaries: $DECODED (run_pytest.sh's first argument), $PREFILLD and
$PDSERVE_GENERATE (meson sets them). The default model ($PDSERVE_MODEL) is
used when present, except in sanitizer builds ($PDSERVE_SANITIZE != none):
those, and machines without the model, use tiny dummy weights (token-id
prompts either way) and shorter prompts. One case alone:
    DECODED=build/decoded/decoded PREFILLD=build/prefilld/prefilld \\
    PDSERVE_GENERATE=build/common/tools/pdserve-generate \\
    venv/bin/python -m pytest tests/integration/test_disagg.py -k wrong_key
"""
import concurrent.futures as cf
import os
import random
import re
import signal
import subprocess
import time

import pytest

from harness import (Decoded, Prefilld, assert_error, default_model, free_port, post_and_hold,
                     wait_for, write_key)

SANITIZED = os.environ.get("PDSERVE_SANITIZE", "none") not in ("", "none")
MODEL_PATH = None if SANITIZED else default_model()
if MODEL_PATH:
    MODEL = ("--model", MODEL_PATH)
    N_VOCAB = 49152
    LENGTHS = [1, 2, 3, 5, 8, 13, 16, 17, 31, 32, 33, 64, 100, 128, 255, 256, 300, 512, 1000,
               2000]
    LONG = 2000
else:
    MODEL = ("--load-format", "dummy", "--model-shape", '{"preset":"tiny","n_ctx":16384}')
    N_VOCAB = 256
    LENGTHS = [1, 2, 3, 5, 8, 13, 16, 17, 31, 32, 33, 64, 100, 128, 255, 256, 300, 512] + \
        ([] if SANITIZED else [1000, 2000])
    LONG = 512 if SANITIZED else 2000
MEM = ("--kv-cache-memory", "256MiB")
NEAR_TIE_GAP = 0.05  # test_decoded_batching.py explains the threshold
LOGPROB_TOL = 2e-3
LOGPROB_TOL_BF16_KV = 2e-2
MAX_TOKENS = 8
SEED_BASE = 5000
SEEDED = {3, 8, 12, 17}  # indices of prompts sampled at temperature 0.8 (seeded)


def prompt(n, salt=0):
    rng = random.Random(n * 7919 + salt)
    lo = 100 if N_VOCAB > 1000 else 1
    return [rng.randrange(lo, N_VOCAB - 1) for _ in range(n)]


PROMPTS = [prompt(n) for n in LENGTHS]


def body(i, p, max_tokens=MAX_TOKENS):
    b = {"prompt": p, "max_tokens": max_tokens, "temperature": 0, "logprobs": 2,
         "ignore_eos": True}
    if i in SEEDED:
        # pdserve-generate samples prompt j of a batch with seed + j; the
        # seeded prompts run there as one batch, in order
        b.update(temperature=0.8, top_p=0.95, seed=SEED_BASE + sorted(SEEDED).index(i))
    return b


def complete(d, b, timeout=300):
    status, out = d.json("POST", "/v1/completions", b, timeout=timeout)
    assert status == 200, (status, out)
    ch = out["choices"][0]
    lp = ch["logprobs"]
    return {"text": ch["text"], "finish": ch["finish_reason"], "tokens": lp["tokens"],
            "lps": lp["token_logprobs"], "tops": lp["top_logprobs"]}


def run_all(d, idx=None, jobs=3):
    idx = list(range(len(PROMPTS))) if idx is None else idx
    with cf.ThreadPoolExecutor(jobs) as ex:
        return dict(zip(idx, ex.map(lambda i: complete(d, body(i, PROMPTS[i])), idx)))


def near_tie_vals(vals):
    if len(vals) < 2:
        return True
    a, b = sorted(vals, reverse=True)[:2]
    return a - b < NEAR_TIE_GAP


def compare(i, got, ref, lp_tol=LOGPROB_TOL):
    """The rule between two API results; returns tokens compared."""
    for k, tok in enumerate(ref["tokens"]):
        if near_tie_vals(list(ref["tops"][k].values())):
            print("request %d: near-tie at position %d" % (i, k))
            return k
        assert k < len(got["tokens"]) and got["tokens"][k] == tok, \
            (i, k, got["tokens"][:k + 1], ref["tokens"][:k + 1])
        assert abs(got["lps"][k] - ref["lps"][k]) <= lp_tol, (i, k, got, ref)
    assert got["tokens"] == ref["tokens"] and got["text"] == ref["text"], i
    assert got["finish"] == ref["finish"], i
    return len(ref["tokens"])


def generate(idx, seeded):
    """pdserve-generate on prompts idx (one batch): per prompt, a list of
    (token id, logprob, [top logprobs])."""
    gen = os.environ.get("PDSERVE_GENERATE")
    if not gen or not os.access(gen, os.X_OK):
        pytest.skip("set PDSERVE_GENERATE to pdserve-generate")
    cmd = [gen, *MODEL, *MEM, "-n", str(MAX_TOKENS), "--logprobs", "2", "--ignore-eos"]
    for i in idx:
        cmd += ["--prompt-ids", ",".join(map(str, PROMPTS[i]))]
    if seeded:
        cmd += ["--temperature", "0.8", "--top-p", "0.95", "--sampling-seed", str(SEED_BASE)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDSERVE_")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    res, cur = {}, None
    for line in out.stdout.splitlines():
        m = re.match(r"output (\d+) ", line)
        if m:
            cur = idx[int(m.group(1))]
            res[cur] = []
            continue
        m = re.match(r"\s+\[\d+\] (\d+) logprob (\S+)\s+top: (.*)", line)
        if m and cur is not None:
            tops = [float(t.split()[1]) for t in m.group(3).split("|")]
            res[cur].append((int(m.group(1)), float(m.group(2)), tops))
    return res


def compare_gen(i, got, ref):
    """API result against pdserve-generate's: the API names tokens by text,
    so tokens are compared through their log-probabilities (4 decimals)."""
    for k, (tok, lp, tops) in enumerate(ref):
        if near_tie_vals(tops):
            print("request %d: near-tie at position %d (generate)" % (i, k))
            return k
        assert k < len(got["lps"]), (i, k)
        assert abs(got["lps"][k] - lp) <= LOGPROB_TOL, (i, k, got["lps"], ref)
        api_tops = sorted(got["tops"][k].values(), reverse=True)
        assert abs(api_tops[0] - tops[0]) <= LOGPROB_TOL, (i, k, api_tops, tops)
        if N_VOCAB == 256:  # dummy weights: the API's text is "[id]"
            assert got["tokens"][k] == "[%d]" % tok, (i, k, got["tokens"], ref)
    assert len(got["lps"]) == len(ref), i
    return len(ref)


def keyfile(tmp_path, name="k.psk", key=None):
    return write_key(tmp_path / name, key)


def dec_args(psk, *peers, extra=()):
    # a generous no-progress deadline: on a loaded 2-core CI machine a
    # 2000-token prompt queued behind others at prefilld sends its first block
    # after more than the 10 s default, and a failover to local prefill would
    # break the "prefilled remotely" checks (tests of the deadline set their own)
    args = [*MODEL, *MEM, "--kv-psk-file", str(psk), "--local-prefill-max-tokens", "0",
            "--prefill-timeout-ms", "120000"]
    for p in peers:
        args += ["--prefill", p]
    return args + list(extra)


def peer_up(d, addr):
    return d.metric('pdserve:kv_peer_up{model_name="%s",peer="%s"}' % (
        d.model_name, addr)) == 1


def served_name(d):
    status, out = d.json("GET", "/v1/models")
    assert status == 200
    return out["data"][0]["id"]


def up(d, addr, timeout=60):
    d.model_name = served_name(d)
    wait_for(lambda: peer_up(d, addr), timeout, "a KV session to " + addr)


# ---- 1. same answers ----

def test_same_answers_disaggregated_local_and_generate(tmp_path):
    psk = keyfile(tmp_path)
    with Prefilld(*MODEL, *MEM, psk=psk) as p, \
            Decoded(*dec_args(psk, p.addr)) as a:
        up(a, p.addr)
        local0 = a.metric("pdserve:prompt_tokens_total")
        remote0 = a.metric("pdserve:remote_prompt_tokens_total")
        dis = run_all(a)
        assert a.metric("pdserve:prompt_tokens_total") == local0, "a prompt was prefilled locally"
        assert a.metric("pdserve:remote_prompt_tokens_total") - remote0 == sum(LENGTHS)
        assert a.metric("pdserve:kv_bytes_received_total") > 0
        assert a.metric("pdserve:kv_blocks_received_total") > 0
        assert p.metric("pdserve:prompt_tokens_total") == sum(LENGTHS)
        wait_for(lambda: p.metric("pdserve:kv_blocks_used") == 0, 30, "prefilld's blocks back")
    with Decoded(*MODEL, *MEM) as b:
        loc = run_all(b)
        assert b.metric("pdserve:prompt_tokens_total") == sum(LENGTHS)
        assert b.metric("pdserve:remote_prompt_tokens_total") == 0
    compared = sum(compare(i, dis[i], loc[i]) for i in range(len(PROMPTS)))
    # pdserve-generate takes a prompt as one option value of at most 4096
    # bytes (common/base/cfg's cap on any string): the longest prompts cannot go
    fits = [i for i in range(len(PROMPTS)) if len(",".join(map(str, PROMPTS[i]))) <= 4096]
    gen = generate([i for i in fits if i not in SEEDED], False)
    gen.update(generate(sorted(SEEDED), True))
    gen_cmp = sum(compare_gen(i, dis[i], gen[i]) for i in fits)
    total = len(PROMPTS) * MAX_TOKENS
    print("disaggregated vs local: %d of %d tokens compared; vs pdserve-generate (%d prompts, "
          "up to %d tokens): %d of %d" % (compared, total, len(fits),
                                          max(LENGTHS[i] for i in fits), gen_cmp,
                                          len(fits) * MAX_TOKENS))
    assert compared >= total // 2 and gen_cmp >= len(fits) * MAX_TOKENS // 2


def test_seeds_beyond_a_double_are_the_same_remote_and_local(tmp_path):
    """A seed travels as its exact 64-bit value to prefilld (which samples
    the first token) and back: remote and local answers agree."""
    psk = keyfile(tmp_path)
    seeds = [2**53 + 1, 2**64 - 1, -2**63]
    bodies = [{"prompt": prompt(20, salt=k), "max_tokens": 6, "temperature": 1.5, "seed": s,
               "logprobs": 1, "ignore_eos": True} for k, s in enumerate(seeds)]
    with Prefilld(*MODEL, *MEM, psk=psk) as p, Decoded(*dec_args(psk, p.addr)) as a:
        up(a, p.addr)
        remote = [complete(a, b)["tokens"] for b in bodies]
        assert a.metric("pdserve:remote_prompt_tokens_total") == 20 * len(seeds)
    with Decoded(*MODEL, *MEM) as b:
        local = [complete(b, x)["tokens"] for x in bodies]
    assert remote == local


# ---- 2. faults ----

def stopped_prefill(d, p, b):
    """Send b to d while p is stopped: PREFILL is out, nothing comes back.
    Returns the future of the request."""
    ex = cf.ThreadPoolExecutor(1)
    fut = ex.submit(complete, d, b)
    wait_for(lambda: d.metric("pdserve:num_requests_remote_prefill") == 1, 30,
             "the request to wait on its remote prefill")
    ex.shutdown(wait=False)
    return fut


def reference(idx_len, salt):
    p = prompt(idx_len, salt)
    with Decoded(*MODEL, *MEM) as b:
        return p, complete(b, body(0, p))


def test_prefilld_killed_mid_transfer_fails_over_and_comes_back(tmp_path):
    psk = keyfile(tmp_path)
    long_p, ref = reference(LONG, 1)
    with Prefilld(*MODEL, *MEM, psk=psk) as p:
        port = p.kv_port
        with Decoded(*dec_args(psk, p.addr)) as d:
            up(d, p.addr)
            p.send(signal.SIGSTOP)
            fut = stopped_prefill(d, p, body(0, long_p))
            p.kill9()
            got = fut.result(timeout=300)
            compare(0, got, ref)
            assert d.metric("pdserve:prompt_tokens_total") == LONG, "not prefilled locally"
            assert d.metric("pdserve:prefill_failovers_total") >= 1
            wait_for(lambda: d.metric("pdserve:kv_cache_blocks_used") == 0, 10, "blocks back")
            # the same port again: decoded reconnects by itself
            with Prefilld(*MODEL, *MEM, psk=psk, kv_port=port) as p2:
                up(d, p2.addr)
                r0 = d.metric("pdserve:remote_prompt_tokens_total")
                short = prompt(40, 2)
                complete(d, body(0, short))
                assert d.metric("pdserve:remote_prompt_tokens_total") - r0 == 40
                assert d.metric("pdserve:prompt_tokens_total") == LONG


def test_wrong_key_peer_is_refused_and_the_other_serves(tmp_path):
    good = keyfile(tmp_path, "good.psk")
    bad = keyfile(tmp_path, "bad.psk")
    with Prefilld(*MODEL, *MEM, psk=good) as pg, Prefilld(*MODEL, *MEM, psk=bad) as pb, \
            Decoded(*dec_args(good, pb.addr, pg.addr)) as d:
        up(d, pg.addr)
        # the refusing side counts it by reason; decoded sees the peer close
        # the connection during its handshake (it cannot be told why: nothing
        # is authenticated yet) and counts that as "refused"
        wait_for(lambda: pb.metric('pdserve:kv_handshake_failures_total{daemon="prefilld",'
                                   'reason="auth"}') >= 1, 30,
                 "the wrong-key peer to refuse the handshake")
        wait_for(lambda: sum(v for k, v in d.metrics().items()
                             if k.startswith("pdserve:kv_handshake_failures_total{")
                             and 'reason="refused"' in k) >= 1, 30,
                 "decoded to count the refused handshake")
        assert not peer_up(d, pb.addr)
        # each side's daemon logs the channel's word for it (kvx itself logs
        # nothing above debug)
        wait_for(lambda: "kv channel: handshake with" in pb.log() and
                 "failed (auth)" in pb.log(), 10, "prefilld's log line")
        wait_for(lambda: "failed (refused)" in d.log(), 10, "decoded's log line")
        n = 6
        ps = [prompt(20 + 3 * i, 3) for i in range(n)]
        with cf.ThreadPoolExecutor(3) as ex:
            list(ex.map(lambda q: complete(d, body(0, q)), ps))
        assert d.metric("pdserve:remote_prompt_tokens_total") == sum(map(len, ps))
        assert d.metric("pdserve:prompt_tokens_total") == 0
        assert pg.metric("pdserve:prefill_requests_total") == n
        assert pb.metric("pdserve:prefill_requests_total") == 0


def test_decoded_killed_mid_transfer_frees_prefilld_blocks(tmp_path):
    psk = keyfile(tmp_path)
    with Prefilld(*MODEL, *MEM, "--kv-lease-ms", "1000", psk=psk) as p:
        d1 = Decoded(*dec_args(psk, p.addr, extra=("--kv-lease-ms", "1000")))
        with d1:
            up(d1, p.addr)
            p.send(signal.SIGSTOP)
            stopped_prefill(d1, p, body(0, prompt(LONG, 4)))
            d1.proc.kill()
            d1.proc.wait()
            p.send(signal.SIGCONT)
        wait_for(lambda: p.metric("pdserve:kv_blocks_used") == 0 and
                 p.metric("pdserve:num_requests_running") == 0, 120,
                 "prefilld to take its blocks back")
        with Decoded(*dec_args(psk, p.addr)) as d2:
            up(d2, p.addr)
            complete(d2, body(0, prompt(50, 5)))
            assert d2.metric("pdserve:remote_prompt_tokens_total") == 50
        wait_for(lambda: p.metric("pdserve:kv_blocks_used") == 0, 30, "blocks back")


def test_failover_fail_gives_a_clear_error_when_the_peer_is_down(tmp_path):
    psk = keyfile(tmp_path)
    dead = "127.0.0.1:%d" % free_port()
    with Decoded(*dec_args(psk, dead, extra=("--prefill-failover", "fail"))) as d:
        status, out = d.json("POST", "/v1/completions", body(0, prompt(10, 6)))
        err = assert_error(status, out, 503)
        assert dead in err["message"] and "down" in err["message"], err
        assert d.metric("pdserve:prefill_failovers_total") >= 1
        wait_for(lambda: d.metric("pdserve:kv_cache_blocks_used") == 0, 10, "blocks back")
        # local prefill is still there when the policy says so: a prompt
        # under --local-prefill-max-tokens is not affected (none here: 0)


def test_stopped_prefilld_past_its_lease_fails_over_then_serves_again(tmp_path):
    psk = keyfile(tmp_path)
    lease = ("--kv-lease-ms", "1000")
    q, ref = reference(64, 7)
    with Prefilld(*MODEL, *MEM, *lease, psk=psk) as p, \
            Decoded(*dec_args(psk, p.addr, extra=lease + ("--prefill-timeout-ms", "3000"))) as d:
        up(d, p.addr)
        p.send(signal.SIGSTOP)
        try:
            fut = stopped_prefill(d, p, body(0, q))
            got = fut.result(timeout=120)
            compare(0, got, ref)
            assert d.metric("pdserve:prompt_tokens_total") == 64
            # while it stays stopped, requests go local at once
            wait_for(lambda: not peer_up(d, p.addr), 30, "the session to end")
            compare(0, complete(d, body(0, q)), ref)
        finally:
            p.send(signal.SIGCONT)
        assert d.metric("pdserve:prefill_failovers_total") >= 2
        up(d, p.addr)
        r0 = d.metric("pdserve:remote_prompt_tokens_total")
        compare(0, complete(d, body(0, q)), ref)
        assert d.metric("pdserve:remote_prompt_tokens_total") - r0 == 64
        assert d.metric("pdserve:prompt_tokens_total") == 128
    # (prefilld's exit on SIGTERM after SIGCONT is checked by the harness)


def test_client_gone_cancels_its_remote_prefill(tmp_path):
    psk = keyfile(tmp_path)
    with Prefilld(*MODEL, *MEM, psk=psk) as p, Decoded(*dec_args(psk, p.addr)) as d:
        up(d, p.addr)
        p.send(signal.SIGSTOP)
        try:
            s = post_and_hold(d.port, "/v1/completions",
                              {"prompt": prompt(300, 8), "max_tokens": 4, "stream": True})
            wait_for(lambda: d.metric("pdserve:num_requests_remote_prefill") == 1, 30,
                     "the remote prefill")
            assert d.metric("pdserve:kv_cache_blocks_used") > 0
            s.close()
            # cancelled (pd_kvx_cancel) while the peer is stopped: the blocks
            # come back once kvx released them, not before
            wait_for(lambda: d.metric("pdserve:num_requests_remote_prefill") == 0 and
                     d.metric("pdserve:kv_cache_blocks_used") == 0, 30, "the blocks back")
            assert d.metric("pdserve:prefill_failovers_total") == 0
        finally:
            p.send(signal.SIGCONT)
        wait_for(lambda: p.metric("pdserve:kv_blocks_used") == 0 and
                 p.metric("pdserve:num_requests_running") == 0 and
                 p.metric("pdserve:num_requests_waiting") == 0, 60, "prefilld idle")
        # and the pair still works
        complete(d, body(0, prompt(20, 9)))
        assert d.metric("pdserve:remote_prompt_tokens_total") == 20


def test_sighup_reloads_keys_and_rotation_needs_no_decoded_restart(tmp_path):
    # key directories (one file per key, named for its id) on both sides
    dirs = []
    for side in ("p", "d"):
        kd = tmp_path / side
        kd.mkdir(mode=0o750)
        dirs.append(kd)
    old, new = os.urandom(32), os.urandom(32)
    for kd in dirs:
        write_key(kd / "k-old", old, "k-old")
    with Prefilld(*MODEL, *MEM, psk=dirs[0]) as p:
        port = p.kv_port
        with Decoded(*dec_args(dirs[1], p.addr)) as d:
            up(d, p.addr)
            hs0 = p.metric("pdserve:kv_handshakes_total")
            # step 1 of a rotation: the next key on both sides, a reload each
            for kd in dirs:
                write_key(kd / "k-new", new, "k-new")
            d.proc.send_signal(signal.SIGHUP)
            p.send(signal.SIGHUP)
            wait_for(lambda: "SIGHUP: 2 keys loaded from" in d.log(), 10, "decoded's reload")
            assert "new sessions use key k-old" in d.log()
            assert d.request("GET", "/health")[0] == 200
            # no session dropped by the reloads: the same session serves on
            complete(d, body(0, prompt(12, 12)))
            assert d.metric("pdserve:remote_prompt_tokens_total") == 12
            assert peer_up(d, p.addr)
            assert p.metric("pdserve:kv_handshakes_total") == hs0
            assert "KV session down" not in d.log()
            # a new session after the reload (ring of two) still uses the key
            # decoded started with: prefilld restarts on the same port
            assert p.stop() == 0
            wait_for(lambda: not peer_up(d, p.addr), 30, "the session to end")
            with Prefilld(*MODEL, *MEM, psk=dirs[0], kv_port=port) as p2:
                up(d, p2.addr)
                complete(d, body(0, prompt(10, 10)))
                assert d.metric("pdserve:remote_prompt_tokens_total") == 22
                assert d.log().count("(key k-old;") >= 2
    # step 2: decoded names the new key, here by a restart (a reload does it too:
    # test_disagg_reload.py)
    with Prefilld(*MODEL, *MEM, psk=dirs[0]) as p3, \
            Decoded(*dec_args(dirs[1], p3.addr, extra=("--kv-key-id", "k-new"))) as d3:
        up(d3, p3.addr)
        assert "(key k-new;" in d3.log()
        complete(d3, body(0, prompt(10, 11)))
        assert d3.metric("pdserve:remote_prompt_tokens_total") == 10


def test_retry_goes_to_another_peer_and_load_is_spread(tmp_path):
    psk = keyfile(tmp_path)
    q, ref = reference(LONG, 12)
    port_b = free_port()
    with Prefilld(*MODEL, *MEM, psk=psk) as a:
        # a lease longer than B's start-up plus decoded's reconnect backoff
        # (up to 5 s): A's failure must come from the kill below, once B is
        # up, not from A's lease running out first
        with Decoded(*dec_args(psk, a.addr, "127.0.0.1:%d" % port_b,
                               extra=("--kv-lease-ms", "20000",
                                      "--prefill-timeout-ms", "30000"))) as d:
            up(d, a.addr)
            # B is not up yet: the request goes to A, which stops mid-transfer
            a.send(signal.SIGSTOP)
            fut = stopped_prefill(d, a, body(0, q))
            with Prefilld(*MODEL, *MEM, psk=psk, kv_port=port_b) as b:
                up(d, b.addr)
                a.kill9()
                # retry: epoch 1 on B, not local prefill
                compare(0, fut.result(timeout=300), ref)
                assert d.metric("pdserve:prompt_tokens_total") == 0, "prefilled locally"
                assert d.metric("pdserve:remote_prompt_tokens_total") == LONG
                assert b.metric("pdserve:prefill_requests_total") == 1
                assert d.metric("pdserve:prefill_failovers_total") >= 1
    # two healthy peers share the load
    with Prefilld(*MODEL, *MEM, psk=psk) as p1, Prefilld(*MODEL, *MEM, psk=psk) as p2, \
            Decoded(*dec_args(psk, p1.addr, p2.addr)) as d:
        up(d, p1.addr)
        up(d, p2.addr)
        ps = [prompt(30 + i, 13) for i in range(8)]
        with cf.ThreadPoolExecutor(4) as ex:
            list(ex.map(lambda x: complete(d, body(0, x)), ps))
        n1 = p1.metric("pdserve:prefill_requests_total")
        n2 = p2.metric("pdserve:prefill_requests_total")
        assert n1 + n2 == 8 and n1 >= 1 and n2 >= 1, (n1, n2)
        assert d.metric("pdserve:prompt_tokens_total") == 0
        # one at a time nothing is outstanding at a pick: the ties alternate
        for i in range(6):
            complete(d, body(0, prompt(20 + i, 14)))
        assert (p1.metric("pdserve:prefill_requests_total") - n1,
                p2.metric("pdserve:prefill_requests_total") - n2) == (3, 3)


@pytest.mark.skipif(MODEL_PATH is None, reason="needs the default model (a prefill slow enough "
                    "to catch between its first block and DONE)")
def test_prefilld_killed_after_some_blocks_arrived(tmp_path):
    psk = keyfile(tmp_path)
    q, ref = reference(LONG, 14)
    # small chunks: prefilld ships the first blocks long before DONE
    with Prefilld(*MODEL, *MEM, "--max-num-batched-tokens", "32", psk=psk) as p, \
            Decoded(*dec_args(psk, p.addr)) as d:
        up(d, p.addr)
        with cf.ThreadPoolExecutor(1) as ex:
            fut = ex.submit(complete, d, body(0, q))
            deadline = time.time() + 120
            while d.metric("pdserve:kv_blocks_received_total") == 0:
                assert time.time() < deadline and not fut.done(), "no block arrived"
                time.sleep(0.01)
            assert d.metric("pdserve:num_requests_remote_prefill") == 1, "DONE already"
            p.kill9()
            compare(0, fut.result(timeout=300), ref)
        got_blocks = d.metric("pdserve:kv_blocks_received_total")
        print("blocks verified before the kill: %d of %d" % (got_blocks, (LONG + 15) // 16))
        assert 0 < got_blocks < (LONG + 15) // 16
        # the partial KV was thrown away: the prompt was prefilled locally
        assert d.metric("pdserve:prompt_tokens_total") == LONG
        assert d.metric("pdserve:remote_prompt_tokens_total") == 0
        wait_for(lambda: d.metric("pdserve:kv_cache_blocks_used") == 0, 10, "blocks back")


# ---- 3. 16-bit KV ----

def test_bf16_kv_cache_disaggregated_matches_local_and_an_f32_peer_is_refused(tmp_path):
    """--kv-cache-dtype bf16 on both ends: the blocks travel as bf16 (half the
    bytes of f32), the answers follow the rule against decoded alone with a
    bf16 pool, and a prefilld with an f32 pool is refused at the handshake
    (the layouts differ), counted by reason on both sides."""
    psk = keyfile(tmp_path)
    bf16 = ("--kv-cache-dtype", "bf16")
    # greedy prompts only: a seeded draw compares probabilities against a
    # uniform number, and a bf16 pool moves them by more than the fp32 bar
    idx = [i for i, n in enumerate(LENGTHS) if n in (1, 16, 17, 64, 128, 256, 512)
           and i not in SEEDED]
    with Prefilld(*MODEL, *MEM, *bf16, psk=psk) as p16, Prefilld(*MODEL, *MEM, psk=psk) as p32, \
            Decoded(*dec_args(psk, p32.addr, p16.addr, extra=bf16)) as d:
        up(d, p16.addr)
        wait_for(lambda: p32.metric('pdserve:kv_handshake_failures_total{daemon="prefilld",'
                                    'reason="layout"}') >= 1, 30,
                 "the f32 peer to refuse the bf16 layout")
        assert not peer_up(d, p32.addr)
        assert "kv_dtype: ours F32, peer BF16" in p32.log()  # the refusal names both
        dis = run_all(d, idx)
        assert d.metric("pdserve:prompt_tokens_total") == 0, "a prompt was prefilled locally"
        assert p32.metric("pdserve:prefill_requests_total") == 0
        bytes_, blocks = (d.metric("pdserve:kv_bytes_received_total"),
                          d.metric("pdserve:kv_blocks_received_total"))
        assert blocks > 0
    # an f32 run of the same prompts: twice the bytes per block
    with Prefilld(*MODEL, *MEM, psk=psk) as p, Decoded(*dec_args(psk, p.addr)) as d32:
        up(d32, p.addr)
        run_all(d32, idx[:1])
        assert d32.metric("pdserve:kv_bytes_received_total") / \
            d32.metric("pdserve:kv_blocks_received_total") == 2 * bytes_ / blocks
    with Decoded(*MODEL, *MEM, *bf16) as b:
        loc = run_all(b, idx)
    # K and V are rounded to bf16 as stored, so the few-ulp fp32 differences
    # between two batchings of the same prompt (OpenBLAS blocks a GEMM by its
    # row count) can round a K or V element the other way: log-probabilities
    # agree to the bf16 bar, not the fp32 one
    compared = sum(compare(i, dis[i], loc[i], LOGPROB_TOL_BF16_KV) for i in idx)
    assert compared >= len(idx) * MAX_TOKENS // 2
