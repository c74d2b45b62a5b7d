"""The official openai client against decoded serving the default model
(SmolLM2-135M-Instruct): completions, chat, streaming, logprobs, stop
strings, usage, seeds, several prompts in one request, n choices per
prompt, logit_bias and echo (locally and through a prefilld peer); curl for
the raw SSE bytes."""
import asyncio
import contextlib
import itertools
import math
import os
import random
import re
import subprocess

import openai
import pytest

from harness import Decoded, Prefilld, default_model, sse_events, wait_for, write_key
from test_disagg import compare

MODEL_PATH = default_model()
if MODEL_PATH is None:
    pytest.skip("the default model is absent ($PDSERVE_MODEL; ./deploy/fetch-model.sh)",
                allow_module_level=True)

NAME = "smollm2"
Q = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def d():
    with Decoded(MODEL_PATH, "--served-model-name", NAME, "--max-model-len", "2048",
                 "--kv-cache-memory", "256MiB") as daemon:
        yield daemon


@pytest.fixture(scope="module")
def client(d):
    return openai.OpenAI(base_url=d.base_url, api_key="unused", max_retries=0, timeout=120)


def test_models_lists_the_served_name(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [NAME]


def test_models_retrieve_by_id(client):
    m = client.models.retrieve(NAME)
    assert m.id == NAME and m.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("not-" + NAME)


def test_completion_without_max_tokens_gives_16(client):
    r = client.completions.create(model=NAME, prompt="Once upon a time", temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 16


def test_suffix_refused_by_the_client(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=NAME, prompt="x", suffix="y", max_tokens=2)
    assert "suffix" in str(e.value)


def test_top_logprobs_keep_tokens_that_cut_a_character(client):
    """Japanese text is made of tokens that are not valid UTF-8 alone; they
    are spelled by their bytes ("bytes:\\xe6\\x9d"), so the 5 alternatives at
    each position stay 5 distinct keys (they all read U+FFFD before)."""
    r = client.completions.create(model=NAME, prompt="日本語の文章を書いてください。東京は",
                                  max_tokens=8, temperature=0, logprobs=5)
    lp = r.choices[0].logprobs
    assert all(len(alts) == 5 for alts in lp.top_logprobs), lp.top_logprobs
    spelled = [t for alts in lp.top_logprobs for t in alts if t.startswith("bytes:")]
    assert spelled, "no alternative cut a character: the prompt no longer tests this"
    for t in spelled:
        assert re.fullmatch(r"bytes:(\\x[0-9a-f]{2})+", t), t
    assert "\ufffd" not in "".join(t for alts in lp.top_logprobs for t in alts)


def test_tokenize_and_detokenize_as_vllm(d):
    """vLLM's /tokenize and /detokenize: the counts the completions report,
    and a round trip back to the text."""
    text = "Hello, world! Bonjour, le monde. 日本語"
    status, t = d.json("POST", "/tokenize", {"model": NAME, "prompt": text})
    assert status == 200, t
    assert t["count"] == len(t["tokens"]) and t["max_model_len"] == 2048
    status, c = d.json("POST", "/v1/completions", {"model": NAME, "prompt": text,
                                                   "max_tokens": 1, "temperature": 0})
    assert status == 200 and c["usage"]["prompt_tokens"] == t["count"], (c, t)
    status, back = d.json("POST", "/detokenize", {"model": NAME, "tokens": t["tokens"]})
    assert status == 200 and back["prompt"] == text, back
    # chat: the template's tokens, as the chat endpoint counts them
    status, tc = d.json("POST", "/tokenize", {"model": NAME, "messages": Q})
    status2, cc = d.json("POST", "/v1/chat/completions", {"model": NAME, "messages": Q,
                                                          "max_tokens": 1, "temperature": 0})
    assert status == status2 == 200 and cc["usage"]["prompt_tokens"] == tc["count"]
    # refusals name the field
    status, err = d.json("POST", "/detokenize", {"tokens": [1, -2]})
    assert status == 400 and err["error"]["param"] == "tokens", err
    status, err = d.json("POST", "/detokenize", {"tokens": [49152]})
    assert status == 400 and err["error"]["param"] == "tokens", err
    status, err = d.json("GET", "/tokenize")
    assert status == 405, err


def test_chat_greedy_answers(client):
    r = client.chat.completions.create(model=NAME, messages=Q, max_tokens=20, temperature=0)
    assert r.object == "chat.completion"
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert "Paris" in c.message.content
    assert c.finish_reason == "stop"
    assert r.usage.completion_tokens >= 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert "<|im_end|>" not in c.message.content


def test_completion_text_prompt(client):
    r = client.completions.create(model=NAME, prompt="The capital of France is", max_tokens=5,
                                  temperature=0)
    assert r.object == "text_completion"
    assert "Paris" in r.choices[0].text
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5
    assert r.usage.prompt_tokens == 5


def token_ids(texts):
    """Ids of tokens by their stored text, read from the GGUF with the gguf package."""
    from gguf import GGUFReader
    r = GGUFReader(MODEL_PATH)
    f = r.fields["tokenizer.ggml.tokens"]
    vocab = {bytes(f.parts[i]).decode(): k for k, i in enumerate(f.data)}
    return [vocab[t] for t in texts]


def test_completion_token_ids_equal_text(client):
    text = client.completions.create(model=NAME, prompt="The capital of France is", max_tokens=6,
                                     temperature=0)
    ids = token_ids(["The", "\u0120capital", "\u0120of", "\u0120France", "\u0120is"])
    r = client.completions.create(model=NAME, prompt=ids, max_tokens=6, temperature=0)
    assert r.usage.prompt_tokens == text.usage.prompt_tokens == 5
    assert r.choices[0].text == text.choices[0].text


def test_streamed_chat_equals_whole(client):
    whole = client.chat.completions.create(model=NAME, messages=Q, max_tokens=24, temperature=0)
    stream = client.chat.completions.create(model=NAME, messages=Q, max_tokens=24, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    text, finish, usage, roles = "", None, None, []
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert roles == ["assistant"]
    assert text == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens


def test_streamed_completion_usage(client):
    stream = client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=10,
                                       temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert chunks[-2].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks[:-1])


def test_completion_logprobs(client):
    r = client.completions.create(model=NAME, prompt="The capital of France is", max_tokens=4,
                                  temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 4 == len(lp.token_logprobs) == len(lp.top_logprobs)
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset[0] == 0
    for tok, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert value <= 0 and len(top) == 3
        # greedy: the chosen token is the most probable one
        assert math.isclose(value, max(top.values()), abs_tol=1e-5)


def test_chat_logprobs(client):
    r = client.chat.completions.create(model=NAME, messages=Q, max_tokens=5, temperature=0,
                                       logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert 1 <= len(content) <= 5
    assert "".join(t.token for t in content).startswith(r.choices[0].message.content[:3])
    for t in content:
        assert len(t.top_logprobs) == 2
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token
        assert 0 < sum(math.exp(x.logprob) for x in t.top_logprobs) <= 1.0001


def test_stop_string_across_tokens(client):
    base = client.completions.create(model=NAME, prompt="1, 2, 3, 4,", max_tokens=16,
                                     temperature=0).choices[0].text
    # a stop string that starts inside one token and ends in another
    assert " 6," in base, base
    stop = base[base.index(" 6,") - 1: base.index(" 6,") + 2]
    r = client.completions.create(model=NAME, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0,
                                  stop=[stop, "never-there"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == base[: base.index(stop)]
    # streamed: no chunk ever shows part of the stop string
    stream = client.completions.create(model=NAME, prompt="1, 2, 3, 4,", max_tokens=16,
                                       temperature=0, stop=stop, stream=True)
    text = "".join(c.choices[0].text for c in stream if c.choices)
    assert text == r.choices[0].text


def test_seed_reproduces_sampling(client):
    def run(seed):
        return client.chat.completions.create(model=NAME, messages=Q, max_tokens=24,
                                              temperature=1.0, top_p=0.95, seed=seed
                                              ).choices[0].message.content
    a, b = run(1234), run(1234)
    assert a == b
    others = {run(s) for s in (1, 2, 3, 4)}
    assert len(others | {a}) > 1


def test_penalties_and_min_p_accepted(client):
    r = client.chat.completions.create(model=NAME, messages=Q, max_tokens=8, temperature=0.7,
                                       seed=5, presence_penalty=1.0, frequency_penalty=0.5,
                                       extra_body={"min_p": 0.05, "top_k": 20})
    assert r.choices[0].message.content


def test_wrong_model_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=Q, max_tokens=3)
    assert e.value.body["code"] == "model_not_found"


def test_context_length(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=NAME, prompt="hi", max_tokens=5000)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(model=NAME, prompt="word " * 3000, max_tokens=5)
    assert e.value.status_code == 413


def test_raw_sse_with_curl(d):
    out = subprocess.run(
        ["curl", "-sSN", "--max-time", "60", "-H", "Content-Type: application/json",
         "-D", "-", "-d",
         '{"model":"%s","messages":[{"role":"user","content":"Hi"}],"max_tokens":6,'
         '"temperature":0,"stream":true}' % NAME,
         "http://127.0.0.1:%d/v1/chat/completions" % d.port],
        capture_output=True, check=True, timeout=90).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Content-Type: text/event-stream" in head
    assert b"X-Request-Id: chatcmpl-" in head
    # chunked framing undone by curl: events separated by blank lines, [DONE] last
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    assert body.endswith(b"data: [DONE]\n\n")
    assert all(e.startswith('{"id":"chatcmpl-') for e in events[:-1])


def test_api_key_with_the_client():
    with Decoded(MODEL_PATH, "--served-model-name", NAME, "--max-model-len", "512",
                 "--kv-cache-memory", "64MiB", "--api-key", "k-123") as d:
        bad = openai.OpenAI(base_url=d.base_url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=d.base_url, api_key="k-123", max_retries=0)
        r = good.completions.create(model=NAME, prompt="Hello", max_tokens=2, temperature=0)
        assert r.usage.completion_tokens == 2


# ---- several prompts in one /v1/completions request ----
#
# Choice i must equal the single request of prompt i with the same parameters
# (the sampler is keyed by seed and position, not by choice). The choices of
# one request run batched together and the single requests do not, so "equal"
# is test_decoded_batching.py's "same output" rule (which explains the
# threshold): identical tokens up to the reference's first near-tie,
# log-probabilities within LOGPROB_TOL up to there. ignore_eos: every position
# then has log-probabilities, and every choice has max_tokens tokens whatever
# follows a near-tie, so the usage sums are exact.

LOGPROB_TOL = 1e-3  # DESIGN.md's rule as test_disagg.compare applies it (near-tie gap 0.05)
TEXTS = ["The capital of France is", "Once upon a time", "1, 2, 3, 4,"]
_rng = random.Random(7)
IDS = [[_rng.randrange(100, 49151) for _ in range(n)] for n in (3, 6, 11, 17)]
GREEDY = dict(max_tokens=8, temperature=0, logprobs=2, extra_body={"ignore_eos": True})
SEEDED = dict(max_tokens=8, temperature=0.8, seed=7, logprobs=2,
              extra_body={"ignore_eos": True})


def result(choice):
    lp = choice.logprobs
    return {"text": choice.text, "finish": choice.finish_reason, "tokens": list(lp.tokens),
            "lps": list(lp.token_logprobs), "tops": [dict(t) for t in lp.top_logprobs]}


def check_choices(got, refs):
    """got: one choice per prompt, index i for prompt i (in any order);
    refs: the results of the single requests, in prompt order."""
    by_index = sorted(got, key=lambda r: r["index"])
    assert [r["index"] for r in by_index] == list(range(len(refs)))
    compared = sum(compare(i, g, ref, LOGPROB_TOL)
                   for i, (g, ref) in enumerate(zip(by_index, refs)))
    total = sum(len(ref["tokens"]) for ref in refs)
    # a rule that compares nothing proves nothing
    assert compared >= total // 2, (compared, total)


def choices(response):
    return [dict(result(c), index=c.index) for c in response.choices]


def singles(client, prompts, params):
    """(results, usages) of one request per prompt."""
    rs = [client.completions.create(model=NAME, prompt=p, **params) for p in prompts]
    return [result(r.choices[0]) for r in rs], [r.usage for r in rs]


@pytest.fixture(scope="module")
def text_singles(client):
    return singles(client, TEXTS, GREEDY)


@pytest.fixture(scope="module")
def ids_singles(client):
    return singles(client, IDS, SEEDED)


def assert_usage_sums(usage, usages):
    assert usage.prompt_tokens == sum(u.prompt_tokens for u in usages)
    assert usage.completion_tokens == sum(u.completion_tokens for u in usages)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_several_text_prompts_give_one_choice_each(client, text_singles):
    refs, usages = text_singles
    r = client.completions.create(model=NAME, prompt=TEXTS, **GREEDY)
    assert len(r.choices) == len(TEXTS)
    check_choices(choices(r), refs)
    assert_usage_sums(r.usage, usages)
    assert r.usage.completion_tokens == 8 * len(TEXTS)


def test_several_token_id_prompts_seeded_sampling_equals_single_requests(client, ids_singles):
    refs, usages = ids_singles
    r = client.completions.create(model=NAME, prompt=IDS, **SEEDED)
    check_choices(choices(r), refs)
    assert_usage_sums(r.usage, usages)


def test_several_prompts_streamed_interleave_with_indices(client):
    whole = client.completions.create(model=NAME, prompt=TEXTS, **GREEDY)
    chunks = list(client.completions.create(model=NAME, prompt=TEXTS, stream=True,
                                             stream_options={"include_usage": True},
                                             **GREEDY))
    for chunk in chunks[:-1]:
        assert chunk.usage is None and len(chunk.choices) == 1, chunk
    order = [chunk.choices[0].index for chunk in chunks[:-1]]
    per = streamed(chunks[:-1], False)
    assert sorted(per) == list(range(len(TEXTS)))
    assert all(len(p["finishes"]) == 1 for p in per.values()), per
    # the choices advance together, not one after another
    assert order != sorted(order), order
    got = [dict(p, finish=p["finishes"][0], index=i) for i, p in per.items()]
    check_choices(got, [result(c) for c in sorted(whole.choices, key=lambda c: c.index)])
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert last.usage.completion_tokens == whole.usage.completion_tokens == 8 * len(TEXTS)


def test_several_prompts_async(d, text_singles, ids_singles):
    async def both():
        async with openai.AsyncOpenAI(base_url=d.base_url, api_key="unused", max_retries=0,
                                      timeout=120) as c:
            return await asyncio.gather(
                c.completions.create(model=NAME, prompt=TEXTS, **GREEDY),
                c.completions.create(model=NAME, prompt=IDS, **SEEDED))
    texts, ids = asyncio.run(both())
    check_choices(choices(texts), text_singles[0])
    check_choices(choices(ids), ids_singles[0])
    assert_usage_sums(texts.usage, text_singles[1])
    assert_usage_sums(ids.usage, ids_singles[1])


def test_a_bad_prompt_refuses_the_whole_request(d, client):
    def counters():
        return (d.metric("pdserve:prompt_tokens_total"),
                d.metric("pdserve:generation_tokens_total"))
    before = counters()
    bad = [IDS[0], IDS[1][:3] + [49152], IDS[2]]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=NAME, prompt=bad, max_tokens=64, temperature=0)
    assert e.value.body["param"] == "prompt", e.value.body
    assert "vocabulary" in e.value.body["message"], e.value.body
    assert counters() == before
    assert d.metric("pdserve:num_requests_running") == 0
    assert d.metric("pdserve:num_requests_waiting") == 0
    # a good prompt would have been prefilled at once and generated beside
    # this one: the counters move by this request's usage alone
    fresh = [random.Random(99).randrange(100, 49151) for _ in range(5)]
    r = client.completions.create(model=NAME, prompt=fresh, max_tokens=4, temperature=0,
                                  extra_body={"ignore_eos": True})
    after = counters()
    assert after == (before[0] + r.usage.prompt_tokens, before[1] + r.usage.completion_tokens)


@contextlib.contextmanager
def disagg_pair(tmp_path):
    """A prefilld and a decoded prefilling every prompt on it, the session up."""
    psk = write_key(tmp_path / "k.psk")
    mem = ("--kv-cache-memory", "256MiB")
    with Prefilld("--model", MODEL_PATH, *mem, psk=psk) as p, \
            Decoded("--model", MODEL_PATH, *mem, "--served-model-name", NAME,
                    "--max-model-len", "2048", "--kv-psk-file", psk, "--prefill", p.addr,
                    "--local-prefill-max-tokens", "0",
                    # test_disagg.py's dec_args says why the deadline is generous
                    "--prefill-timeout-ms", "120000") as a:
        wait_for(lambda: "KV session up" in a.log(), 60, "a KV session")
        yield p, a


def test_several_prompts_prefilled_by_a_peer_equal_local(tmp_path, text_singles):
    if not os.environ.get("PREFILLD"):
        pytest.skip("set PREFILLD to the prefilld binary")
    refs, usages = text_singles
    with disagg_pair(tmp_path) as (p, a):
        c = openai.OpenAI(base_url=a.base_url, api_key="unused", max_retries=0, timeout=120)
        r = c.completions.create(model=NAME, prompt=TEXTS, **GREEDY)
        assert a.metric("pdserve:prompt_tokens_total") == 0, "a prompt was prefilled locally"
        assert a.metric("pdserve:remote_prompt_tokens_total") == r.usage.prompt_tokens
    check_choices(choices(r), refs)
    assert_usage_sums(r.usage, usages)


# ---- n choices per prompt ----
#
# Choice k of a prompt is sampled with seed + k, so it must equal the single
# request (n=1) with seed + k; with several prompts choice i * n + k is prompt
# i's k-th. The choices run batched (the others fork the first's prompt KV
# and compute only its last position), the single requests do not: "equal"
# is the near-tie rule above. logprobs=2, not 1: the rule needs the two best
# alternatives at each position to see a near-tie.

N_SEEDED = dict(max_tokens=12, temperature=0.9, logprobs=2, extra_body={"ignore_eos": True})
LONG = ("Here is the story of a small town by the sea, told by the people who lived there. " +
        " ".join("On day %d the boats went out and came back with fish." % i
                 for i in range(1, 13)))


def seeded_singles(client, prompts, n, seed, params):
    """(results, usages) of the single requests choice i * n + k stands for:
    prompt i with seed + k, in choice order."""
    rs = [client.completions.create(model=NAME, prompt=p, **dict(params, seed=seed + k))
          for p in prompts for k in range(n)]
    return [result(r.choices[0]) for r in rs], [r.usage for r in rs]


def chat_result(choice):
    """A chat choice in result()'s shape (tops keyed by token text)."""
    content = choice.logprobs.content
    return {"text": choice.message.content, "finish": choice.finish_reason,
            "tokens": [t.token for t in content], "lps": [t.logprob for t in content],
            "tops": [{x.token: x.logprob for x in t.top_logprobs} for t in content]}


def test_n_choices_equal_single_requests_with_seed_plus_k(client):
    refs, usages = seeded_singles(client, ["Once upon a time"], 3, 11, N_SEEDED)
    r = client.completions.create(model=NAME, prompt="Once upon a time", n=3, seed=11,
                                  **N_SEEDED)
    assert len(r.choices) == 3
    check_choices(choices(r), refs)
    # the prompt counted once (OpenAI's), every choice's tokens
    assert r.usage.prompt_tokens == usages[0].prompt_tokens
    assert r.usage.completion_tokens == 3 * 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # seeds 11, 12, 13: not three copies of one sample
    assert len({ref["text"] for ref in refs}) > 1, refs


def test_chat_n_greedy_choices_are_identical(client):
    params = dict(model=NAME, messages=Q, max_tokens=20, temperature=0, logprobs=True,
                  top_logprobs=2)
    one = chat_result(client.chat.completions.create(**params).choices[0])
    r = client.chat.completions.create(n=2, **params)
    assert sorted(c.index for c in r.choices) == [0, 1]
    got = [chat_result(c) for c in sorted(r.choices, key=lambda c: c.index)]
    assert compare(1, got[1], got[0], LOGPROB_TOL) >= len(got[0]["tokens"]) // 2
    check_choices([dict(g, index=i) for i, g in enumerate(got)], [one, one])
    assert "Paris" in got[0]["text"]


def test_n_with_several_prompts_numbers_choices(client):
    prompts = TEXTS[:2]
    refs, usages = seeded_singles(client, prompts, 2, 7, SEEDED)
    r = client.completions.create(model=NAME, prompt=prompts, n=2, **SEEDED)
    assert len(r.choices) == 4
    check_choices(choices(r), refs)  # index i * 2 + k: prompt i, seed 7 + k
    # each prompt once (usages[i * 2] is prompt i's), every choice's tokens
    assert r.usage.prompt_tokens == usages[0].prompt_tokens + usages[2].prompt_tokens
    assert r.usage.completion_tokens == 4 * 8


def streamed(chunks, chat):
    """Per choice index, what the chunks of a stream carried: text, tokens,
    log-probabilities, finish reasons, and (chat) the roles of its deltas."""
    per = {}
    for chunk in chunks:
        for c in chunk.choices:
            p = per.setdefault(c.index, {"text": "", "tokens": [], "lps": [], "tops": [],
                                         "finishes": [], "roles": [], "first_role": None})
            assert not p["finishes"], "a chunk of choice %d after its finish_reason" % c.index
            if chat:
                if not (p["text"] or p["roles"]):
                    p["first_role"] = c.delta.role
                if c.delta.role:
                    p["roles"].append(c.delta.role)
                p["text"] += c.delta.content or ""
                lps = c.logprobs.content if c.logprobs and c.logprobs.content else []
                p["tokens"] += [t.token for t in lps]
                p["lps"] += [t.logprob for t in lps]
                p["tops"] += [{x.token: x.logprob for x in t.top_logprobs} for t in lps]
            else:
                p["text"] += c.text
                if c.logprobs:
                    p["tokens"] += c.logprobs.tokens
                    p["lps"] += c.logprobs.token_logprobs
                    p["tops"] += [dict(t) for t in c.logprobs.top_logprobs]
            if c.finish_reason:
                p["finishes"].append(c.finish_reason)
    return per


def check_streamed(per, n, whole):
    """Every index 0..n-1 has text and exactly one finish_reason, and the
    reassembled choices equal the non-streamed ones (whole: results by index)."""
    assert sorted(per) == list(range(n)), sorted(per)
    for i, p in per.items():
        assert p["text"], (i, p)
        assert len(p["finishes"]) == 1, (i, p["finishes"])
    check_choices([dict(p, finish=p["finishes"][0], index=i) for i, p in per.items()], whole)


def test_n_streamed_completion(client):
    params = dict(model=NAME, prompt="Once upon a time", n=3, seed=11, **N_SEEDED)
    whole = client.completions.create(**params)
    per = streamed(client.completions.create(stream=True, **params), chat=False)
    check_streamed(per, 3, [result(c) for c in sorted(whole.choices, key=lambda c: c.index)])


def test_n_streamed_chat(client):
    params = dict(model=NAME, messages=Q, n=3, max_tokens=12, temperature=0.9, seed=11,
                  logprobs=True, top_logprobs=2)
    whole = client.chat.completions.create(**params)
    per = streamed(client.chat.completions.create(stream=True, **params), chat=True)
    # each choice opens with its role, once
    for i, p in per.items():
        assert p["first_role"] == "assistant" and p["roles"] == ["assistant"], (i, p)
    check_streamed(per, 3, [chat_result(c) for c in sorted(whole.choices,
                                                             key=lambda c: c.index)])


def test_n_disaggregated_ships_the_prompt_once(tmp_path, client):
    if not os.environ.get("PREFILLD"):
        pytest.skip("set PREFILLD to the prefilld binary")
    params = dict(SEEDED, model=NAME, prompt=LONG, n=3, seed=5)
    local = client.completions.create(**params)
    with disagg_pair(tmp_path) as (p, a):
        requests0 = p.metric("pdserve:prefill_requests_total")
        blocks0 = a.metric("pdserve:kv_blocks_received_total")
        c = openai.OpenAI(base_url=a.base_url, api_key="unused", max_retries=0, timeout=120)
        r = c.completions.create(**params)
        n_prompt = r.usage.prompt_tokens
        assert 150 <= n_prompt <= 260, n_prompt
        # one PREFILL, the prompt's blocks once (the others fork them)
        assert p.metric("pdserve:prefill_requests_total") - requests0 == 1
        assert a.metric("pdserve:kv_blocks_received_total") - blocks0 == (n_prompt + 15) // 16
        assert a.metric("pdserve:remote_prompt_tokens_total") == n_prompt
        assert a.metric("pdserve:prompt_tokens_total") == 0, "a prompt was prefilled locally"
    assert n_prompt == local.usage.prompt_tokens
    check_choices(choices(r), [result(c) for c in sorted(local.choices, key=lambda c: c.index)])


def test_n_shares_the_prompt_kv_locally(d, client):
    # ids no other test sends: no prefix of it is cached
    prompt = [random.Random(61).randrange(100, 49151) for _ in range(40)]
    before = d.metric("pdserve:prompt_tokens_total")
    r = client.completions.create(model=NAME, prompt=prompt, n=4, max_tokens=4,
                                  temperature=0.8, seed=3, extra_body={"ignore_eos": True})
    assert len(r.choices) == 4 and r.usage.prompt_tokens == 40
    # computed for the first choice alone; the others fork its blocks
    assert d.metric("pdserve:prompt_tokens_total") - before == 40


def test_n_forks_a_leader_that_ends_at_its_first_token(on, client):
    """max_tokens 1: the first choice ends in the step its prompt is done,
    before the others are admitted; they still fork its prompt's blocks
    (handed down as it ends) instead of prefilling the prompt again -- here,
    or on decoded itself when a peer prefilled it (`on` checks that nothing
    was prefilled locally there). Each choice equals the single request with
    its seed."""
    prompt = [random.Random(67).randrange(100, 49151) for _ in range(40)]
    kw = dict(model=NAME, prompt=prompt, max_tokens=1, temperature=0.9, logprobs=2,
              extra_body={"ignore_eos": True, "cache_salt": "hand-down-%d" % next(_salts)})
    before = on.d.metric("pdserve:prompt_tokens_total")
    r = on.client.completions.create(n=4, seed=11, **kw)
    assert len(r.choices) == 4 and r.usage.prompt_tokens == 40
    if on.p is None:
        assert on.d.metric("pdserve:prompt_tokens_total") - before == 40
    got = sorted(r.choices, key=lambda c: c.index)
    for k, ch in enumerate(got):
        alone = client.completions.create(n=1, seed=11 + k, **kw).choices[0]
        assert ch.text == alone.text, k
        assert abs(ch.logprobs.token_logprobs[0] - alone.logprobs.token_logprobs[0]) < 1e-3


# ---- logit_bias ----
#
# OpenAI's {"token id": bias}: the sampler adds the bias to the logits before
# the penalties and the temperature, while the log-probabilities reported stay
# the model's own. Every case runs on decoded alone and on a decoded whose
# prompts a prefilld peer prefills: there prefilld samples the first token
# (with the bias decoded sent it in the PREFILL frame), and every answer must
# equal the local one exactly (same engine, same arithmetic: tokens, text and
# log-probabilities to the bit). Each request has a cache_salt of its own, so
# that every prompt is computed whole: a prompt resuming from cached prefix
# blocks gets log-probabilities a few 1e-6 off a whole one's, and which
# prompts are cached depends on what ran before.

B_PROMPT = "The capital of France is"
B_GREEDY = dict(max_tokens=8, temperature=0, logprobs=5, extra_body={"ignore_eos": True})
B_CHAT = dict(messages=Q, max_tokens=6, temperature=0, logprobs=True, top_logprobs=5)


class Served:
    """Where a logit_bias case runs: d serves the API (p: its prefilld, or None)."""

    def __init__(self, d, p):
        self.d, self.p = d, p
        self.client = openai.OpenAI(base_url=d.base_url, api_key="unused", max_retries=0,
                                    timeout=120)

    def aclient(self):
        return openai.AsyncOpenAI(base_url=self.d.base_url, api_key="unused", max_retries=0,
                                  timeout=120)


@pytest.fixture(scope="module")
def bias_pair(tmp_path_factory):
    if not os.environ.get("PREFILLD"):
        pytest.skip("set PREFILLD to the prefilld binary")
    with disagg_pair(tmp_path_factory.mktemp("bias")) as pa:
        yield pa


@pytest.fixture(params=["local", "disaggregated"])
def on(request, d):
    if request.param == "local":
        yield Served(d, None)
        return
    p, a = request.getfixturevalue("bias_pair")
    yield Served(a, p)
    assert a.metric("pdserve:prompt_tokens_total") == 0, "a prompt was prefilled locally"
    assert a.metric("pdserve:prefill_failovers_total") == 0


def token_id(d, text):
    """The id of the one token text is: /tokenize says so, /detokenize agrees."""
    status, t = d.json("POST", "/tokenize", {"model": NAME, "prompt": text})
    assert status == 200 and len(t["tokens"]) == 1, (text, t)
    status, back = d.json("POST", "/detokenize", {"model": NAME, "tokens": t["tokens"]})
    assert status == 200 and back["prompt"] == text, (text, back)
    return t["tokens"][0]


_salts = itertools.count()


def salted(kw):
    """kw with a cache_salt no other request has."""
    extra = dict(kw.get("extra_body") or {}, cache_salt="logit-bias-%d" % next(_salts))
    return dict(kw, extra_body=extra)


def _ask(c, kw):
    """One request's choices (result()'s shape, with index), in index order."""
    kw = salted(kw)
    if "messages" in kw:
        r = c.chat.completions.create(model=NAME, **kw)
        out = [dict(chat_result(ch), index=ch.index) for ch in r.choices]
    else:
        r = c.completions.create(model=NAME, **kw)
        out = choices(r)
    return sorted(out, key=lambda ch: ch["index"])


_LOCAL_ANSWERS = {}


def ask(on, client, **kw):
    """The choices of one request on `on`. Disaggregated: every prompt went to
    the peer (one PREFILL each), and the answer equals decoded alone's (client):
    exactly for one choice; several choices decode batched, and the rows join
    the batch at other steps when their prompts come from the peer, so there
    the rule is test_decoded_batching.py's, the tokens equal all the same."""
    if on.p is None:
        return _ask(on.client, kw)
    prompts = kw.get("prompt")
    n_prompts = len(prompts) if isinstance(prompts, list) and isinstance(prompts[0], str) else 1
    before = on.p.metric("pdserve:prefill_requests_total")
    got = _ask(on.client, kw)
    assert on.p.metric("pdserve:prefill_requests_total") - before == n_prompts
    key = repr(sorted(kw.items()))
    if key not in _LOCAL_ANSWERS:
        _LOCAL_ANSWERS[key] = _ask(client, kw)
    local = _LOCAL_ANSWERS[key]
    if len(local) == 1:
        assert got == local, (got, local)
    else:
        check_choices(got, local)
        assert [ch["tokens"] for ch in got] == [ch["tokens"] for ch in local]
        assert [ch["text"] for ch in got] == [ch["text"] for ch in local]
    return got


def without(tops, texts):
    """Top alternatives without the banned ones: what the biased sampler chose
    among (its near-ties are only visible there)."""
    return [{t: v for t, v in top.items() if t not in texts} for top in tops]


def test_logit_bias_minus_100_bans_every_greedy_token(on, client):
    plain = ask(on, client, prompt=B_PROMPT, **B_GREEDY)[0]
    banned = {token_id(on.d, t) for t in plain["tokens"]}
    bias = {str(i): -100 for i in banned}
    got = ask(on, client, prompt=B_PROMPT, logit_bias=bias, **B_GREEDY)[0]
    assert len(got["tokens"]) == 8 and got["text"] == "".join(got["tokens"])
    assert not set(got["tokens"]) & set(plain["tokens"]), (got["tokens"], plain["tokens"])
    assert not {token_id(on.d, t) for t in got["tokens"]} & banned
    # position 0 has the same context: the model's own alternatives, the banned
    # greedy token first among them; the pick is the best of the others
    assert got["tops"][0] == plain["tops"][0]
    assert max(got["tops"][0], key=got["tops"][0].get) == plain["tokens"][0]
    allowed = without(plain["tops"][:1], set(plain["tokens"]))[0]
    assert allowed, plain["tops"][0]
    assert got["tokens"][0] == max(allowed, key=allowed.get)
    assert got["lps"][0] == allowed[got["tokens"][0]]
    # every reported value is the model's: the pick is never better than the
    # best alternative, and sums with them to at most 1
    for k, (tok, lp, top) in enumerate(zip(got["tokens"], got["lps"], got["tops"])):
        assert lp <= max(top.values()) + 1e-6, (k, tok, lp, top)
        if tok not in top:
            assert math.exp(lp) + sum(math.exp(v) for v in top.values()) <= 1 + 1e-4, k


def test_logit_bias_plus_100_forces_one_token(on, client):
    banana = token_id(on.d, " banana")
    plain = ask(on, client, prompt=B_PROMPT, **B_GREEDY)[0]
    assert " banana" not in plain["tokens"] and " banana" not in plain["tops"][0], plain
    got = ask(on, client, prompt=B_PROMPT, logit_bias={str(banana): 100}, **B_GREEDY)[0]
    assert got["tokens"] == [" banana"] * 8 and got["text"] == " banana" * 8, got
    assert got["finish"] == "length"
    # the logprobs are the raw model's: the first is far from the ~0 the biased
    # distribution would give, and its alternatives are the plain request's
    assert got["lps"][0] < -1, got["lps"]
    assert got["tops"][0] == plain["tops"][0]
    for k, (lp, top) in enumerate(zip(got["lps"], got["tops"])):
        if " banana" in top:  # the model has come to expect it: the same value
            assert top[" banana"] == lp, (k, lp, top)
        else:
            assert math.exp(lp) + sum(math.exp(v) for v in top.values()) <= 1 + 1e-4, k
            assert lp < min(top.values()), (k, lp, top)


def test_logit_bias_forced_logprob_is_what_the_prompt_gives(on, client):
    """The forced token's value at position k is the model's for that context:
    the same prompt ending in k forced tokens, unbiased, reports the same
    alternatives (prefill against decode: LOGPROB_TOL)."""
    status, t = on.d.json("POST", "/tokenize", {"model": NAME, "prompt": B_PROMPT})
    assert status == 200, t
    prompt = t["tokens"]
    banana = token_id(on.d, " banana")
    forced = ask(on, client, prompt=prompt, logit_bias={str(banana): 100},
                 **dict(B_GREEDY, max_tokens=4))[0]
    assert forced["tokens"] == [" banana"] * 4
    for k in (1, 3):
        alone = ask(on, client, prompt=prompt + [banana] * k, **dict(B_GREEDY, max_tokens=1))[0]
        assert alone["tops"][0].keys() == forced["tops"][k].keys(), (k, alone, forced)
        for t, v in alone["tops"][0].items():
            assert abs(forced["tops"][k][t] - v) <= LOGPROB_TOL, (k, t)
        again = ask(on, client, prompt=prompt + [banana] * k, logit_bias={str(banana): 100},
                    **dict(B_GREEDY, max_tokens=1))[0]
        assert again["tokens"] == [" banana"]
        assert abs(again["lps"][0] - forced["lps"][k]) <= LOGPROB_TOL, (k, again, forced)


def test_logit_bias_adds_exactly_the_bias(on, client):
    """Greedy's first pick flips exactly where a bias passes the gap between
    the two best logits (the gap between their logprobs): the bias is added to
    the raw logits, in logit units (disaggregated: by prefilld)."""
    one = dict(B_GREEDY, max_tokens=1)
    plain = ask(on, client, prompt=B_PROMPT, **one)[0]
    (best, lp1), (second, lp2) = sorted(plain["tops"][0].items(), key=lambda kv: -kv[1])[:2]
    gap = lp1 - lp2
    assert gap > 0.2, plain  # a clear winner: 0.05 either side is well apart
    b, s = token_id(on.d, best), token_id(on.d, second)
    for bias, want in [({s: gap + 0.05}, second), ({s: gap - 0.05}, best),
                       ({b: -(gap + 0.05)}, second), ({b: -(gap - 0.05)}, best),
                       ({b: -1.0, s: gap - 0.95}, second), ({b: 1.0, s: gap + 0.95}, best)]:
        got = ask(on, client, prompt=B_PROMPT, logit_bias={str(k): v for k, v in bias.items()},
                  **one)[0]
        assert got["tokens"] == [want], (bias, got)
        assert got["lps"][0] == plain["tops"][0][want], (bias, got)  # the raw value
        assert got["tops"][0] == plain["tops"][0]


def test_logit_bias_chat(on, client):
    banana = token_id(on.d, " banana")
    plain = ask(on, client, **B_CHAT)[0]
    assert "Paris" in plain["text"], plain
    forced = ask(on, client, logit_bias={str(banana): 100}, **B_CHAT)[0]
    assert forced["tokens"] == [" banana"] * 6 and forced["text"] == " banana" * 6, forced
    assert forced["finish"] == "length"
    assert forced["lps"][0] < -1 and forced["tops"][0] == plain["tops"][0], (forced, plain)
    # ban what the plain answer said: none of it comes back
    banned = {token_id(on.d, t) for t in plain["tokens"]}
    got = ask(on, client, logit_bias={str(i): -100 for i in banned}, **B_CHAT)[0]
    assert got["tokens"] and not set(got["tokens"]) & set(plain["tokens"]), (got, plain)
    assert got["tops"][0] == plain["tops"][0]


def test_logit_bias_streamed_equals_whole(on, client):
    banana = token_id(on.d, " banana")
    bias = {str(banana): 100}
    for kw, chat in [(dict(prompt=B_PROMPT, logit_bias=bias, **B_GREEDY), False),
                     (dict(logit_bias=bias, **B_CHAT), True)]:
        whole = ask(on, client, **kw)
        create = on.client.chat.completions.create if chat else on.client.completions.create
        stream = create(model=NAME, stream=True, stream_options={"include_usage": True},
                        **salted(kw))
        chunks = list(stream)
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(
            whole[0]["tokens"])
        per = streamed(chunks[:-1], chat)
        assert sorted(per) == [0] and per[0]["finishes"] == ["length"], per
        if chat:
            assert per[0]["roles"] == ["assistant"]
        assert per[0]["tokens"] == whole[0]["tokens"] == [" banana"] * len(whole[0]["tokens"])
        assert per[0]["text"] == whole[0]["text"]
        assert per[0]["lps"] == whole[0]["lps"] and per[0]["tops"] == whole[0]["tops"]


def test_logit_bias_async_batched_with_unbiased(on, client):
    """Biased and unbiased requests at once (batched together): each keeps its
    own bias, and each answer is the one it gets alone."""
    banana = token_id(on.d, " banana")
    plain = ask(on, client, prompt=B_PROMPT, **B_GREEDY)[0]
    banned = {token_id(on.d, t) for t in plain["tokens"]}
    cases = [dict(prompt=B_PROMPT, **B_GREEDY),
             dict(prompt=B_PROMPT, logit_bias={str(banana): 100}, **B_GREEDY),
             dict(prompt=B_PROMPT, logit_bias={str(i): -100 for i in banned}, **B_GREEDY),
             dict(prompt=TEXTS[1], logit_bias={str(banana): 100}, **B_GREEDY),
             dict(logit_bias={str(banana): 100}, **B_CHAT),
             dict(**B_CHAT)]
    alone = [ask(on, client, **kw)[0] for kw in cases]

    async def all_at_once():
        async with on.aclient() as c:
            async def one(kw):
                kw = salted(kw)
                if "messages" in kw:
                    r = await c.chat.completions.create(model=NAME, **kw)
                    return chat_result(r.choices[0])
                r = await c.completions.create(model=NAME, **kw)
                return result(r.choices[0])

            async def one_streamed(kw):
                s = await c.completions.create(model=NAME, stream=True, **salted(kw))
                return streamed([chunk async for chunk in s], False)[0]
            return await asyncio.gather(*(one(kw) for kw in cases),
                                        one_streamed(cases[1]), one_streamed(cases[2]))
    got = asyncio.run(all_at_once())
    streams = got[len(cases):]
    got = got[:len(cases)]
    assert got[1]["tokens"] == got[3]["tokens"] == [" banana"] * 8
    assert got[4]["tokens"] == [" banana"] * 6
    assert streams[0]["tokens"] == [" banana"] * 8
    assert not set(got[2]["tokens"]) & set(plain["tokens"])
    assert not set(streams[1]["tokens"]) & set(plain["tokens"])
    # batched against alone: test_decoded_batching.py's "same output" rule,
    # the banned ones' near-ties read among what they could pick
    bans = set(plain["tokens"])
    for i, (g, a) in enumerate(zip(got, alone)):
        if i == 2:
            a = dict(a, tops=without(a["tops"], bans))
        compare(i, g, a, LOGPROB_TOL)
    compare(1, dict(streams[0], finish="length"), alone[1], LOGPROB_TOL)
    compare(2, dict(streams[1], finish="length"),
            dict(alone[2], tops=without(alone[2]["tops"], bans)), LOGPROB_TOL)


def test_logit_bias_with_n_and_several_prompts_sampled(on, client):
    """Every choice of every prompt carries the bias (the n > 1 forks and the
    other prompts' choices too), sampled at temperature 0.8: +100 / 0.8
    still outweighs every other logit."""
    banana = token_id(on.d, " banana")
    got = ask(on, client, prompt=TEXTS[:2], n=2, max_tokens=4, temperature=0.8, seed=3,
              logprobs=2, logit_bias={str(banana): 100}, extra_body={"ignore_eos": True})
    assert [ch["index"] for ch in got] == [0, 1, 2, 3]
    for ch in got:
        assert ch["tokens"] == [" banana"] * 4 and ch["lps"][0] < -1, ch
    # the same with no bias: none of it is bananas
    free = ask(on, client, prompt=TEXTS[:2], n=2, max_tokens=4, temperature=0.8, seed=3,
               logprobs=2, extra_body={"ignore_eos": True})
    assert all(" banana" not in ch["tokens"] for ch in free), free


def test_logit_bias_300_entries_is_the_cap(on, client):
    """300 entries (OpenAI's cap) are taken: zeros change nothing, and -100 on
    300 ids that include the plain answer's bans it; 301 are refused."""
    plain = ask(on, client, prompt=B_PROMPT, **B_GREEDY)[0]
    banned = {token_id(on.d, t) for t in plain["tokens"]}
    others = [i for i in range(1000, 49152, 97) if i not in banned]
    zeros = {str(i): 0 for i in sorted(banned) + others[:300 - len(banned)]}
    assert len(zeros) == 300
    assert ask(on, client, prompt=B_PROMPT, logit_bias=zeros, **B_GREEDY)[0] == plain
    bans = {k: -100 for k in zeros}
    got = ask(on, client, prompt=B_PROMPT, logit_bias=bans, **B_GREEDY)[0]
    assert not set(got["tokens"]) & set(plain["tokens"]), got
    with pytest.raises(openai.BadRequestError) as e:
        on.client.completions.create(model=NAME, prompt=B_PROMPT,
                                     logit_bias=dict(zeros, **{str(others[300]): 0}),
                                     **B_GREEDY)
    assert e.value.body["param"] == "logit_bias" and "300" in e.value.body["message"], e.value.body


@pytest.mark.parametrize("chat", [False, True])
def test_logit_bias_refusals_with_the_client(on, chat):
    """The model's vocabulary is 49152 ids: 49152 is refused (49151 is not),
    and so are the other bad forms, on both endpoints; nothing is counted,
    nothing reaches the peer."""
    create = on.client.chat.completions.create if chat else on.client.completions.create
    where = dict(messages=Q) if chat else dict(prompt=B_PROMPT)

    def counts():
        return (on.d.metric("pdserve:prompt_tokens_total"),
                on.d.metric("pdserve:remote_prompt_tokens_total"),
                on.d.metric("pdserve:generation_tokens_total"),
                on.p.metric("pdserve:prefill_requests_total") if on.p else 0)
    before = counts()
    for bias, needle in [({"49152": 1}, "logit_bias token"), ({"7042": 1, "100000": -1},
                                                               "logit_bias token"),
                         ({"01": 1}, "decimal"), ({"-1": 1}, "decimal"), ({"abc": 1}, "decimal"),
                         ({"5": 100.5}, "[-100, 100]"), ({"5": -101}, "[-100, 100]"),
                         ({"5": "1"}, "[-100, 100]"),
                         ({str(i): 1 for i in range(301)}, "300")]:
        with pytest.raises(openai.BadRequestError) as e:
            create(model=NAME, max_tokens=2, temperature=0, logit_bias=bias, **where)
        assert e.value.body["param"] == "logit_bias", (bias, e.value.body)
        assert needle in e.value.body["message"], (bias, e.value.body)
    assert counts() == before
    r = create(model=NAME, max_tokens=2, temperature=0, logit_bias={"49151": 100},
               extra_body={"ignore_eos": True}, **where)
    assert r.usage.completion_tokens == 2


# ---- echo ----
#
# OpenAI's echo on /v1/completions: a choice's text is its prompt (as written;
# token ids decoded) followed by its completion. With logprobs the logprobs
# object starts with the prompt's tokens: the first has null for its
# log-probability and its alternatives, each later one its log-probability
# given the tokens before it and its top alternatives; text_offset counts from
# the prompt's start. max_tokens 0 is allowed with echo alone: the prompt
# scored, nothing generated (lm-eval-harness's loglikelihood call).
#
# The numbers are the prefill's: every prompt position is computed (a prompt
# to score maps nothing from the prefix cache). Disaggregated, prefilld scores
# the prompt and sends PROMPT_LP frames (at most 1024 positions each) before
# DONE. The cases run on decoded alone and on a decoded whose prompts a
# prefilld prefills (`on`, above: there the fixture checks that nothing was
# prefilled locally). A request of one choice must give disaggregated what it
# gives locally exactly (the same engine and arithmetic: observed bit-equal).
# A prefill row against a decode step of the same context, or the same
# position scored in a longer prompt, differs by a few 1e-6 (observed at most
# ~2e-5): ECHO_TOL. Rows batched with others (several prompts, n > 1,
# concurrent requests; disaggregated, they join the batch at other steps)
# move by ~1e-5, up to 2e-4 on a prompt of random token ids: there the
# prompt's scores are held to LOGPROB_TOL (the batching rule's) and the
# completions to the near-tie rule (compare).

ECHO_TOL = 1e-4
E_TEXTS = ["The capital of France is", "Once upon a time", "1, 2, 3, 4,",
           "def fibonacci(n):\n", LONG]


def echoed(choice):
    """A choice of an echo request as plain values (tops' first entry None)."""
    lp = choice.logprobs
    out = {"index": choice.index, "text": choice.text, "finish": choice.finish_reason,
           "tokens": None, "lps": None, "tops": None, "offs": None}
    if lp is not None:
        out.update(tokens=list(lp.tokens), lps=list(lp.token_logprobs),
                   tops=[None if t is None else dict(t) for t in lp.top_logprobs],
                   offs=list(lp.text_offset))
    return out


def tops_close(got, ref, tol, where=""):
    """Two top-alternative dicts: the same tokens with values within tol,
    except where the last alternatives are a near tie (a token only one side
    has is within tol of the other side's last value)."""
    assert len(got) == len(ref), (where, got, ref)
    for t in got.keys() & ref.keys():
        assert abs(got[t] - ref[t]) <= tol, (where, t, got, ref)
    for a, b in ((got, ref), (ref, got)):
        for t in a.keys() - b.keys():
            assert abs(a[t] - min(b.values())) <= tol, ("not a near tie", where, t, got, ref)


def n_tokens(d, prompt):
    if isinstance(prompt, list):
        return len(prompt)
    status, t = d.json("POST", "/tokenize", {"model": NAME, "prompt": prompt})
    assert status == 200, t
    return t["count"]


def prompt_text(d, prompt):
    """What echo writes for a prompt: a string as is, token ids decoded."""
    if isinstance(prompt, str):
        return prompt
    status, back = d.json("POST", "/detokenize", {"model": NAME, "tokens": prompt})
    assert status == 200, back
    return back["prompt"]


def split_echo(ch, n_prompt, text):
    """(prompt part, completion part) of an echoed choice with logprobs."""
    assert ch["text"].startswith(text), (ch["text"], text)
    k = n_prompt
    head = {"tokens": ch["tokens"][:k], "lps": ch["lps"][:k], "tops": ch["tops"][:k],
            "offs": ch["offs"][:k]}
    tail = {"text": ch["text"][len(text):], "finish": ch["finish"], "tokens": ch["tokens"][k:],
            "lps": ch["lps"][k:], "tops": ch["tops"][k:], "offs": ch["offs"][k:]}
    return head, tail


def check_prompt_part(i, got, ref, tol):
    assert got["tokens"] == ref["tokens"], (i, got["tokens"], ref["tokens"])
    assert got["lps"][0] is None and got["tops"][0] is None, (i, got)
    assert got["offs"] == ref["offs"], i
    for k in range(1, len(ref["tokens"])):
        assert abs(got["lps"][k] - ref["lps"][k]) <= tol, (i, k, got["lps"][k], ref["lps"][k])
        tops_close(got["tops"][k], ref["tops"][k], tol, (i, k))


def check_echo_choice(i, got, ref, n_prompt, text, tol=LOGPROB_TOL):
    """got against ref, two echoed choices of one prompt (with logprobs):
    the prompt part within tol, the completion by the near-tie rule."""
    gh, gt = split_echo(got, n_prompt, text)
    rh, rt = split_echo(ref, n_prompt, text)
    check_prompt_part(i, gh, rh, tol)
    compare(i, gt, rt, tol)


def prompt_list(prompt):
    return prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) \
        else [prompt]


_LOCAL_ECHO = {}


def _echo(c, kw):
    r = c.completions.create(model=NAME, **salted(kw))
    return sorted((echoed(ch) for ch in r.choices), key=lambda ch: ch["index"]), r.usage


def eask(on, client, **kw):
    """(choices by index, usage) of one completions request on `on`.
    Disaggregated: one PREFILL per prompt, and the answer is decoded alone's
    (client): exactly for one choice; with several (batched), the texts'
    prompt parts and the prompt tokens exactly, their log-probabilities within
    LOGPROB_TOL and the completions by the near-tie rule."""
    if on.p is None:
        return _echo(on.client, kw)
    before = on.p.metric("pdserve:prefill_requests_total")
    got, usage = _echo(on.client, kw)
    prompts = prompt_list(kw["prompt"])
    assert on.p.metric("pdserve:prefill_requests_total") - before == len(prompts)
    key = repr(sorted(kw.items()))
    if key not in _LOCAL_ECHO:
        _LOCAL_ECHO[key] = _echo(client, kw)
    local, local_usage = _LOCAL_ECHO[key]
    assert usage.model_dump() == local_usage.model_dump()
    if len(local) == 1:
        assert got == local
    else:
        assert [ch["index"] for ch in got] == [ch["index"] for ch in local]
        n = kw.get("n", 1)
        for g, ref in zip(got, local):
            p = prompts[g["index"] // n]
            text = prompt_text(on.d, p)
            if g["tokens"] is None:
                assert g["text"].startswith(text) and ref["text"].startswith(text)
                continue
            check_echo_choice(g["index"], g, ref, n_tokens(on.d, p), text)
    return got, usage


def ids_of(d, text):
    status, t = d.json("POST", "/tokenize", {"model": NAME, "prompt": text})
    assert status == 200, t
    return t["tokens"]


def test_echo_text_is_the_prompt_then_the_completion(on, client):
    """Without logprobs: the prompt as written (token ids: their decoding,
    /detokenize's), then exactly what the same request without echo
    completes; the usage is the same."""
    kw = dict(max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
    # ids of long pieces: a decoding longer than decoded's first guess (4
    # bytes an id) takes its second try
    long_pieces = [45855, 46778, 15069, 45855]
    for prompt in (E_TEXTS[0], E_TEXTS[3], ids_of(on.d, E_TEXTS[1]), IDS[2], long_pieces):
        plain = on.client.completions.create(model=NAME, prompt=prompt, **salted(kw))
        got, usage = eask(on, client, prompt=prompt, echo=True, **kw)
        text = prompt_text(on.d, prompt)
        assert got[0]["text"] == text + plain.choices[0].text, (prompt, got[0]["text"])
        assert got[0]["tokens"] is None and got[0]["finish"] == "length"
        assert usage.model_dump() == plain.usage.model_dump()
    # echo false (or null) is no echo
    for echo in (False, None):
        plain = on.client.completions.create(model=NAME, prompt=E_TEXTS[0], **salted(kw))
        got = on.client.completions.create(model=NAME, prompt=E_TEXTS[0], echo=echo,
                                           **salted(kw))
        assert got.choices[0].text == plain.choices[0].text
        assert not got.choices[0].text.startswith(E_TEXTS[0])


def test_text_offset_counts_characters(on, client):
    """text_offset indexes the text as a Python string (OpenAI's, vLLM's):
    characters, not UTF-8 bytes -- in the echoed prompt and in the
    completion after it."""
    prompt = "Le café coûte 3 €. 日本語のテキストです。Ünïcödé"
    got, _ = eask(on, client, prompt=prompt, echo=True, max_tokens=6, temperature=0, logprobs=0,
                  extra_body={"ignore_eos": True})
    ch = got[0]
    text, offs, toks = ch["text"], ch["offs"], ch["tokens"]
    assert text.startswith(prompt) and offs[0] == 0
    assert offs == sorted(offs) and offs[-1] <= len(text)
    whole = 0
    for k, (o, t) in enumerate(zip(offs, toks)):
        if t.startswith("bytes:"):
            continue  # part of a character: it counts where the character starts
        assert text[o:o + len(t)] == t, (k, o, t, text[o:o + len(t)])
        whole += 1
    assert whole >= len(toks) // 2  # most tokens here are whole characters
    assert any(ord(c) > 127 for c in text[:len(prompt)])


def test_echo_logprobs_are_what_a_continuation_reports(on, client):
    """The key property: generate k tokens from prompt A (logprobs=5), then
    score A + those tokens (token ids, echo, max_tokens 0, logprobs=5): the
    last k echoed positions report the generated tokens' log-probabilities
    and alternatives (a prefill row against a decode step: ECHO_TOL; top
    alternatives the same but for near ties at the last). Greedy, and one
    seeded sampled prompt (the log-probabilities are the model's, whatever
    the temperature)."""
    k = 8
    cases = [(a, dict(temperature=0)) for a in E_TEXTS] + \
        [(E_TEXTS[1], dict(temperature=0.8, seed=11))]
    for a_text, sampling in cases:
        a = ids_of(on.d, a_text)
        gen, _ = eask(on, client, prompt=a, max_tokens=k, logprobs=5,
                      extra_body={"ignore_eos": True}, **sampling)
        gen = gen[0]
        assert len(gen["tokens"]) == k and gen["lps"][0] is not None, gen
        gen_ids = [token_id(on.d, t) for t in gen["tokens"]]
        whole = a + gen_ids
        got, usage = eask(on, client, prompt=whole, echo=True, max_tokens=0, logprobs=5)
        e = got[0]
        assert usage.prompt_tokens == len(whole) and usage.completion_tokens == 0
        assert e["finish"] == "length"
        assert e["text"] == prompt_text(on.d, a) + gen["text"], (e["text"], gen["text"])
        assert len(e["tokens"]) == len(whole)
        assert e["tokens"][-k:] == gen["tokens"], (a_text, e["tokens"][-k:], gen["tokens"])
        for i in range(k):
            where = (a_text, sampling, i)
            assert abs(e["lps"][len(a) + i] - gen["lps"][i]) <= ECHO_TOL, \
                (where, e["lps"][len(a) + i], gen["lps"][i])
            tops_close(e["tops"][len(a) + i], gen["tops"][i], ECHO_TOL, where)
        # the prompt's own positions: what scoring A alone reports
        alone, _ = eask(on, client, prompt=a, echo=True, max_tokens=0, logprobs=5)
        check_prompt_part(a_text, {key: e[key][:len(a)] for key in ("tokens", "lps", "tops",
                                                                       "offs")},
                          alone[0], ECHO_TOL)


def test_echo_max_tokens_0_scores_the_prompt(on, client):
    """max_tokens 0: the prompt's text and scores, finish "length", no
    completion token counted or generated; with logprobs=3 every position
    after the first has 3 alternatives, the prompt token's value is the
    model's (equal to its entry when among them, else below them all)."""
    gen0 = on.d.metric("pdserve:generation_tokens_total")
    for prompt in (E_TEXTS[0], IDS[3], LONG):
        n = n_tokens(on.d, prompt)
        got, usage = eask(on, client, prompt=prompt, echo=True, max_tokens=0, logprobs=3)
        e = got[0]
        assert e["text"] == prompt_text(on.d, prompt) and e["finish"] == "length", e
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (n, 0, n)
        assert len(e["tokens"]) == len(e["lps"]) == len(e["tops"]) == len(e["offs"]) == n
        assert e["lps"][0] is None and e["tops"][0] is None
        for i in range(1, n):
            lp, top = e["lps"][i], e["tops"][i]
            assert lp <= 0 and len(top) == 3, (i, lp, top)
            if e["tokens"][i] in top:
                assert top[e["tokens"][i]] == lp, (i, lp, top)
            else:
                assert lp <= min(top.values()) + 1e-6, (i, lp, top)
            assert sum(math.exp(v) for v in top.values()) <= 1 + 1e-4
        # no logprobs: the text alone
        got, usage = eask(on, client, prompt=prompt, echo=True, max_tokens=0)
        assert got[0]["text"] == prompt_text(on.d, prompt) and got[0]["tokens"] is None
        assert got[0]["finish"] == "length" and usage.completion_tokens == 0
    # logprobs=0: each token's value, no alternatives
    got, _ = eask(on, client, prompt=E_TEXTS[0], echo=True, max_tokens=0, logprobs=0)
    assert got[0]["tops"] == [None] + [{}] * 4 and all(v <= 0 for v in got[0]["lps"][1:])
    # the single-token prompt: nothing to score
    got, usage = eask(on, client, prompt=[7042], echo=True, max_tokens=0, logprobs=2)
    assert got[0]["lps"] == [None] and got[0]["tops"] == [None] and got[0]["offs"] == [0]
    assert (usage.prompt_tokens, usage.completion_tokens) == (1, 0)
    assert on.d.metric("pdserve:generation_tokens_total") == gen0, "a scoring request generated"


def test_echo_scores_are_the_models_whatever_the_sampling(on, client):
    """The prompt's log-probabilities are the raw model's: temperature,
    top-p/k, min-p, penalties and logit_bias change none of them."""
    kw = dict(prompt=E_TEXTS[4][:120], echo=True, max_tokens=0, logprobs=4)
    base, _ = eask(on, client, **kw)
    banana = token_id(on.d, " banana")
    for extra in (dict(temperature=0), dict(temperature=1.7, seed=3), dict(top_p=0.3),
                  dict(presence_penalty=2.0, frequency_penalty=-2.0),
                  dict(extra_body={"top_k": 2, "min_p": 0.5, "repetition_penalty": 1.5}),
                  dict(logit_bias={str(banana): 100, str(token_id(on.d, " the")): -100})):
        got, _ = eask(on, client, **dict(kw, **extra))
        assert got == base, extra


def test_echo_n_choices_each_echo(on, client):
    """n=2: each choice starts with the prompt and its scores (the first
    choice's, the same numbers in both), and its completion is the one the
    request without echo gives that choice (seed + k)."""
    prompt = E_TEXTS[1]
    n_prompt = n_tokens(on.d, prompt)
    kw = dict(prompt=prompt, n=2, seed=5, temperature=0.9, max_tokens=6, logprobs=2,
              extra_body={"ignore_eos": True})
    got, usage = eask(on, client, echo=True, **kw)
    plain = sorted((dict(result(c), index=c.index)
                    for c in on.client.completions.create(model=NAME, **salted(kw)).choices),
                   key=lambda c: c["index"])
    assert [ch["index"] for ch in got] == [0, 1]
    heads = []
    for ch, ref in zip(got, plain):
        head, tail = split_echo(ch, n_prompt, prompt)
        heads.append(head)
        compare(ch["index"], tail, ref, LOGPROB_TOL)
        assert tail["offs"][0] == len(prompt)
    assert heads[0] == heads[1]
    assert usage.prompt_tokens == n_prompt and usage.completion_tokens == 12
    if on.p is None:  # disaggregated: test_echo_n_scoring_disaggregated
        check_n_scoring(on, client, prompt)


def check_n_scoring(on, client, prompt):
    """n=2, max_tokens 0: two identical echoes, nothing generated."""
    got, usage = eask(on, client, prompt=prompt, n=2, echo=True, max_tokens=0, logprobs=2)
    assert got[0]["text"] == got[1]["text"] == prompt_text(on.d, prompt)
    assert len(got[0]["tokens"]) == n_tokens(on.d, prompt)
    assert {k: v for k, v in got[0].items() if k != "index"} == \
        {k: v for k, v in got[1].items() if k != "index"}
    assert (usage.prompt_tokens, usage.completion_tokens) == (n_tokens(on.d, prompt), 0)


def test_echo_n_scoring_disaggregated(tmp_path, client):
    """n=2 with max_tokens 0 through a prefilld: both choices echo the
    prompt's scores (decoded alone's), computed once, by the peer: the
    followers report their leader's scores and compute nothing (a pair of
    its own, so that a regression does not fail the shared pair's later
    cases)."""
    if not os.environ.get("PREFILLD"):
        pytest.skip("set PREFILLD to the prefilld binary")
    with disagg_pair(tmp_path) as (p, a):
        on = Served(a, p)
        for prompt in (E_TEXTS[1], LONG):
            check_n_scoring(on, client, prompt)
        assert a.metric("pdserve:prompt_tokens_total") == 0
        assert a.metric("pdserve:prefill_failovers_total") == 0


def test_echo_several_prompts_each_echo_their_own(on, client):
    """Several prompts (strings; token-id lists): choice i echoes prompt i
    and equals the request of prompt i alone (batched: LOGPROB_TOL and the
    near-tie rule); the usage sums them."""
    for prompts in (E_TEXTS[:4], IDS):
        for max_tokens in (0, 4):
            kw = dict(echo=True, max_tokens=max_tokens, temperature=0, logprobs=2,
                      extra_body={"ignore_eos": True})
            got, usage = eask(on, client, prompt=prompts, **kw)
            assert [ch["index"] for ch in got] == list(range(len(prompts)))
            total = 0
            for i, p in enumerate(prompts):
                alone, u = eask(on, client, prompt=p, **kw)
                total += u.prompt_tokens
                check_echo_choice(i, got[i], alone[0], n_tokens(on.d, p), prompt_text(on.d, p))
            assert usage.prompt_tokens == total
            assert usage.completion_tokens == max_tokens * len(prompts)


def echo_stream(c, kw):
    """Per index, the choice's chunks as echoed() values, and the usage chunk's usage."""
    chunks = list(c.completions.create(model=NAME, stream=True,
                                       stream_options={"include_usage": True}, **salted(kw)))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    per = {}
    for chunk in chunks[:-1]:
        assert chunk.usage is None and len(chunk.choices) == 1, chunk
        per.setdefault(chunk.choices[0].index, []).append(echoed(chunk.choices[0]))
    return per, chunks[-1].usage


def join_chunks(parts):
    out = {"text": "".join(p["text"] for p in parts), "tokens": [], "lps": [], "tops": [],
           "offs": []}
    for p in parts:
        for key in ("tokens", "lps", "tops", "offs"):
            out[key] += p[key] or []
    finishes = [p["finish"] for p in parts if p["finish"]]
    assert len(finishes) == 1 and parts[-1]["finish"], parts
    out["finish"] = finishes[0]
    return out


def test_echo_streamed_first_chunk_carries_the_prompt(on, client):
    """Streamed: each choice's first chunk is its prompt exactly (text, and
    with logprobs the prompt's tokens, the first null); the chunks joined
    are the whole (non-streamed) answer: batched, the prompt's scores within
    LOGPROB_TOL and the completions by the near-tie rule; one prompt alone,
    exactly."""
    prompts = [E_TEXTS[0], E_TEXTS[2]]
    kw = dict(prompt=prompts, n=2, seed=9, temperature=0.7, max_tokens=5, logprobs=2, echo=True,
              extra_body={"ignore_eos": True})
    whole, usage = eask(on, client, **kw)
    per, s_usage = echo_stream(on.client, kw)
    assert sorted(per) == [0, 1, 2, 3]
    assert s_usage.model_dump() == usage.model_dump()
    for i, parts in per.items():
        p = prompts[i // 2]
        n_prompt = n_tokens(on.d, p)
        first = parts[0]
        assert first["text"] == p and first["finish"] is None, (i, first)
        assert len(first["tokens"]) == n_prompt and first["lps"][0] is None, (i, first)
        assert first["tops"][0] is None and first["offs"][0] == 0
        joined = join_chunks(parts)
        check_echo_choice(i, joined, whole[i], n_prompt, p)
    # max_tokens 0: the prompt's chunk, then its finish alone
    per, s_usage = echo_stream(on.client, dict(prompt=E_TEXTS[3], echo=True, max_tokens=0,
                                               logprobs=1))
    n_prompt = n_tokens(on.d, E_TEXTS[3])
    assert list(per) == [0] and len(per[0]) == 2, per
    assert per[0][0]["text"] == E_TEXTS[3] and len(per[0][0]["tokens"]) == n_prompt
    assert per[0][1]["text"] == "" and per[0][1]["finish"] == "length"
    assert not per[0][1]["tokens"]
    assert (s_usage.prompt_tokens, s_usage.completion_tokens) == (n_prompt, 0)
    whole, _ = eask(on, client, prompt=E_TEXTS[3], echo=True, max_tokens=0, logprobs=1)
    assert {k: v for k, v in join_chunks(per[0]).items()} == \
        {k: v for k, v in whole[0].items() if k != "index"}
    # without logprobs: text only, the prompt first
    per, _ = echo_stream(on.client, dict(prompt=E_TEXTS[0], echo=True, max_tokens=3,
                                         temperature=0))
    assert per[0][0]["text"] == E_TEXTS[0] and per[0][0]["tokens"] is None


def test_echo_async_beside_generation(on, client):
    """Echo requests (scoring and generating, streamed and not) at once with
    plain generating ones, through the async client: each echo is what it
    is alone (batched: LOGPROB_TOL, near-tie rule), the plain ones are
    untouched (nothing of the scoring leaks into them)."""
    echo_cases = [dict(prompt=E_TEXTS[0], echo=True, max_tokens=0, logprobs=3),
                  dict(prompt=LONG, echo=True, max_tokens=0, logprobs=3),
                  dict(prompt=E_TEXTS[2], echo=True, max_tokens=6, logprobs=3, temperature=0,
                       extra_body={"ignore_eos": True}),
                  dict(prompt=IDS[3], echo=True, max_tokens=4, logprobs=2, temperature=0.8,
                       seed=4, extra_body={"ignore_eos": True})]
    plain_cases = [dict(prompt=E_TEXTS[1], max_tokens=8, logprobs=2, temperature=0,
                        extra_body={"ignore_eos": True}),
                   dict(prompt=LONG, max_tokens=8, logprobs=2, temperature=0,
                        extra_body={"ignore_eos": True})]
    alone = [eask(on, client, **kw)[0][0] for kw in echo_cases]
    plain_alone = [_ask(on.client, kw)[0] for kw in plain_cases]

    async def all_at_once():
        async with on.aclient() as c:
            async def one(kw):
                r = await c.completions.create(model=NAME, **salted(kw))
                return echoed(r.choices[0])

            async def one_streamed(kw):
                s = await c.completions.create(model=NAME, stream=True, **salted(kw))
                return join_chunks([echoed(chunk.choices[0]) async for chunk in s])
            return await asyncio.gather(*(one(kw) for kw in echo_cases + plain_cases),
                                        *(one_streamed(kw) for kw in echo_cases))
    got = asyncio.run(all_at_once())
    n = len(echo_cases)
    for i, kw in enumerate(echo_cases):
        p = kw["prompt"]
        for g in (got[i], got[n + len(plain_cases) + i]):
            check_echo_choice(i, g, alone[i], n_tokens(on.d, p), prompt_text(on.d, p))
    for i, ref in enumerate(plain_alone):
        g = got[n + i]
        compare(i, {"text": g["text"], "finish": g["finish"], "tokens": g["tokens"],
                    "lps": g["lps"], "tops": g["tops"]}, ref, LOGPROB_TOL)


def test_echo_long_prompt_in_several_frames(on, client):
    """A prompt of 1300 token ids with logprobs=5: disaggregated, its 1299
    scored positions come in two PROMPT_LP frames (1024 + 275); the answer is
    decoded alone's exactly (eask), every position has its 5 alternatives,
    and the completion goes on from it."""
    rng = random.Random(1300)
    prompt = [rng.randrange(100, 49151) for _ in range(1300)]
    got, usage = eask(on, client, prompt=prompt, echo=True, max_tokens=2, logprobs=5,
                      temperature=0, extra_body={"ignore_eos": True}, timeout=300)
    e = got[0]
    assert (usage.prompt_tokens, usage.completion_tokens) == (1300, 2)
    assert len(e["tokens"]) == 1302 and e["lps"][0] is None and e["tops"][0] is None
    assert all(len(t) == 5 for t in e["tops"][1:])
    assert all(v <= 0 for v in e["lps"][1:])
    assert e["text"].startswith(prompt_text(on.d, prompt))
    # the positions around the frames' seam are no different from the others
    for i in (1023, 1024, 1025, 1026):
        assert e["tokens"][i] in e["tops"][i] or e["lps"][i] <= min(e["tops"][i].values()) + 1e-6


def test_echo_text_offsets_follow_the_token_strings(on, client):
    """ASCII prompts (where a byte is a character): text_offset[i] is where
    token i's string sits in the choice's text, from the prompt's start, the
    completion's after the prompt's text; each prompt of several counts from
    its own start; the streamed offsets are the same."""
    kw = dict(echo=True, max_tokens=6, logprobs=1, temperature=0, extra_body={"ignore_eos": True})
    prompts = [E_TEXTS[0], E_TEXTS[3], "a  b\t\tc\n\n d", E_TEXTS[4][:200]]
    got, _ = eask(on, client, prompt=prompts, **kw)
    per, _ = echo_stream(on.client, dict(kw, prompt=prompts))
    for i, (ch, p) in enumerate(zip(got, prompts)):
        n_prompt = n_tokens(on.d, p)
        assert ch["offs"][0] == 0 and ch["offs"][n_prompt] == len(p), (i, ch["offs"])
        assert "".join(ch["tokens"][:n_prompt]) == p
        for k, (tok, off) in enumerate(zip(ch["tokens"], ch["offs"])):
            assert ch["text"][off:off + len(tok)] == tok, (i, k, tok, off, ch["text"])
            if k + 1 < len(ch["offs"]):
                assert ch["offs"][k + 1] == off + len(tok), (i, k, ch["offs"])
        assert join_chunks(per[i])["offs"] == ch["offs"], i
    # token ids: the same, over their decoding
    ids = ids_of(on.d, E_TEXTS[3])
    got, _ = eask(on, client, prompt=ids, **kw)
    ch = got[0]
    assert ch["offs"][:len(ids) + 1] == [len("".join(ch["tokens"][:k]))
                                         for k in range(len(ids) + 1)]


def test_echo_with_logprobs_never_uses_the_prefix_cache(on, client):
    """A prompt to score is computed whole even where its blocks are cached
    (the same salt): no prefix-cache hit, on decoded nor on prefilld, and the
    same numbers as the prompt under another salt; a plain request of it
    after hits (the blocks were there)."""
    prompt = " ".join("Line %d of a text that fills several blocks." % i for i in range(12))
    salt = {"cache_salt": "echo-cache-%d" % next(_salts)}
    hits = [on.d] + ([on.p] if on.p else [])

    def hit_counts():
        return [x.metric("pdserve:prefix_cache_hits_total") for x in hits]
    one = dict(model=NAME, prompt=prompt, max_tokens=1, temperature=0, extra_body=salt)
    on.client.completions.create(**one)
    before = hit_counts()
    scored = on.client.completions.create(model=NAME, prompt=prompt, echo=True, max_tokens=0,
                                          logprobs=3, extra_body=salt)
    assert hit_counts() == before, "a prompt to score mapped cached blocks"
    fresh, _ = eask(on, client, prompt=prompt, echo=True, max_tokens=0, logprobs=3)
    assert echoed(scored.choices[0]) == fresh[0]
    on.client.completions.create(**one)
    assert sum(hit_counts()) > sum(before), "nothing was cached: the case tests nothing"


@pytest.mark.parametrize("stream", [False, True])
def test_echo_refusals_with_the_client(on, stream):
    """Chat refuses echo (400 naming it); max_tokens 0 needs echo; a
    negative max_tokens is refused with it; nothing is counted or sent to
    the peer."""
    def counts():
        return (on.d.metric("pdserve:prompt_tokens_total"),
                on.d.metric("pdserve:remote_prompt_tokens_total"),
                on.d.metric("pdserve:generation_tokens_total"),
                on.p.metric("pdserve:prefill_requests_total") if on.p else 0)
    before = counts()
    with pytest.raises(openai.BadRequestError) as e:
        on.client.chat.completions.create(model=NAME, messages=Q, max_tokens=2, stream=stream,
                                          extra_body={"echo": True})
    assert e.value.body["param"] == "echo", e.value.body
    for kw, param in [(dict(max_tokens=0), "max_tokens"),
                      (dict(max_tokens=0, echo=False), "max_tokens"),
                      (dict(max_tokens=-1, echo=True), "max_tokens"),
                      (dict(max_tokens=1, echo="yes"), "echo"),
                      (dict(max_tokens=0, echo=True, logprobs=21), "logprobs")]:
        with pytest.raises(openai.BadRequestError) as e:
            on.client.completions.create(model=NAME, prompt=E_TEXTS[0], stream=stream, **kw)
        assert e.value.body["param"] == param, (kw, e.value.body)
    with pytest.raises(openai.BadRequestError) as e:
        on.client.completions.create(model=NAME, prompt=E_TEXTS[0], max_tokens=0, stream=stream)
    assert "echo" in e.value.body["message"], e.value.body
    assert counts() == before
