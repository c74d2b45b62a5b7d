"""Every bad input is refused with an OpenAI-shaped 4xx naming the field,
and the daemon serves the next request correctly (dummy weights: what the
model says does not matter here)."""
import http.client
import json
import os
import random
import re
import socket
import urllib.parse

import pytest

from harness import TINY, Decoded, Prefilld, assert_error, sse_events, wait_for, write_key

GOOD = {"prompt": [1, 2, 3], "max_tokens": 4, "temperature": 0}


MODES = ["local"] + (["disaggregated"] if os.environ.get("PREFILLD") else [])


@pytest.fixture(scope="module", params=MODES)
def d(request, tmp_path_factory):
    """decoded alone, and decoded prefilling every prompt on a prefilld
    (the same bad input must be refused the same way before it goes
    anywhere; good input gives the same answers)."""
    args = [*TINY, "--max-model-len", "512", "--max-prompt-tokens", "300",
            "--max-body-size", "1MiB"]
    if request.param == "local":
        with Decoded(*args) as daemon:
            yield daemon
        return
    psk = write_key(tmp_path_factory.mktemp("keys") / "k.psk")
    with Prefilld(*TINY, psk=psk) as p, \
            Decoded(*args, "--prefill", p.addr, "--kv-psk-file", psk,
                    "--local-prefill-max-tokens", "0") as daemon:
        wait_for(lambda: "KV session up" in daemon.log(), 60, "a KV session")
        yield daemon
        assert daemon.metric("pdserve:remote_prompt_tokens_total") > 0
        assert daemon.metric("pdserve:prompt_tokens_total") == 0


@pytest.fixture(scope="module")
def reference(d):
    status, body = d.json("POST", "/v1/completions", GOOD)
    assert status == 200, body
    return body["choices"][0]["text"]


def still_serving(d, reference):
    status, body = d.json("POST", "/v1/completions", GOOD)
    assert status == 200, body
    assert body["choices"][0]["text"] == reference
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def bad(d, reference, payload, want, param=None, path="/v1/completions", headers=None):
    status, body = d.json("POST", path, payload, headers=headers)
    err = assert_error(status, body, want, param)
    still_serving(d, reference)
    return err


def test_invalid_json(d, reference):
    err = bad(d, reference, b'{"prompt": [1, 2], "max_tokens": ', 400)
    assert err["code"] == "invalid_json"


@pytest.mark.parametrize("raw,param,needle", [
    # cJSON keeps the first of duplicate keys; proxies and validators take the
    # last: refused, naming the key
    (b'{"prompt":"x","prompt":[1,2,3],"max_tokens":1}', "prompt", "duplicate key 'prompt'"),
    (b'{"prompt":[1],"max_tokens":1,"max_\\u0074okens":5}', "max_tokens", "duplicate"),
    (b'{"prompt":[1],"max_tokens":1,"stream_options":{"include_usage":true,'
     b'"include_usage":false}}', "stream_options", "duplicate key 'include_usage'"),
    # a NUL would cut the string where cJSON stores it: refused, naming the field
    (b'{"prompt":"abc\\u0000def ghi jkl","max_tokens":1}', "prompt", "NUL"),
    (b'{"prompt":[1],"max_tokens":1,"stop":"e\\u0000zzz"}', "stop", "NUL"),
    (b'{"prompt":[1],"max_tokens":1,"model":"smollm2\\u0000anything"}', "model", "NUL"),
    (b'{"prompt":"a\tb","max_tokens":1}', "prompt", "control character"),
])
def test_json_that_cjson_would_misread(d, reference, raw, param, needle):
    err = bad(d, reference, raw, 400, param)
    assert needle in err["message"], err


def test_chat_role_with_nul_refused(d, reference):
    err = bad(d, reference, b'{"messages":[{"role":"user\\u0000admin","content":"hi"}],'
              b'"max_tokens":1}', 400, "messages", path="/v1/chat/completions")
    assert "NUL" in err["message"], err


@pytest.mark.parametrize("seed", [2**53 + 1, 2**64 - 1, -2**63, -1])
def test_seeds_beyond_a_double_are_exact_and_reproducible(d, reference, seed):
    body = {"prompt": [5, 6, 7], "max_tokens": 8, "temperature": 1.5, "seed": seed,
            "logprobs": 1}
    outs = []
    for _ in range(2):
        status, out = d.json("POST", "/v1/completions", body)
        assert status == 200, out
        outs.append(out["choices"][0]["logprobs"]["tokens"])
    assert outs[0] == outs[1]
    still_serving(d, reference)


@pytest.mark.parametrize("seed", [b"18446744073709551616", b"-9223372036854775809", b"1.5",
                                  b"1e3", b'"7"'])
def test_seed_out_of_range_or_not_an_integer(d, reference, seed):
    bad(d, reference, b'{"prompt":[1],"max_tokens":1,"seed":' + seed + b'}', 400, "seed")


def test_body_not_an_object(d, reference):
    bad(d, reference, b"[1, 2, 3]", 400)


def test_empty_body(d, reference):
    bad(d, reference, b"", 400)


