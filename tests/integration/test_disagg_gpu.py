"""prefilld and decoded both on the GPU (--device cuda), serving through the
authenticated KV channel on loopback, on one of its two paths
($PDSERVE_KV_PATH):

  * staged (--no-kv-direct): KV blocks leave prefilld's device pool through
    its page-locked host staging and land in decoded's staging before its
    device pool (common/engine/engine.h, pd_engine_kv_stage);
  * direct: UCX sends them from prefilld's device pool and receives them
    into decoded's, where the GPUs tag and check them (a UCX that takes CUDA
    memory; on the emulated GPU, whose device memory is host memory, any UCX).

  * the pair answers as decoded alone on the GPU does (DESIGN.md's rule; on
    the emulated GPU, where both run the same code on the host, exactly one
    request at a time, and by the rule for requests side by side), all
    prompts prefilled remotely, both stagings empty afterwards;
  * prefilld killed mid-transfer: decoded fails over to local prefill on its
    GPU, its staging comes back, and a restarted prefilld serves again;
  * a client leaving mid-transfer gives both stagings back;
  * staged: a prompt larger than decoded's staging is prefilled locally;
    larger than prefilld's, refused there (too large) and prefilled locally;
  * a GPU decoded started without peers: staged, it refuses a reload that
    names the first ones (no staging was made) and keeps serving; direct, it
    takes them and serves through them.

Two ways to run it. meson's disagg_gpu_emulated: $DECODED and $PREFILLD are
the daemons built against tests/kernels/emu (the CPU emulator of the CUDA
runtime, kernels and cuBLAS) and $PDSERVE_GPU_EMULATED=1. On a GPU node,
tests/gpu/check.sh runs it as a script (no pytest there) with the real
binaries:
    DECODED=bin/decoded PREFILLD=bin/prefilld PDSERVE_KV_PATH=direct python3 test_disagg_gpu.py
Without a usable GPU (real binaries) every case skips, exit 77; so does the
direct path where the UCX loaded does not take CUDA memory.
"""
import concurrent.futures as cf
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

from harness import Decoded, Prefilld, post_and_hold, prefilld_binary, wait_for, write_key

try:
    import pytest
    skip = pytest.skip
except ImportError:  # a bare GPU node: the runner at the bottom
    pytest = None

    class Skipped(Exception):
        pass

    def skip(msg):
        raise Skipped(msg)

EMULATED = os.environ.get("PDSERVE_GPU_EMULATED") == "1"
DIRECT = os.environ.get("PDSERVE_KV_PATH", "staged") == "direct"
assert os.environ.get("PDSERVE_KV_PATH", "staged") in ("staged", "direct")
# head_dim 64 and GQA 3:1 (the default model's attention) in 2 layers: on a
# bf16 pool prefill steps take the tensor-core prefill kernel
SHAPE = os.environ.get("PDSERVE_GPU_SHAPE", '{"preset":"default","n_layer":2,"n_vocab":600}')
N_VOCAB = 600 if "PDSERVE_GPU_SHAPE" not in os.environ else 49152
MODEL = ("--load-format", "dummy", "--model-shape", SHAPE, "--device", "cuda",
         "--kv-cache-dtype", "bf16")
MEM = ("--kv-cache-memory", "64MiB", "--kv-staging-memory", "16MiB") + \
    (() if DIRECT else ("--no-kv-direct",))
# a block: 2 layers x K,V x 3 heads x 16 tokens x 64 x 2 bytes = 24 KiB; 1 MiB
# holds 42 blocks, 672 tokens
SMALL_STAGING = ("--kv-staging-memory", "1MiB")
LENGTHS = [1, 5, 16, 17, 40, 100, 300]
MAX_TOKENS = 6
NEAR_TIE_GAP = 0.05
LOGPROB_TOL = 2e-2  # bf16 KV, and on a GPU cuBLAS may sum other batch shapes otherwise


