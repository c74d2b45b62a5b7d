"""Prefix caching end to end (docs/internals/prefix.md): real decoded and
prefilld processes, real UCX and keys, on loopback.

  * the same answers with the cache and without it (--no-enable-prefix-caching),
    local and disaggregated, for shared prefixes of 0, 1 and many blocks and one
    ending mid-block, under DESIGN.md's rule (test_disagg.compare);
  * decoded asks prefilld only for the blocks it lacks: the blocks received,
    and both daemons' kv_blocks_not_sent_total, add up to the prompt;
  * prefilld restarted (a cold cache) with decoded holding the prefix: the
    prompt is still right, and the recompute is counted;
  * cache_salt: requests of different salts share nothing;
  * PROGRESS: a prompt queued at prefilld for longer than
    --prefill-timeout-ms is not failed over while prefilld says it is queued;
  * peer choice: a conversation's next turn goes to the prefilld that
    computed its prefix.

The default model ($PDSERVE_MODEL) when present, tiny dummy weights in
sanitizer builds or without it (token-id prompts either way). One case alone:
    DECODED=build/decoded/decoded PREFILLD=build/prefilld/prefilld \\
    venv/bin/python -m pytest tests/integration/test_prefix_cache.py -k salt
"""
import concurrent.futures as cf
import random

from harness import Decoded, Prefilld
from test_disagg import (MEM, MODEL, N_VOCAB, SANITIZED, compare, complete, dec_args, keyfile,
                         up)

BS = 16  # --block-size's default


def toks(n, seed):
    rng = random.Random(seed)
    lo = 100 if N_VOCAB > 1000 else 1
    return [rng.randrange(lo, N_VOCAB - 1) for _ in range(n)]


SYSTEM = toks(5 * BS + 7, 1)  # five full blocks and a partial one

# (name, prompt): run in this order, each after the one before is cached
CASES = [
    ("cold", SYSTEM + toks(40, 2)),
    ("no shared block", toks(3, 3) + SYSTEM),  # differs at token 0
    ("one block", SYSTEM[:BS] + toks(30, 4)),
    ("many blocks, mid-block", SYSTEM + toks(25, 5)),
    ("whole prompt again", SYSTEM + toks(40, 2)),
    ("block-aligned repeat", SYSTEM[:4 * BS]),
    ("block-aligned repeat again", SYSTEM[:4 * BS]),
]
# full blocks of each case the cache supplies: those shared with an earlier
# prompt (or its output), never the one holding the last token (its logits
# are computed): 127 tokens seen before map 7 blocks, 64 map 3
HITS = [0, 0, 1, 5, 7, 3, 3]


def body(p, salt=None, max_tokens=8):
    b = {"prompt": p, "max_tokens": max_tokens, "temperature": 0, "logprobs": 2,
         "ignore_eos": True}
    if salt is not None:
        b["cache_salt"] = salt
    return b


def hits(d):
    return d.metric("pdserve:prefix_cache_hits_total") or 0


def run_cases(d):
    out = []
    for _, p in CASES:
        out.append(complete(d, body(p)))
    return out


def reference(tmp_path):
    with Decoded(*MODEL, *MEM, "--no-enable-prefix-caching") as ref:
        res = run_cases(ref)
        assert hits(ref) == 0 and ref.metric("pdserve:prefix_cache_queries_total") in (0, None)
    return res


def check_all(got, ref):
    for i, (name, _) in enumerate(CASES):
        print("case", name)
        compare(i, got[i], ref[i])