def test_trailing_garbage(d, reference):
    bad(d, reference, b'{"prompt": [1]} xyz', 400)


@pytest.mark.parametrize("field,value", [
    ("temperature", "hot"), ("max_tokens", "5"), ("stream", "yes"), ("top_p", [1]),
    ("seed", 1.5), ("stop", 7), ("logprobs", True), ("prompt", 5), ("top_k", 2.5),
    ("stream_options", "usage"),
])
def test_wrong_types(d, reference, field, value):
    body = dict(GOOD)
    body[field] = value
    bad(d, reference, body, 400, field)


@pytest.mark.parametrize("value", [-1, 0, 2.5, 10**12, 1e300])
def test_bad_max_tokens(d, reference, value):
    body = dict(GOOD, max_tokens=value)
    bad(d, reference, body, 400, "max_tokens")


def test_max_tokens_past_context(d, reference):
    err = bad(d, reference, dict(GOOD, max_tokens=600), 400, "max_tokens")
    assert err["code"] == "context_length_exceeded"
    assert "512" in err["message"]


@pytest.mark.parametrize("field,value", [
    ("temperature", -0.5), ("top_p", 0), ("top_p", 1.5), ("min_p", 2),
    ("presence_penalty", 3), ("frequency_penalty", -2.5), ("top_k", -2), ("logprobs", 21),
])
def test_out_of_range(d, reference, field, value):
    bad(d, reference, dict(GOOD, **{field: value}), 400, field)


@pytest.mark.parametrize("prompt", ["", [], [[]]])
def test_empty_prompt(d, reference, prompt):
    bad(d, reference, dict(GOOD, prompt=prompt), 400, "prompt")


def test_missing_prompt(d, reference):
    bad(d, reference, {"max_tokens": 3}, 400, "prompt")


@pytest.mark.parametrize("prompts", [[[1, 2], "ab"], ["ab", [1, 2]], [[1, 2], [3], "ab"]])
def test_mixed_prompt_list_refused(d, reference, prompts):
    # a list of prompts holds strings or id lists, not both (whichever comes
    # first); refused for the mix, not for the strings this tokenizer-less
    # model could not read anyway
    err = bad(d, reference, dict(GOOD, prompt=prompts), 400, "prompt")
    assert err["code"] != "no_tokenizer", err


def test_too_many_prompts_refused(d, reference):
    err = bad(d, reference, dict(GOOD, prompt=[[1, 2]] * 65), 400, "prompt")
    assert "64" in err["message"], err


def test_token_id_outside_vocabulary(d, reference):
    err = bad(d, reference, dict(GOOD, prompt=[1, 256]), 400, "prompt")
    assert "vocabulary" in err["message"]


@pytest.mark.parametrize("ids", [[-1], [1.5], ["a"]])
def test_bad_token_ids(d, reference, ids):
    bad(d, reference, dict(GOOD, prompt=ids), 400, "prompt")


def test_prompt_over_prompt_cap_is_413(d, reference):
    err = bad(d, reference, dict(GOOD, prompt=[1] * 301), 413, "prompt")
    assert err["code"] == "prompt_too_long"


def test_prompt_over_max_model_len_is_413(d, reference):
    bad(d, reference, dict(GOOD, prompt=[1] * 600), 413, "prompt")


def peak_rss_kib(d):
    with open("/proc/%d/status" % d.proc.pid) as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))


def test_body_of_10_mb_is_413(d, reference):
    """libevent refuses it and drops the rest as it arrives (never held
    whole); its HTML page is rewritten to OpenAI's JSON shape."""
    body = json.dumps(dict(GOOD, pad="x" * (10 << 20))).encode()
    before = peak_rss_kib(d)
    status, headers, data = d.request("POST", "/v1/completions", body)
    err = assert_error(status, json.loads(data), 413)
    assert err["code"] == "request_too_large"
    assert headers["content-type"] == "application/json"
    # (under ASan freed memory sits in its quarantine: RSS says nothing there)
    with open("/proc/%d/maps" % d.proc.pid) as f:
        sanitized = "libasan" in f.read()
    if not sanitized:
        assert peak_rss_kib(d) - before < 5 << 10, "the body was buffered"
    still_serving(d, reference)


def test_chunked_body_over_the_cap_is_413_json(d, reference):
    s = socket.create_connection(("127.0.0.1", d.port), timeout=30)
    try:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        try:
            for _ in range(32):  # 2 MiB, over the 1 MiB cap, no Content-Length
                s.sendall(b"10000\r\n" + chunk + b"\r\n")
            s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # decoded answered at the cap and closed before the rest was sent
        r = http.client.HTTPResponse(s)
        r.begin()
        assert r.status == 413
        assert r.getheader("Content-Type") == "application/json"
        assert_error(413, json.loads(r.read()), 413)
    finally:
        s.close()
    still_serving(d, reference)


def test_unknown_fields_ignored(d, reference):
    body = dict(GOOD, frobnicate={"a": [1, 2]}, user="u1", metadata=None)
    status, out = d.json("POST", "/v1/completions", body)
    assert status == 200, out
    assert out["choices"][0]["text"] == reference
    still_serving(d, reference)


