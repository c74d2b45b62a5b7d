"""KV blocks that fail their tags, end to end: decoded against a prefilld
that corrupts a byte of every request's blocks after tagging them
(--test-tamper-every, compiled in only with meson -Dtest_hooks=true). decoded
must retry elsewhere or fail with a clear error: never a 200 built on
unverified KV, and nothing leaks.

Without the hook every test here skips (run_pytest.sh then exits 77: a skip,
never a pass). Tiny dummy weights (token-id prompts). One case alone:
    DECODED=build/decoded/decoded PREFILLD=build/prefilld/prefilld \\
    venv/bin/python -m pytest tests/integration/test_disagg_tamper.py -k retry
"""
import concurrent.futures as cf
import json
import os
import random
import subprocess

import pytest

from harness import Decoded, Prefilld, assert_error, prefilld_binary, sse_events, write_key
from test_disagg import compare, complete, peer_up, served_name, wait_for

MODEL = ("--load-format", "dummy", "--model-shape", '{"preset":"tiny","n_ctx":4096}')
MEM = ("--kv-cache-memory", "64MiB")
N_VOCAB = 256
TAMPER = ("--test-tamper-every", "1")  # every request (ids start at 1)
LENGTHS = [1, 15, 16, 17, 40, 100, 255, 300]