def test_local_cache_gives_the_same_answers_and_hits(tmp_path):
    ref = reference(tmp_path)
    with Decoded(*MODEL, *MEM) as d:
        got, seen = [], []
        for _, p in CASES:
            h0 = hits(d)
            got.append(complete(d, body(p)))
            seen.append((hits(d) - h0) // BS)
        check_all(got, ref)
        assert seen == HITS, seen
        assert d.metric("pdserve:prefix_cache_blocks") > 0


def test_disaggregated_ships_only_the_missing_blocks(tmp_path):
    ref = reference(tmp_path)
    psk = keyfile(tmp_path)
    with Prefilld(*MODEL, *MEM, psk=psk) as p, Decoded(*dec_args(psk, p.addr)) as d:
        up(d, p.addr)
        got = []
        for i, (_, pr) in enumerate(CASES):
            r0 = d.metric("pdserve:kv_blocks_received_total") or 0
            ns0 = d.metric("pdserve:kv_blocks_not_sent_total") or 0
            pns0 = p.metric("pdserve:kv_blocks_not_sent_total") or 0
            got.append(complete(d, body(pr)))
            received = d.metric("pdserve:kv_blocks_received_total") - r0
            not_sent = d.metric("pdserve:kv_blocks_not_sent_total") - ns0
            # every block of the prompt is either decoded's already or sent
            assert received + not_sent == (len(pr) + BS - 1) // BS, (i, received, not_sent)
            assert not_sent == HITS[i], (i, not_sent)
            assert p.metric("pdserve:kv_blocks_not_sent_total") - pns0 == not_sent
        check_all(got, ref)
        assert d.metric("pdserve:prompt_tokens_total") in (0, None), "prefilled locally"
        # prefilld's own cache: it computed each shared prefix once
        assert p.metric("pdserve:prefix_cache_hits_total") > 0
        assert (p.metric("pdserve:prefix_cache_recomputed_tokens_total") or 0) == 0


def test_restarted_prefilld_recomputes_what_decoded_holds(tmp_path):
    psk = keyfile(tmp_path)
    first, second = SYSTEM + toks(20, 7), SYSTEM + toks(33, 8)
    with Decoded(*MODEL, *MEM, "--no-enable-prefix-caching") as ref:
        want = complete(ref, body(second))
    with Prefilld(*MODEL, *MEM, psk=psk) as p:
        port = p.kv_port
        with Decoded(*dec_args(psk, p.addr)) as d:
            up(d, p.addr)
            complete(d, body(first))
            p.stop()
            with Prefilld(*MODEL, *MEM, psk=psk, kv_port=port) as p2:
                up(d, p2.addr)
                got = complete(d, body(second))
                compare(0, got, want)
                # decoded held the 5 system blocks; the new prefilld had none
                assert p2.metric("pdserve:prefix_cache_recomputed_tokens_total") == 5 * BS
                assert p2.metric("pdserve:kv_blocks_not_sent_total") == 5


def test_cache_salt_keeps_tenants_apart(tmp_path):
    p = SYSTEM + toks(10, 9)
    with Decoded(*MODEL, *MEM) as d:
        complete(d, body(p, salt="tenant-a"))
        h0 = hits(d)
        complete(d, body(p, salt="tenant-b"))
        assert hits(d) == h0, "another salt's blocks were shared"
        complete(d, body(p))  # no salt is a namespace of its own too
        assert hits(d) == h0
        complete(d, body(p, salt="tenant-a"))
        # its 97 tokens: 6 full blocks, all but the last token's
        assert hits(d) - h0 == 6 * BS
        status, out = d.json("POST", "/v1/completions", body(p, salt=""))
        assert status == 400 and out["error"]["param"] == "cache_salt", out
        status, out = d.json("POST", "/v1/completions", body(p, salt="x" * 257))
        assert status == 400 and out["error"]["param"] == "cache_salt", out


def test_queued_prefill_is_not_failed_over_while_prefilld_reports_progress(tmp_path):
    """--prefill-timeout-ms counts silence: a prompt queued at prefilld
    behind another for longer than it still comes from prefilld, which says
    it is queued (PROGRESS) while no block of it can move."""
    psk = keyfile(tmp_path)
    n = 512 if SANITIZED or N_VOCAB < 1000 else 2000
    # one prefill at a time, 16 tokens a step: each prompt computes for
    # seconds, and the second waits all that time with nothing to send
    pf = (*MODEL, *MEM, "--max-num-batched-tokens", "16", "--max-num-seqs", "1")
    with Prefilld(*pf, psk=psk) as p, \
            Decoded(*dec_args(psk, p.addr, extra=("--prefill-timeout-ms", "1000"))) as d:
        up(d, p.addr)
        t = d.metric("pdserve:remote_prompt_tokens_total")
        with cf.ThreadPoolExecutor(2) as ex:
            list(ex.map(lambda s: complete(d, body(toks(n, s), max_tokens=2), timeout=600),
                        (10, 11)))
        assert d.metric('pdserve:prefill_failovers_total{reason="timeout"}') == 0
        assert d.metric("pdserve:remote_prompt_tokens_total") - t == 2 * n, "failed over"


def test_prompt_goes_to_the_peer_that_holds_its_prefix(tmp_path):
    """decoded remembers which peer computed which blocks: the next turn of
    a conversation goes back to that peer (whose cache holds them), while
    unrelated prompts still spread over both."""
    psk = keyfile(tmp_path)
    with Prefilld(*MODEL, *MEM, psk=psk) as a, Prefilld(*MODEL, *MEM, psk=psk) as b, \
            Decoded(*dec_args(psk, a.addr, b.addr)) as d:
        up(d, a.addr)
        up(d, b.addr)
        peers = (a, b)
        for conv in range(4):
            base = toks(5 * BS + 3, 100 + conv)
            n0 = [p.metric("pdserve:prefill_requests_total") for p in peers]
            complete(d, body(base))
            first = [p.metric("pdserve:prefill_requests_total") - n for p, n in zip(peers, n0)]
            assert sorted(first) == [0, 1], first
            holder = peers[first.index(1)]
            h0 = holder.metric("pdserve:prefix_cache_hits_total")
            for turn in range(3):
                base = base + toks(20, 1000 * conv + turn)
                before = holder.metric("pdserve:prefill_requests_total")
                complete(d, body(base))
                assert holder.metric("pdserve:prefill_requests_total") == before + 1, \
                    (conv, turn, "went to the other peer")
            assert holder.metric("pdserve:prefix_cache_hits_total") > h0
        # four conversations, started round the peers in turn: both got some
        assert all(p.metric("pdserve:prefill_requests_total") >= 4 for p in peers)