def test_bad_utf8(d, reference):
    body = b'{"prompt": "caf\xc3\x28 \xff", "max_tokens": 2}'
    err = bad(d, reference, body, 400)
    assert err["code"] == "invalid_utf8"


def test_lone_surrogate_escape(d, reference):
    bad(d, reference, b'{"prompt": "\\udc00", "max_tokens": 2}', 400)


def test_json_too_deep(d, reference):
    body = b'{"x": ' + b"[" * 100 + b"]" * 100 + b', "prompt": [1]}'
    bad(d, reference, body, 400)


@pytest.mark.parametrize("n", [0, 17])
def test_n_out_of_range_refused(d, reference, n):
    err = bad(d, reference, dict(GOOD, n=n), 400, "n")
    assert "1..16" in err["message"], err


def test_best_of_other_than_n_refused(d, reference):
    bad(d, reference, dict(GOOD, n=2, best_of=3), 400, "best_of")
    # best_of equal to n is n choices, nothing picked among them
    status, body = d.json("POST", "/v1/completions", dict(GOOD, n=2, best_of=2))
    assert status == 200, body
    assert sorted(c["index"] for c in body["choices"]) == [0, 1]
    still_serving(d, reference)


def test_too_many_choices_refused(d, reference):
    # prompts x n choices, at most 64 in one request: 4 x 16 is the cap itself
    status, body = d.json("POST", "/v1/completions", dict(GOOD, prompt=[[1, 2]] * 4, n=16))
    assert status == 200, body
    assert sorted(c["index"] for c in body["choices"]) == list(range(64))
    err = bad(d, reference, dict(GOOD, prompt=[[1, 2]] * 5, n=16), 400, "n")
    assert "64" in err["message"], err


def test_unsupported_features_named(d, reference):
    # echo is for completions; chat completions have no prompt to echo
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "echo": True}
    bad(d, reference, chat, 400, "echo", path="/v1/chat/completions")
    # max_tokens 0 scores the prompt: only with echo
    err = bad(d, reference, dict(GOOD, max_tokens=0), 400, "max_tokens")
    assert "echo" in err["message"], err
    bad(d, reference, dict(GOOD, best_of=3), 400, "best_of")  # n absent: 1


# ---- logit_bias: {"token id": bias}, ids in [0, n_vocab) as decimal strings,
# biases in [-100, 100], at most 300 entries (OpenAI's rules). The tiny model's
# vocabulary is 256 ids. A refused request changes nothing: no token counted,
# nothing sent to the peer (disaggregated), and the next request is served as
# before. ----

COUNTERS = ("pdserve:prompt_tokens_total", "pdserve:remote_prompt_tokens_total",
            "pdserve:generation_tokens_total", "pdserve:request_success_total",
            "pdserve:num_requests_running", "pdserve:num_requests_waiting")


def counters(d):
    return {name: d.metric(name) for name in COUNTERS}


def bad_bias(d, reference, logit_bias, needle, raw=False):
    """A request whose logit_bias (a JSON value, or its raw bytes) is refused:
    400 naming logit_bias, needle in the message, no counter moved."""
    before = counters(d)
    body = (b'{"prompt":[1,2,3],"max_tokens":4,"temperature":0,"logit_bias":' + logit_bias + b"}"
            if raw else dict(GOOD, logit_bias=logit_bias))
    status, out = d.json("POST", "/v1/completions", body)
    err = assert_error(status, out, 400, "logit_bias")
    assert needle in err["message"], err
    assert counters(d) == before
    still_serving(d, reference)
    return err


@pytest.mark.parametrize("token", [256, 257, 4096, 2**31 - 1])
def test_logit_bias_token_outside_vocabulary(d, reference, token):
    err = bad_bias(d, reference, {str(token): 5}, "logit_bias token")
    assert str(token) in err["message"] and "256" in err["message"], err
    # one bad id among good ones refuses the whole request
    bad_bias(d, reference, {"1": 5, str(token): -5, "2": 0}, "logit_bias token")


@pytest.mark.parametrize("key", ["01", "00", "-1", "abc", "", " 5", "5 ", "+5", "1.0", "1e2",
                                 "0x5", "5a", "2147483648", "99999999999999999999"])
def test_logit_bias_key_not_a_decimal_id(d, reference, key):
    err = bad_bias(d, reference, {key: 1}, "decimal")
    assert err["code"] == "invalid_value", err


@pytest.mark.parametrize("value", [100.5, -100.001, 101, -1000, 1e300, "10", None, True, [1],
                                   {"x": 1}])
def test_logit_bias_value_not_a_number_in_range(d, reference, value):
    bad_bias(d, reference, {"5": value}, "[-100, 100]")


def test_logit_bias_value_too_large_for_a_double(d, reference):
    bad_bias(d, reference, b'{"5":1e999}', "[-100, 100]", raw=True)
    bad_bias(d, reference, b'{"5":-1e999}', "[-100, 100]", raw=True)


@pytest.mark.parametrize("value", [[1], "x", 5, True, [{"5": 1}]])
def test_logit_bias_not_an_object(d, reference, value):
    err = bad_bias(d, reference, value, "object")
    assert err["code"] == "invalid_type", err