def prompt(n, salt=0):
    rng = random.Random(n * 7919 + salt)
    return [rng.randrange(1, N_VOCAB - 1) for _ in range(n)]


def complete(d, p, timeout=300):
    status, out = d.json("POST", "/v1/completions",
                         {"prompt": p, "max_tokens": MAX_TOKENS, "temperature": 0,
                          "logprobs": 2, "ignore_eos": True}, timeout=timeout)
    assert status == 200, (status, out)
    lp = out["choices"][0]["logprobs"]
    return {"tokens": lp["tokens"], "lps": lp["token_logprobs"], "tops": lp["top_logprobs"]}


def same(got, ref, what, exact=EMULATED):
    """DESIGN.md's rule: the same tokens up to a near-tie, log-probabilities
    within the bar; exactly the same on the emulated GPU (one code path,
    host math: the staging must move every byte as it was) unless exact is
    False: requests run side by side share steps whose make-up depends on
    timing (a decode token beside a prompt chunk takes the prefill kernel),
    which moves the last bits of bf16 KV even emulated."""
    if exact:
        assert got == ref, (what, got, ref)
        return len(ref["tokens"])
    for k, tok in enumerate(ref["tokens"]):
        vals = sorted(ref["tops"][k].values(), reverse=True)
        if len(vals) > 1 and vals[0] - vals[1] < NEAR_TIE_GAP:
            print("%s: near-tie at position %d" % (what, k))
            return k
        assert got["tokens"][k] == tok, (what, k, got, ref)
        assert abs(got["lps"][k] - ref["lps"][k]) <= LOGPROB_TOL, (what, k, got, ref)
    return len(ref["tokens"])


_no_gpu = None  # why there is none ("" when there is), asked once


def need_gpu():
    """Real binaries without a usable GPU: skip, with decoded's reason."""
    global _no_gpu
    if EMULATED:
        return
    if _no_gpu is None:
        d = Decoded(*MODEL, *MEM, wait=False)
        with d:
            try:
                d.wait_ready()
                _no_gpu = ""
            except RuntimeError:
                if "--device cuda: " not in d.log():
                    raise
                _no_gpu = d.log().strip().splitlines()[-1]
    if _no_gpu:
        skip("no usable GPU: " + _no_gpu)
    if DIRECT and _no_direct is None:
        d = Decoded(*MODEL, *MEM, "--log-level", "info")
        with d:
            _set_no_direct("" if "(direct)" in d.log() else d.log())
    if DIRECT and _no_direct:
        skip("the direct path is not taken here: " + _no_direct)


_no_direct = None  # DIRECT: why the daemons stage instead ("" when they do not)


def _set_no_direct(why):
    global _no_direct
    _no_direct = why


PATH_LINES = (("KV channel: the device pool goes to UCX as it is (direct)",
               "KV channel: blocks move straight from and to the GPU pool",
               "KV channel: block tags made and checked on the GPU (kernels/tag) in its own pool")
              if DIRECT else
              ("--kv-direct is off",
               "KV channel: the GPU pool staged through 16 MiB of page-locked host"))
# staged: prefilld's GPU tags each run in its device pool and copies it down into
# the staging; decoded's copies each run up into its device pool as it lands and
# checks it there
GPU_TAGS = {"p": ("KV channel: block tags made and checked on the GPU (kernels/tag) in its own"
                  if DIRECT else "KV channel: block tags made on the GPU (kernels/tag) in its "
                  "own pool, from which each run is then copied down into page-locked host"),
            "d": ("KV channel: block tags made and checked on the GPU (kernels/tag) in its own"
                  if DIRECT else "KV channel: block tags checked on the GPU (kernels/tag) in its "
                  "own pool, into which each run is copied from page-locked host memory")}


def held(d):
    """The KV channel's blocks decoded holds for transfers: its staging's,
    or on the direct path its pool's (a remote prompt's blocks)."""
    return metric(d, "kv_cache_blocks_used" if DIRECT else "kv_staging_blocks_used")