def has_hooks():
    """True when prefilld takes --test-tamper-every. meson says whether the
    build should have it (PDSERVE_TEST_HOOKS): a build that should and does
    not is a failure, not a skip."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDSERVE_")}
    out = subprocess.run([prefilld_binary(), "--test-tamper-every", "1", "--print-config"],
                         capture_output=True, text=True, env=env, timeout=60)
    built = out.returncode == 0 and '"test-tamper-every":\t1' in out.stdout
    if os.environ.get("PDSERVE_TEST_HOOKS") == "1":
        assert built, "meson -Dtest_hooks=true, yet prefilld refuses --test-tamper-every: " + \
            out.stderr
    if not built:
        assert "test-tamper-every" in out.stderr, out.stderr  # refused as unknown, nothing else
    return built


@pytest.fixture(autouse=True)
def needs_hooks():
    if not has_hooks():
        pytest.skip("prefilld was built without the test hooks (meson configure "
                    "-Dtest_hooks=true): no --test-tamper-every to corrupt KV with")


def prompt(n, salt=0):
    rng = random.Random(n * 7919 + salt)
    return [rng.randrange(1, N_VOCAB - 1) for _ in range(n)]


def body(p):
    return {"prompt": p, "max_tokens": 6, "temperature": 0, "logprobs": 2, "ignore_eos": True}


PROMPTS = [prompt(n, 21) for n in LENGTHS]


def test_retry_gives_the_local_answer_from_the_honest_peer(tmp_path):
    psk = write_key(tmp_path / "k.psk")
    with Decoded(*MODEL, *MEM) as loc:
        ref = [complete(loc, body(p)) for p in PROMPTS]
        assert loc.metric("pdserve:prompt_tokens_total") == sum(LENGTHS)
    with Prefilld(*MODEL, *MEM, *TAMPER, psk=psk) as bad, \
            Prefilld(*MODEL, *MEM, psk=psk) as good, \
            Decoded(*MODEL, *MEM, "--kv-psk-file", psk, "--local-prefill-max-tokens", "0",
                    "--prefill", bad.addr, "--prefill", good.addr,
                    "--prefill-failover", "retry") as d:
        assert "test hook: the KV blocks of every request" in bad.log()
        d.model_name = served_name(d)
        wait_for(lambda: peer_up(d, bad.addr) and peer_up(d, good.addr), 60, "both sessions")
        with cf.ThreadPoolExecutor(3) as ex:
            got = list(ex.map(lambda p: complete(d, body(p)), PROMPTS))  # asserts 200 each
        for i, (g, r) in enumerate(zip(got, ref)):
            compare(i, g, r)
        n_bad = bad.metric("pdserve:prefill_requests_total")
        n_good = good.metric("pdserve:prefill_requests_total")
        print("tampering peer took %d first tries, the honest one served %d" % (n_bad, n_good))
        # the tampering peer got its share, and every one of them came back
        # to the honest peer: nothing was prefilled locally
        assert n_bad >= 1 and n_good == len(PROMPTS), (n_bad, n_good)
        assert d.metric("pdserve:prompt_tokens_total") == 0
        assert d.metric("pdserve:remote_prompt_tokens_total") == sum(LENGTHS)
        # each tampered transfer: at least one block whose tag failed, one failover
        assert d.metric("pdserve:kv_integrity_failures_total") >= n_bad
        assert d.metric('pdserve:prefill_failovers_total{model_name="%s",reason="integrity"}'
                        % d.model_name) == n_bad
        assert d.metric("pdserve:prefill_failovers_total") == n_bad
        # verified blocks only: what the honest peer sent
        assert d.metric("pdserve:kv_blocks_received_total") == \
            sum((n + 15) // 16 for n in LENGTHS)
        wait_for(lambda: d.metric("pdserve:kv_cache_blocks_used") == 0, 10, "decoded's blocks")
        for p in (bad, good):
            wait_for(lambda: p.metric("pdserve:kv_blocks_used") == 0, 30, "prefilld's blocks")
        # asked again, the prompts come from decoded's prefix cache (only the
        # honest peer's verified blocks are in it) and the answers are the same
        h0 = d.metric("pdserve:prefix_cache_hits_total")
        for i, p in enumerate(PROMPTS):
            compare(i, complete(d, body(p)), ref[i])
        assert d.metric("pdserve:prefix_cache_hits_total") - h0 == \
            sum((n - 1) // 16 * 16 for n in LENGTHS)


def test_fail_policy_answers_a_clear_error_never_a_200(tmp_path):
    psk = write_key(tmp_path / "k.psk")
    with Prefilld(*MODEL, *MEM, *TAMPER, psk=psk) as bad, \
            Decoded(*MODEL, *MEM, "--kv-psk-file", psk, "--local-prefill-max-tokens", "0",
                    "--prefill", bad.addr, "--prefill-failover", "fail") as d:
        d.model_name = served_name(d)
        wait_for(lambda: peer_up(d, bad.addr), 60, "the session")
        with cf.ThreadPoolExecutor(3) as ex:
            res = list(ex.map(lambda p: d.json("POST", "/v1/completions", body(p)), PROMPTS))
        for status, out in res:
            err = assert_error(status, out, 502)
            assert "integrity" in err["message"] and bad.addr in err["message"], err
        # streamed: the status line went out when the request was accepted
        # (before any prefill, as OpenAI's API does), so the error comes as
        # the stream's only event: no token, no choice, the same error body
        status, _, raw = d.request("POST", "/v1/completions", dict(body(PROMPTS[4]), stream=True))
        events = [e for e in sse_events(raw) if e != "[DONE]"]
        assert status == 200 and len(events) == 1, (status, raw)
        ev = json.loads(events[0])
        assert set(ev) == {"error"} and ev["error"]["type"] == "bad_gateway", ev
        assert "integrity" in ev["error"]["message"], ev
        n = len(PROMPTS) + 1
        assert bad.metric("pdserve:prefill_requests_total") == n
        assert d.metric("pdserve:kv_integrity_failures_total") >= n
        assert d.metric('pdserve:prefill_failovers_total{model_name="%s",reason="integrity"}'
                        % d.model_name) == n
        assert d.metric("pdserve:prompt_tokens_total") == 0, "prefilled locally"
        assert d.metric("pdserve:remote_prompt_tokens_total") == 0
        fin = '{model_name="%s",finished_reason="%%s"}' % d.model_name
        assert d.metric("pdserve:request_success_total" + fin % "error") == n
        assert d.metric("pdserve:request_success_total" + fin % "length") == 0
        assert d.metric("pdserve:request_success_total" + fin % "stop") == 0
        # nothing leaks: every destination block back, nothing parked
        wait_for(lambda: d.metric("pdserve:kv_cache_blocks_used") == 0 and
                 d.metric("pdserve:num_requests_remote_prefill") == 0, 10, "decoded's blocks")
        wait_for(lambda: bad.metric("pdserve:kv_blocks_used") == 0, 30, "prefilld's blocks")
        # the session survives a bad transfer (the peer's fault is per request)
        assert peer_up(d, bad.addr)
        # nothing of a failed transfer entered decoded's prefix cache, not even
        # the blocks that verified before the tampered one: asked again, every
        # prompt is asked of the peer in full
        assert d.metric("pdserve:prefix_cache_blocks") == 0
        assert d.metric("pdserve:prefix_cache_hits_total") == 0
        assert d.metric("pdserve:kv_blocks_not_sent_total") == 0


# ---- echo with logprobs: prefilld scores the prompt and sends its
# log-probabilities in PROMPT_LP frames before DONE. Those frames are control
# frames of the authenticated channel: no hook corrupts them (the tamper hook
# flips a byte of KV blocks after tagging), and no test peer can stand in for
# prefilld (kvx_peer's layout is not a model's), so a forged or corrupt
# PROMPT_LP cannot be made here without a new hook in prefilld. What can be:
# the KV of a scored prompt tampered with. The scores then never reach the
# client from a transfer that failed: under retry the answer is the honest
# peer's (decoded alone's, exactly: the honest peer's frames cover every
# position again), under fail a clean error, streamed too, with no echoed
# prompt sent before it. Ids below 100: the dummy model spells them in at
# most 4 bytes (test_decoded_bad_input.py's test_echo_text_of_long_spelled_ids). ----

ECHO_PROMPTS = [[random.Random(n * 31).randrange(1, 100) for _ in range(n)]
                for n in (2, 17, 100, 300)]


def echo_body(p, max_tokens):
    return {"prompt": p, "max_tokens": max_tokens, "echo": True, "logprobs": 5,
            "temperature": 0, "ignore_eos": True}


ECHO_BODIES = [echo_body(p, mt) for p in ECHO_PROMPTS for mt in (0, 3)]


def test_echo_scores_after_tampering_are_the_honest_peers(tmp_path):
    psk = write_key(tmp_path / "k.psk")
    with Decoded(*MODEL, *MEM) as loc:
        ref = []
        for b in ECHO_BODIES:
            status, out = loc.json("POST", "/v1/completions", b)
            assert status == 200, out
            ref.append(out)
    with Prefilld(*MODEL, *MEM, *TAMPER, psk=psk) as bad, \
            Prefilld(*MODEL, *MEM, psk=psk) as good, \
            Decoded(*MODEL, *MEM, "--kv-psk-file", psk, "--local-prefill-max-tokens", "0",
                    "--prefill", bad.addr, "--prefill", good.addr,
                    "--prefill-failover", "retry") as d:
        d.model_name = served_name(d)
        wait_for(lambda: peer_up(d, bad.addr) and peer_up(d, good.addr), 60, "both sessions")
        # one at a time: the peers are taken in turn, and each answer is the
        # one a request alone gets (exactly)
        for b, r in zip(ECHO_BODIES, ref):
            status, out = d.json("POST", "/v1/completions", b)
            assert status == 200, out
            assert out["choices"] == r["choices"] and out["usage"] == r["usage"], (b, out, r)
            lp = out["choices"][0]["logprobs"]
            assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        n_bad = bad.metric("pdserve:prefill_requests_total")
        n_good = good.metric("pdserve:prefill_requests_total")
        assert n_bad >= 1 and n_good == len(ECHO_BODIES), (n_bad, n_good)
        assert d.metric("pdserve:prompt_tokens_total") == 0
        assert d.metric('pdserve:prefill_failovers_total{model_name="%s",reason="integrity"}'
                        % d.model_name) == n_bad
        assert d.metric("pdserve:kv_integrity_failures_total") >= n_bad
        wait_for(lambda: d.metric("pdserve:kv_cache_blocks_used") == 0, 10, "decoded's blocks")
        for p in (bad, good):
            wait_for(lambda: p.metric("pdserve:kv_blocks_used") == 0, 30, "prefilld's blocks")


def test_echo_fail_policy_answers_an_error_never_the_scores(tmp_path):
    psk = write_key(tmp_path / "k.psk")
    with Prefilld(*MODEL, *MEM, *TAMPER, psk=psk) as bad, \
            Decoded(*MODEL, *MEM, "--kv-psk-file", psk, "--local-prefill-max-tokens", "0",
                    "--prefill", bad.addr, "--prefill-failover", "fail") as d:
        d.model_name = served_name(d)
        wait_for(lambda: peer_up(d, bad.addr), 60, "the session")
        with cf.ThreadPoolExecutor(3) as ex:
            res = list(ex.map(lambda b: d.json("POST", "/v1/completions", b), ECHO_BODIES))
        for status, out in res:
            err = assert_error(status, out, 502)
            assert "integrity" in err["message"] and bad.addr in err["message"], err
        # streamed: the error is the stream's only event; the echoed prompt
        # (sent with a choice's first event) never went out
        for b in (ECHO_BODIES[4], ECHO_BODIES[7], dict(ECHO_BODIES[5], logprobs=None)):
            status, _, raw = d.request("POST", "/v1/completions", dict(b, stream=True))
            events = [e for e in sse_events(raw) if e != "[DONE]"]
            assert status == 200 and len(events) == 1, (status, raw)
            ev = json.loads(events[0])
            assert set(ev) == {"error"} and ev["error"]["type"] == "bad_gateway", ev
        n = len(ECHO_BODIES) + 3
        assert bad.metric("pdserve:prefill_requests_total") == n
        assert d.metric('pdserve:prefill_failovers_total{model_name="%s",reason="integrity"}'
                        % d.model_name) == n
        assert d.metric("pdserve:prompt_tokens_total") == 0, "prefilled locally"
        assert d.metric("pdserve:generation_tokens_total") == 0
        fin = '{model_name="%s",finished_reason="%%s"}' % d.model_name
        assert d.metric("pdserve:request_success_total" + fin % "error") == n
        assert d.metric("pdserve:request_success_total" + fin % "length") == 0
        wait_for(lambda: d.metric("pdserve:kv_cache_blocks_used") == 0 and
                 d.metric("pdserve:num_requests_remote_prefill") == 0, 10, "decoded's blocks")
        wait_for(lambda: bad.metric("pdserve:kv_blocks_used") == 0, 30, "prefilld's blocks")
        assert peer_up(d, bad.addr)