def test_logit_bias_over_300_entries(d, reference):
    # 301 keys cannot all be ids of a 256-token vocabulary: the count is what
    # is refused (checked first), whatever the ids
    err = bad_bias(d, reference, {str(i): 1 for i in range(301)}, "300")
    assert "301" in err["message"], err


def test_logit_bias_duplicate_id(d, reference):
    # cJSON would keep the first of the two; refused, naming logit_bias
    bad_bias(d, reference, b'{"5":1,"5":100}', "duplicate key '5'", raw=True)
    bad_bias(d, reference, b'{"5":1,"\\u0035":100}', "duplicate key '5'", raw=True)


def test_logit_bias_key_with_nul(d, reference):
    bad_bias(d, reference, b'{"5\\u0000":1}', "NUL", raw=True)


@pytest.mark.parametrize("logit_bias", [None, {}, {"0": 0}, {"5": -0.0}, {"17": 1e-9}])
def test_logit_bias_accepted_without_effect(d, reference, logit_bias):
    """null, empty, zero biases: the reference's answer."""
    status, out = d.json("POST", "/v1/completions", dict(GOOD, logit_bias=logit_bias))
    assert status == 200, out
    assert out["choices"][0]["text"] == reference
    still_serving(d, reference)


def test_logit_bias_bans_and_unused_bans(d, reference):
    """The dummy model spells token i "[i]". -100 on an id greedy does not
    pick changes nothing; -100 on every id the reference emitted: none of
    them comes out."""
    emitted = {int(t) for t in re.findall(r"\[(\d+)\]", reference)}
    assert reference == "".join("[%s]" % t for t in re.findall(r"\[(\d+)\]", reference))
    unused = next(i for i in range(255, -1, -1) if i not in emitted)
    status, out = d.json("POST", "/v1/completions", dict(GOOD, logit_bias={str(unused): -100}))
    assert status == 200 and out["choices"][0]["text"] == reference, out
    status, out = d.json("POST", "/v1/completions",
                         dict(GOOD, logit_bias={str(i): -100 for i in emitted}))
    assert status == 200, out
    got = {int(t) for t in re.findall(r"\[(\d+)\]", out["choices"][0]["text"])}
    assert len(re.findall(r"\[(\d+)\]", out["choices"][0]["text"])) == 4, out
    assert not got & emitted, (got, emitted)
    still_serving(d, reference)


@pytest.mark.parametrize("token", [0, 5, 255])
def test_logit_bias_at_the_edges_forces_the_token(d, reference, token):
    """+100 (the cap) on one id, the first and last of the vocabulary
    included: greedy emits it at every position (disaggregated, the first
    token is prefilld's, sampled with the bias it was sent)."""
    for key_body in ({str(token): 100}, {str(token): 100.0}, {str(token): 1e2}):
        status, out = d.json("POST", "/v1/completions", dict(GOOD, logit_bias=key_body))
        assert status == 200, out
        assert out["choices"][0]["text"] == "[%d]" % token * 4, out
    still_serving(d, reference)


# ---- echo (completions): the prompt before the completion; with logprobs
# its tokens' log-probabilities (the first null, as OpenAI's); max_tokens 0
# only with echo (the prompt scored, nothing generated). The dummy model
# spells token i "[i]". Disaggregated, prefilld scores the prompt (PROMPT_LP
# frames): the same numbers as decoded alone (`alone`). ----

@pytest.fixture(scope="module")
def alone(d):
    """decoded alone: d itself, or (d disaggregated) one started beside it."""
    if "--prefill" not in d.args:
        yield d
        return
    with Decoded(*TINY, "--max-model-len", "512", "--max-prompt-tokens", "300",
                 "--max-body-size", "1MiB") as daemon:
        yield daemon


def same_as_alone(d, alone, body):
    """body's 200 answer on d; disaggregated, equal to decoded alone's (the
    same engine and arithmetic: exactly, but for the ids). With several
    choices the rows decode batched, and a row whose prompt came from the
    peer joins the batch at another step than it does alone: there the texts,
    tokens, offsets and the prompts' numbers are equal, the completions'
    log-probabilities within 1e-4 (test_decoded_batching.py's rule)."""
    status, out = d.json("POST", "/v1/completions", body)
    assert status == 200, out
    if alone is not d:
        status, ref = alone.json("POST", "/v1/completions", body)
        assert status == 200, ref
        assert out["usage"] == ref["usage"], (out, ref)
        if len(ref["choices"]) == 1:
            assert out["choices"] == ref["choices"], (out, ref)
        else:
            for a, b in zip(out["choices"], ref["choices"]):
                close_choices(a, b)
    return out