def metric(d, name):
    return d.metric("pdserve:" + name)


def dec_args(psk, *peers, extra=()):
    args = [*MODEL, *MEM, "--kv-psk-file", str(psk), "--local-prefill-max-tokens", "0",
            "--prefill-timeout-ms", "120000", "--log-level", "info"]
    for p in peers:
        args += ["--prefill", p]
    return args + list(extra)


def up(d, p):
    wait_for(lambda: metric(d, "kv_sessions") == 1, 60, "a KV session to " + p.addr)


def test_gpu_pair_answers_as_gpu_decoded_alone(tmp_path):
    need_gpu()
    psk = write_key(tmp_path / "k.psk")
    prompts = [prompt(n) for n in LENGTHS]
    with Prefilld(*MODEL, *MEM, "--log-level", "info", psk=psk) as p, \
            Decoded(*dec_args(psk, p.addr)) as d:
        up(d, p)
        for who, tags in ((p, GPU_TAGS["p"]), (d, GPU_TAGS["d"])):
            for line in PATH_LINES + (tags,):
                assert line in who.log(), (line, who.log())
        # the transports UCX chose, named when the session came up
        assert re.search(r"KV session up: .*UCX transports [a-z_]+/", d.log()), d.log()
        print([x for x in d.log().splitlines() if "KV session up" in x][0])
        dis = [complete(d, x) for x in prompts]
        # and several at once (runs of different prompts interleave in the stagings)
        with cf.ThreadPoolExecutor(4) as ex:
            dis_par = list(ex.map(lambda x: complete(d, x), prompts))
        assert metric(d, "prompt_tokens_total") == 0, "a prompt was prefilled locally"
        assert metric(d, "remote_prompt_tokens_total") == 2 * sum(LENGTHS)
        # the second round finds the first's blocks in decoded's prefix cache
        # (docs/internals/prefix.md): every block either came or was not asked for
        assert metric(d, "kv_blocks_received_total") + metric(d, "kv_blocks_not_sent_total") == \
            2 * sum((n + 15) // 16 for n in LENGTHS)
        assert metric(d, "kv_blocks_not_sent_total") > 0
        assert metric(p, "prompt_tokens_total") == 2 * sum(LENGTHS)
        wait_for(lambda: metric(p, "kv_staging_blocks_used") == 0, 30, "prefilld's staging back")
        assert metric(d, "kv_staging_blocks_used") == 0
        assert metric(p, "kv_blocks_used") == 0
    with Decoded(*MODEL, *MEM) as b:
        loc = [complete(b, x) for x in prompts]
        assert metric(b, "prompt_tokens_total") == sum(LENGTHS)
    n = sum(same(dis[i], loc[i], "prompt %d" % i) +
            same(dis_par[i], loc[i], "parallel %d" % i, exact=False)
            for i in range(len(prompts)))
    print("GPU pair vs GPU decoded alone: %d of %d tokens compared" %
          (n, 2 * len(prompts) * MAX_TOKENS))
    assert n >= len(prompts) * MAX_TOKENS


def test_gpu_tampered_blocks_fail_on_the_gpu_never_a_200(tmp_path):
    """decoded's GPU checks the tags: against a prefilld that corrupts a byte
    of every request's blocks after its GPU tagged them (--test-tamper-every,
    in test builds only), each request fails as an integrity failure, never a
    200, and both stagings come back."""
    need_gpu()
    hooks = subprocess.run([prefilld_binary(), "--test-tamper-every", "1", "--print-config"],
                           capture_output=True, text=True, timeout=60)
    if hooks.returncode != 0:
        skip("prefilld was built without the test hooks (--test-tamper-every)")
    psk = write_key(tmp_path / "k.psk")
    with Prefilld(*MODEL, *MEM, "--test-tamper-every", "1", "--log-level", "info", psk=psk) as p, \
            Decoded(*dec_args(psk, p.addr, extra=("--prefill-failover", "fail"))) as d:
        up(d, p)
        for who, tags in ((p, GPU_TAGS["p"]), (d, GPU_TAGS["d"])):
            assert tags in who.log(), (tags, who.log())
        for n in (5, 40):
            status, out = d.json("POST", "/v1/completions",
                                 {"prompt": prompt(n), "max_tokens": 2, "temperature": 0},
                                 timeout=300)
            assert status == 502 and "integrity" in out["error"]["message"], (status, out)
        assert metric(d, "kv_integrity_failures_total") >= 2
        assert metric(d, "prompt_tokens_total") == 0, "a prompt was prefilled locally"
        wait_for(lambda: metric(p, "kv_staging_blocks_used") == 0, 30, "prefilld's staging back")
        wait_for(lambda: metric(d, "kv_staging_blocks_used") == 0, 30, "decoded's staging back")


def test_gpu_prefilld_killed_mid_transfer_fails_over_and_staging_comes_back(tmp_path):
    need_gpu()
    psk = write_key(tmp_path / "k.psk")
    x = prompt(300, 1)
    with Decoded(*MODEL, *MEM) as b:
        ref = complete(b, x)
    with Prefilld(*MODEL, *MEM, psk=psk) as p:
        port = p.kv_port
        with Decoded(*dec_args(psk, p.addr)) as d:
            up(d, p)
            p.send(signal.SIGSTOP)
            ex = cf.ThreadPoolExecutor(1)
            fut = ex.submit(complete, d, x)
            wait_for(lambda: metric(d, "num_requests_remote_prefill") == 1, 30,
                     "the request to wait on its remote prefill")
            assert held(d) == (300 + 15) // 16
            p.kill9()
            got = fut.result(timeout=300)
            ex.shutdown()
            same(got, ref, "after the failover")
            assert metric(d, "prompt_tokens_total") == 300  # prefilled locally on its GPU
            wait_for(lambda: held(d) == 0, 30, "decoded's blocks back")
            # a prefilld again on the same port: served remotely, no restart of decoded
            with Prefilld(*MODEL, *MEM, psk=psk, kv_port=port) as p2:
                wait_for(lambda: metric(d, "kv_sessions") == 1, 60, "the session back")
                same(complete(d, x), ref, "from the restarted prefilld")
                assert metric(d, "remote_prompt_tokens_total") == 300
                assert metric(p2, "prompt_tokens_total") == 300
                assert metric(d, "kv_staging_blocks_used") == 0


def test_gpu_client_gone_mid_transfer_gives_both_stagings_back(tmp_path):
    """A client that leaves while its prompt's transfer waits on a stopped
    prefilld: decoded cancels it, its staging comes back once the KV channel
    released the blocks; prefilld's, once it runs again and its transfer ends."""
    need_gpu()
    psk = write_key(tmp_path / "k.psk")
    with Prefilld(*MODEL, *MEM, psk=psk) as p, Decoded(*dec_args(psk, p.addr)) as d:
        up(d, p)
        p.send(signal.SIGSTOP)
        try:
            c = post_and_hold(d.port, "/v1/completions",
                              {"prompt": prompt(200, 4), "max_tokens": 4, "stream": True})
            wait_for(lambda: metric(d, "num_requests_remote_prefill") == 1, 30,
                     "the remote prefill")
            assert held(d) == (200 + 15) // 16
            c.close()
            wait_for(lambda: metric(d, "num_requests_remote_prefill") == 0 and
                     metric(d, "kv_staging_blocks_used") == 0 and
                     metric(d, "kv_cache_blocks_used") == 0, 30, "decoded's blocks back")
        finally:
            p.send(signal.SIGCONT)
        wait_for(lambda: metric(p, "kv_staging_blocks_used") == 0 and
                 metric(p, "kv_blocks_used") == 0 and
                 metric(p, "num_requests_running") == 0, 60, "prefilld idle")
        complete(d, prompt(20, 5))  # and the pair still works
        assert metric(d, "remote_prompt_tokens_total") == 20


def test_gpu_prompt_larger_than_a_staging_is_prefilled_locally(tmp_path):
    if DIRECT:
        skip("the direct path has no staging")
    need_gpu()
    psk = write_key(tmp_path / "k.psk")
    big, small = prompt(700, 2), prompt(30, 2)
    with Decoded(*MODEL, *MEM) as b:
        ref_big = complete(b, big)
    # decoded's staging holds 672 tokens: the 700 go local, the 30 remote
    with Prefilld(*MODEL, *MEM, psk=psk) as p, \
            Decoded(*dec_args(psk, p.addr, extra=SMALL_STAGING)) as d:
        up(d, p)
        assert "staging (1 MiB) holds a prompt of at most 672 tokens" in d.log(), d.log()
        same(complete(d, big), ref_big, "decoded's staging too small")
        assert "do not fit the KV channel's staging (--kv-staging-memory)" in d.log()
        complete(d, small)
        assert metric(d, "prompt_tokens_total") == 700
        assert metric(d, "remote_prompt_tokens_total") == 30
        assert metric(p, "prompt_tokens_total") == 30
    # prefilld's does: it refuses the prompt as too large, decoded prefills it
    with Prefilld(*MODEL, *MEM, *SMALL_STAGING, psk=psk) as p, \
            Decoded(*dec_args(psk, p.addr)) as d:
        up(d, p)
        same(complete(d, big), ref_big, "prefilld's staging too small")
        assert metric(d, "prompt_tokens_total") == 700
        assert metric(p, "prompt_tokens_total") == 0
        assert metric(d, "kv_staging_blocks_used") == 0
        assert metric(p, "kv_staging_blocks_used") == 0


def test_gpu_decoded_without_peers_takes_its_first_peers_by_reload_only_direct(tmp_path):
    need_gpu()
    psk = write_key(tmp_path / "k.psk")
    cfg = tmp_path / "decoded.json"
    with open(cfg, "w") as f:
        f.write('{"kv-psk-file": "%s", "local-prefill-max-tokens": 0}' % psk)
    with Prefilld(*MODEL, *MEM, psk=psk) as p, \
            Decoded(*MODEL, *MEM, "--config", str(cfg)) as d:
        with open(cfg, "w") as f:
            f.write('{"kv-psk-file": "%s", "local-prefill-max-tokens": 0, "prefill": ["%s"]}'
                    % (psk, p.addr))
        d.proc.send_signal(signal.SIGHUP)
        if DIRECT:  # nothing to stage through: the peer is taken
            wait_for(lambda: metric(d, "kv_sessions") == 1, 60, "the new peer's session")
            complete(d, prompt(10, 3))
            assert metric(d, "remote_prompt_tokens_total") == 10
            assert metric(p, "prompt_tokens_total") == 10
            return
        wait_for(lambda: "without the KV channel's staging" in d.log(), 30, "the refusal")
        assert "restart decoded with --prefill" in d.log()
        complete(d, prompt(10, 3))
        assert metric(d, "prompt_tokens_total") == 10
        assert metric(p, "prompt_tokens_total") == 0


if __name__ == "__main__":
    # tests/gpu/check.sh: no pytest on the GPU node
    import pathlib
    tests = [(k, v) for k, v in sorted(globals().items()) if k.startswith("test_")]
    passed = skipped = failed = 0
    for name, fn in tests:
        with tempfile.TemporaryDirectory() as t:
            try:
                fn(pathlib.Path(t))
                print("ok", name)
                passed += 1
            except Exception as e:  # noqa: BLE001 -- report and go on
                if type(e).__name__ in ("Skipped", "Skip"):
                    print("skip %s: %s" % (name, e))
                    skipped += 1
                else:
                    import traceback
                    traceback.print_exc()
                    print("FAIL", name)
                    failed += 1
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    sys.exit(1 if failed else 77 if skipped == len(tests) else 0)
