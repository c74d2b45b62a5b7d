"""The official openai client against decoded serving the default model
(SmolLM2-135M-Instruct): completions, chat, streaming, logprobs, stop
strings, usage, seeds; curl for the raw SSE bytes."""
import math
import re
import subprocess

import openai
import pytest

from harness import Decoded, default_model, sse_events

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


def test_n_2_refused(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=NAME, messages=Q, max_tokens=3, n=2)
    assert e.value.body["param"] == "n"


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