def close_choices(a, b):
    """Two choices of one batched request: equal but for the completion's
    log-probabilities, which are within 1e-4 (the prompt's come first and
    are the same: prefill is not batched across choices)."""
    la, lb = a.get("logprobs"), b.get("logprobs")
    assert {k: v for k, v in a.items() if k != "logprobs"} == \
        {k: v for k, v in b.items() if k != "logprobs"}, (a, b)
    assert (la is None) == (lb is None), (a, b)
    if la is None:
        return
    assert la["tokens"] == lb["tokens"] and la["text_offset"] == lb["text_offset"], (a, b)
    for x, y in zip(la["token_logprobs"], lb["token_logprobs"]):
        assert (x is None and y is None) or abs(x - y) <= 1e-4, (a, b)
    for x, y in zip(la["top_logprobs"], lb["top_logprobs"]):
        assert (x is None and y is None) or (x.keys() == y.keys() and all(
            abs(x[k] - y[k]) <= 1e-4 for k in x)), (a, b)


def ids_text(ids):
    return "".join("[%d]" % i for i in ids)


def check_prompt_lp(lp, ids, n_top):
    assert lp["tokens"][:len(ids)] == ["[%d]" % i for i in ids], lp
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None, lp
    assert lp["text_offset"][:len(ids)] == [len(ids_text(ids[:k])) for k in range(len(ids))]
    for k in range(1, len(ids)):
        v, top = lp["token_logprobs"][k], lp["top_logprobs"][k]
        assert isinstance(v, float) and v <= 0, (k, v)
        assert len(top) == n_top, (k, top)
        assert all(re.fullmatch(r"\[\d+\]", t) and x <= 0 for t, x in top.items()), (k, top)
        if lp["tokens"][k] in top:
            assert top[lp["tokens"][k]] == v, (k, v, top)
        elif top:
            assert v <= min(top.values()) + 1e-6, (k, v, top)


def test_echo_max_tokens_0_on_token_ids(d, alone, reference):
    """The prompt's text and log-probabilities, the first null; finish
    "length", no completion token counted or generated; the prompt counted
    once (here or at the peer)."""
    before = counters(d)
    for ids, n_top in (([1, 2, 3], 1), ([1, 2, 3], 0), ([200, 0, 255, 7, 7, 7, 9], 3), ([42], 2)):
        out = same_as_alone(d, alone, {"prompt": ids, "max_tokens": 0, "echo": True,
                                       "logprobs": n_top})
        ch = out["choices"][0]
        assert ch["text"] == ids_text(ids) and ch["finish_reason"] == "length", out
        assert len(ch["logprobs"]["tokens"]) == len(ids)
        check_prompt_lp(ch["logprobs"], ids, n_top)
        assert out["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0,
                                "total_tokens": len(ids)}
    # without logprobs: the text alone
    out = same_as_alone(d, alone, {"prompt": [1, 2, 3], "max_tokens": 0, "echo": True})
    assert out["choices"][0]["text"] == "[1][2][3]" and out["choices"][0]["logprobs"] is None
    after = counters(d)
    assert after["pdserve:generation_tokens_total"] == before["pdserve:generation_tokens_total"]
    counted = sum(after[k] - before[k] for k in ("pdserve:prompt_tokens_total",
                                                 "pdserve:remote_prompt_tokens_total"))
    assert counted == 3 + 3 + 7 + 1 + 3, counted
    still_serving(d, reference)


def test_echo_then_the_completion(d, alone, reference):
    """echo with max_tokens 4: the prompt, then the reference's completion
    (what GOOD gives without echo); offsets go on after the prompt's text."""
    out = same_as_alone(d, alone, dict(GOOD, echo=True, logprobs=2))
    ch = out["choices"][0]
    assert ch["text"] == "[1][2][3]" + reference, ch
    lp = ch["logprobs"]
    check_prompt_lp(lp, [1, 2, 3], 2)
    assert "".join(lp["tokens"]) == ch["text"] and len(lp["tokens"]) == 7
    assert lp["text_offset"] == [len("".join(lp["tokens"][:k])) for k in range(7)]
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    # several prompts and n=2: each choice its prompt, then what it gives alone
    out = same_as_alone(d, alone, dict(GOOD, prompt=[[1, 2, 3], [9, 8]], n=2, echo=True,
                                       logprobs=1, ignore_eos=True))
    chs = sorted(out["choices"], key=lambda c: c["index"])
    assert [c["index"] for c in chs] == [0, 1, 2, 3]
    status, ref98 = d.json("POST", "/v1/completions", dict(GOOD, prompt=[9, 8], ignore_eos=True))
    assert status == 200, ref98
    for c, ids, completion in ((chs[0], [1, 2, 3], reference), (chs[1], [1, 2, 3], reference),
                               (chs[2], [9, 8], ref98["choices"][0]["text"]),
                               (chs[3], [9, 8], ref98["choices"][0]["text"])):
        assert c["text"] == ids_text(ids) + completion, (c, completion)
        check_prompt_lp(c["logprobs"], ids, 1)
    # greedy: a prompt's two choices are the same tokens; the prompt's numbers
    # are the same (the first choice's), the completion's within batching's
    for a, b, n in ((chs[0], chs[1], 3), (chs[2], chs[3], 2)):
        la, lb = a["logprobs"], b["logprobs"]
        assert la["tokens"] == lb["tokens"] and la["text_offset"] == lb["text_offset"]
        assert la["token_logprobs"][:n] == lb["token_logprobs"][:n]
        assert la["top_logprobs"][:n] == lb["top_logprobs"][:n]
        for x, y in zip(la["token_logprobs"][n:], lb["token_logprobs"][n:]):
            assert abs(x - y) <= 1e-4, (la, lb)
    assert out["usage"] == {"prompt_tokens": 5, "completion_tokens": 16, "total_tokens": 21}
    still_serving(d, reference)


def test_echo_streamed_first_event_is_the_prompt(d, reference):
    for body in (dict(GOOD, echo=True, stream=True, logprobs=1),
                 dict(GOOD, echo=True, stream=True, max_tokens=0, logprobs=1),
                 dict(GOOD, echo=True, stream=True)):
        status, _, raw = d.request("POST", "/v1/completions", body)
        events = sse_events(raw)
        assert status == 200 and events[-1] == "[DONE]", raw
        chunks = [json.loads(e)["choices"][0] for e in events[:-1]]
        assert chunks[0]["text"] == "[1][2][3]" and chunks[0]["finish_reason"] is None, chunks
        if "logprobs" in body:
            check_prompt_lp(chunks[0]["logprobs"], [1, 2, 3], 1)
            assert len(chunks[0]["logprobs"]["tokens"]) == 3
        else:
            assert chunks[0]["logprobs"] is None
        want = "[1][2][3]" + (reference if body["max_tokens"] else "")
        assert "".join(c["text"] for c in chunks) == want, chunks
        assert [c["finish_reason"] for c in chunks][-1] == "length"
    still_serving(d, reference)


def test_echo_with_logprobs_20_the_cap(d, alone, reference):
    """logprobs=20 (the cap) on the longest prompt this server takes (300
    ids): every position after the first has 20 distinct alternatives in
    order, the prompt's own value where it is among them; n=2 sampled
    choices echo the same numbers; disaggregated, all decoded alone's. (Ids
    below 100: see test_echo_text_of_long_spelled_ids.)"""
    rng = random.Random(20)
    ids = [rng.randrange(0, 100) for _ in range(300)]
    out = same_as_alone(d, alone, {"prompt": ids, "max_tokens": 0, "echo": True,
                                   "logprobs": 20})
    lp = out["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == 300
    check_prompt_lp(lp, ids, 20)
    for k in range(1, 300):
        vals = list(lp["top_logprobs"][k].values())
        assert vals == sorted(vals, reverse=True), (k, vals)
    out2 = same_as_alone(d, alone, {"prompt": ids, "max_tokens": 3, "echo": True, "logprobs": 20,
                                    "n": 2, "temperature": 1.0, "seed": 7, "ignore_eos": True})
    for c in out2["choices"]:
        got = c["logprobs"]
        assert {k: v[:300] for k, v in got.items()} == lp, c["index"]
        assert len(got["tokens"]) == 303 and all(len(t) == 20 for t in got["top_logprobs"][300:])
        assert got["text_offset"][300] == len(ids_text(ids))
    still_serving(d, reference)


def test_echo_text_of_long_spelled_ids(d, reference):
    """The dummy model's echo of ids spelled in 5 bytes ("[200]"): 100 of
    them are 500 bytes, more than decode_ids' first buffer (4 x 100 + 64)."""
    for ids in ([200] * 100, [255] * 300, list(range(100, 256))):
        status, out = d.json("POST", "/v1/completions", {"prompt": ids, "max_tokens": 0,
                                                         "echo": True})
        assert status == 200, out
        assert out["choices"][0]["text"] == ids_text(ids)
    still_serving(d, reference)


@pytest.mark.parametrize("body,status,param", [
    # chat has no prompt to echo
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "echo": True}, 400, "echo"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0, "echo": True}, 400, "echo"),
    # max_tokens 0 needs echo; below 0 never
    (dict(GOOD, max_tokens=0), 400, "max_tokens"),
    (dict(GOOD, max_tokens=0, echo=False), 400, "max_tokens"),
    (dict(GOOD, max_tokens=0, echo=None), 400, "max_tokens"),
    (dict(GOOD, max_tokens=-1, echo=True), 400, "max_tokens"),
    # echo is a boolean
    (dict(GOOD, echo=1), 400, "echo"),
    (dict(GOOD, echo="true"), 400, "echo"),
    (dict(GOOD, echo=[True]), 400, "echo"),
    # the other fields' rules hold with echo
    (dict(GOOD, max_tokens=0, echo=True, logprobs=21), 400, "logprobs"),
    (dict(GOOD, max_tokens=0, echo=True, prompt=[1, 256]), 400, "prompt"),
    (dict(GOOD, max_tokens=0, echo=True, prompt=[1] * 301), 413, "prompt"),
    (dict(GOOD, max_tokens=0, echo=True, prompt=[[1, 2], [3, 999]]), 400, "prompt"),
    (dict(GOOD, max_tokens=0, echo=True, prompt="text"), 400, "prompt"),
    (dict(GOOD, max_tokens=600, echo=True), 400, "max_tokens"),
    (dict(GOOD, max_tokens=0, echo=True, n=17), 400, "n"),
    (dict(GOOD, max_tokens=0, echo=True, logit_bias={"256": 1}), 400, "logit_bias"),
])
def test_echo_refusals_change_nothing(d, reference, body, status, param):
    """Refused (naming the field), nothing counted, nothing sent to the peer,
    and the next request served as before."""
    before = counters(d)
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    got, out = d.json("POST", path, body)
    err = assert_error(got, out, status, param)
    if param == "max_tokens" and body["max_tokens"] < 1:
        assert "echo" in err["message"], err
    assert counters(d) == before
    still_serving(d, reference)


def test_echo_prompt_lp_in_full_frames(tmp_path):
    """The largest PROMPT_LP frames: a prompt of 2100 ids scored with
    logprobs=20 sends 2099 rows in frames of 1024, 1024 and 51 rows of 20
    alternatives (the frame's largest body); disaggregated equals decoded
    alone exactly. The longest prompt a context takes (max-model-len - 1:
    max_tokens 0 runs for one token) is scored too, and one more is refused."""
    if not os.environ.get("PREFILLD"):
        pytest.skip("set PREFILLD to the prefilld binary")
    args = [*TINY, "--max-model-len", "2200"]
    rng = random.Random(2100)  # ids below 100: test_echo_text_of_long_spelled_ids
    bodies = [{"prompt": [rng.randrange(0, 100) for _ in range(n)], "max_tokens": mt,
               "echo": True, "logprobs": 20, "ignore_eos": True, "temperature": 0}
              for n, mt in ((2100, 0), (2100, 3), (2199, 0))]
    with Decoded(*args) as loc:
        local = [loc.json("POST", "/v1/completions", b, timeout=300) for b in bodies]
    psk = write_key(tmp_path / "k.psk")
    with Prefilld(*TINY, psk=psk) as p, \
            Decoded(*args, "--prefill", p.addr, "--kv-psk-file", psk,
                    "--local-prefill-max-tokens", "0") as a:
        wait_for(lambda: "KV session up" in a.log(), 60, "a KV session")
        for b, (status, ref) in zip(bodies, local):
            assert status == 200, ref
            status, out = a.json("POST", "/v1/completions", b, timeout=300)
            assert status == 200, out
            assert out["choices"] == ref["choices"] and out["usage"] == ref["usage"]
            lp = out["choices"][0]["logprobs"]
            n = len(b["prompt"])
            assert len(lp["tokens"]) == n + b["max_tokens"]
            check_prompt_lp(lp, b["prompt"], 20)
        status, out = a.json("POST", "/v1/completions", dict(bodies[2], prompt=[1] * 2200))
        assert_error(status, out, 413, "prompt")
        assert a.metric("pdserve:prompt_tokens_total") == 0
        assert a.metric("pdserve:remote_prompt_tokens_total") == 2100 + 2100 + 2199
        assert p.metric("pdserve:prefill_requests_total") == 3
        assert a.metric("pdserve:prefill_failovers_total") == 0


def test_text_prompt_without_tokenizer(d, reference):
    err = bad(d, reference, dict(GOOD, prompt="hello"), 400, "prompt")
    assert err["code"] == "no_tokenizer"


def test_chat_without_tokenizer(d, reference):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    bad(d, reference, body, 400, "messages", path="/v1/chat/completions")


@pytest.mark.parametrize("messages", [
    None, [], "hi", [{"content": "no role"}], [{"role": "wizard", "content": "x"}],
    [{"role": "user", "content": 5}], [{"role": "user"}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
])
def test_bad_messages(d, reference, messages):
    body = {"max_tokens": 2}
    if messages is not None:
        body["messages"] = messages
    bad(d, reference, body, 400, "messages", path="/v1/chat/completions")


def test_top_logprobs_needs_logprobs(d, reference):
    body = {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}
    bad(d, reference, body, 400, "top_logprobs", path="/v1/chat/completions")


def test_unknown_model_is_404(d, reference):
    err = bad(d, reference, dict(GOOD, model="gpt-9"), 404, "model")
    assert err["code"] == "model_not_found"


def test_unknown_path_is_404(d, reference):
    status, body = d.json("POST", "/v1/embeddings", GOOD)
    assert_error(status, body, 404)
    status, body = d.json("GET", "/nope")
    assert_error(status, body, 404)
    still_serving(d, reference)


def test_wrong_method_is_405(d, reference):
    status, body = d.json("GET", "/v1/completions")
    assert_error(status, body, 405)
    status, body = d.json("DELETE", "/v1/models")
    assert_error(status, body, 405)
    still_serving(d, reference)


def test_garbage_http(d, reference):
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n")
        data = s.recv(4096)
        assert data == b"" or data.startswith(b"HTTP/1.1 400")
    still_serving(d, reference)


def test_headers_too_large(d, reference):
    # libevent answers 400 and closes, possibly before the client has sent it all
    try:
        status, _, _ = d.request("POST", "/v1/completions", GOOD, headers={"X-Big": "a" * 40000})
        assert status in (400, 413, 431)
    except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
        pass
    still_serving(d, reference)


def test_request_id_echoed_or_made(d, reference):
    status, headers, data = d.request("POST", "/v1/completions", GOOD,
                                      headers={"X-Request-Id": "trace-42"})
    assert status == 200
    assert headers["x-request-id"] == "trace-42"
    assert json.loads(data)["id"] == "trace-42"
    assert "trace-42: /v1/completions 200" in d.log()
    for given in ["has space", "x" * 200, ""]:
        status, headers, data = d.request("POST", "/v1/completions", GOOD,
                                          headers={"X-Request-Id": given})
        assert status == 200
        made = headers["x-request-id"]
        assert made.startswith("cmpl-") and len(made) == 5 + 24
        assert json.loads(data)["id"] == made
    # errors carry the id too, and it is in the log line about them
    status, headers, _ = d.request("POST", "/v1/completions", b"{", headers={"X-Request-Id": "bad-1"})
    assert status == 400 and headers["x-request-id"] == "bad-1"
    assert "bad-1: /v1/completions 400" in d.log()


def test_missing_and_wrong_api_key():
    with Decoded(*TINY, "--api-key", "s3cret") as d:
        status, body = d.json("POST", "/v1/completions", GOOD)
        assert_error(status, body, 401)
        status, body = d.json("GET", "/v1/models", headers={"Authorization": "Bearer nope"})
        assert_error(status, body, 401)
        status, body = d.json("POST", "/v1/completions", GOOD, headers={"Authorization": "s3cret"})
        assert_error(status, body, 401)
        status, body = d.json("POST", "/v1/completions", GOOD,
                              headers={"Authorization": "Bearer s3cret"})
        assert status == 200, body
        # health stays open (load balancers probe it without the key)
        assert d.request("GET", "/health")[0] == 200
        # without the key, no path says whether it exists
        for path in ("/v1/embeddings", "/v2/anything", "/admin"):
            status, body = d.json("GET", path)
            assert_error(status, body, 401)
        status, body = d.json("GET", "/v1/embeddings", headers={"Authorization": "Bearer s3cret"})
        assert_error(status, body, 404)
        assert "s3cret" not in d.log()


# ---- HTTP framing through raw sockets ----

def read_response(f, head=False):
    """One response from f (a socket's makefile('rb')): (status, headers, body);
    a HEAD response has no body whatever its Content-Length says."""
    status = int(f.readline().split()[1])
    headers = {}
    while True:
        line = f.readline().decode().rstrip("\r\n")
        if not line:
            break
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if head:
        return status, headers, b""
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            n = int(f.readline().split(b";")[0], 16)
            if n == 0:
                f.readline()
                return status, headers, body
            body += f.read(n)
            f.readline()
    return status, headers, f.read(int(headers["content-length"]))


def test_head_has_length_and_no_body_and_the_connection_goes_on(d, reference):
    s = socket.create_connection(("127.0.0.1", d.port))
    f = s.makefile("rb")
    for path, want in (("/health", 200), ("/v1/models", 200), ("/v1/completions", 405)):
        s.sendall(b"HEAD %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
        st, h, _ = read_response(f, head=True)
        assert st == want, (path, st)
        s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
        st2, h2, body = read_response(f)
        # the HEAD said exactly what the GET then sent
        assert int(h["content-length"]) == len(body) > 0, (path, h, body)
    # and a real request on the same connection after them
    payload = json.dumps(GOOD).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
    st, _, body = read_response(f)
    assert st == 200 and json.loads(body)["choices"][0]["text"] == reference
    s.close()


@pytest.mark.parametrize("size_line,want", [
    (b"%x", 200),              # plain
    (b"%x;name=value", 200),   # an extension (RFC 9112 7.1.1): ignored
    (b"%x ; a=b;c", 200),
    (b"zz", 400),              # not hex
    (b"-1", 400),
    (b"0x%x", 400),
    (b"", 400),
])
def test_chunked_sizes(d, reference, size_line, want):
    payload = json.dumps(GOOD).encode()
    line = size_line % len(payload) if b"%" in size_line else size_line
    s = socket.create_connection(("127.0.0.1", d.port))
    f = s.makefile("rb")
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
              b"Content-Type: application/json\r\n\r\n" + line + b"\r\n" + payload +
              b"\r\n0\r\n\r\n")
    st, _, body = read_response(f)
    s.close()
    assert st == want, (st, body)
    if want == 200:
        assert json.loads(body)["choices"][0]["text"] == reference
    else:
        err = json.loads(body)["error"]
        assert "chunk size" in err["message"], err
    still_serving(d, reference)


def test_suffix_refused(d, reference):
    bad(d, reference, {"prompt": [1, 2], "suffix": "the end"}, 400, "suffix")


def test_completions_default_to_16_tokens(d, reference):
    status, body = d.json("POST", "/v1/completions", {"prompt": [1, 2, 3], "temperature": 0,
                                                      "ignore_eos": True})
    assert status == 200, body
    assert body["usage"]["completion_tokens"] == 16


def test_models_by_id(d, reference):
    status, body = d.json("GET", "/v1/models")
    name = body["data"][0]["id"]
    status, one = d.json("GET", "/v1/models/" + urllib.parse.quote(name, safe=""))
    assert status == 200 and one["id"] == name and one["object"] == "model", one
    status, body = d.json("GET", "/v1/models/no-such-model")
    assert_error(status, body, 404, "model")
