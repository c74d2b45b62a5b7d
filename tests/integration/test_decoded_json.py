"""response_format {"type": "json_object"} with the official openai client
against decoded serving the default model (SmolLM2-135M-Instruct), alone
and prefilling every prompt on a prefilld peer (which then draws the first
token, under the mask decoded sends in the PREFILL frame).

What every constrained choice must be, checked here by scan() (a JSON
reader of this file's own, not decoded's matcher): optional whitespace, then
one JSON object -- at most 16 whitespace characters in a row outside
strings, nesting depth at most 32, numbers of at most 64 bytes. finish
"stop": the object closed at the last character (nothing after it) and
json.loads gives a dict; finish "length": a proper prefix of such an object.
The log-probabilities reported are the model's own, not the masked ones.
Other response_format types, or a model without a tokenizer, are refused
with a 400 naming response_format, and a refused request counts nothing."""
import asyncio
import itertools
import json
import math
import re

import openai
import pytest

from harness import TINY, Decoded, assert_error, default_model, sse_events

MODEL_PATH = default_model()
if MODEL_PATH is None:
    pytest.skip("the default model is absent ($PDSERVE_MODEL; ./deploy/fetch-model.sh)",
                allow_module_level=True)

# d and pair: module fixtures (a decoded; a prefilld + decoded pair)
from served import NAME, async_client, d, pair, sync_client  # noqa: E402,F401,F811

JSON_OBJECT = {"type": "json_object"}

# ---- an independent reader: is this text one JSON object, or the start of one? ----

MAX_WS, MAX_DEPTH, MAX_NUMBER = 16, 32, 64
_WS = " \t\n\r"
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


class _End(Exception):
    """The text ended inside the object (a viable prefix)."""


class _Reader:
    def __init__(self, text):
        self.t, self.i = text, 0
        self.most = {"depth": 0, "number": 0, "ws": 0}  # the largest seen

    def saw(self, what, n):
        self.most[what] = max(self.most[what], n)

    def fail(self, why):
        raise AssertionError("%s at %d: %r<HERE>%r" % (why, self.i, self.t[:self.i],
                                                        self.t[self.i:]))

    def peek(self):
        if self.i >= len(self.t):
            raise _End
        return self.t[self.i]

    def take(self, want):
        if self.peek() not in want:
            self.fail("expected one of %r" % want)
        self.i += 1

    def ws(self):
        n = 0
        while self.peek() in _WS:
            self.i += 1
            n += 1
            self.saw("ws", n)
            if n > MAX_WS:
                self.fail("more than %d whitespace characters in a row" % MAX_WS)

    def string(self):
        self.take('"')
        while True:
            c = self.peek()
            self.i += 1
            if c == '"':
                return
            if c == "\\":
                e = self.peek()
                self.i += 1
                if e == "u":
                    for _ in range(4):
                        self.take("0123456789abcdefABCDEF")
                elif e not in '"\\/bfnrt':
                    self.fail("bad escape")
            elif ord(c) < 0x20:
                self.i -= 1
                self.fail("raw control character in a string")

    def number(self):
        start = self.i
        while self.i < len(self.t) and self.t[self.i] in "0123456789+-.eE":
            self.i += 1
        s = self.t[start:self.i]
        self.saw("number", len(s.encode()))
        if len(s.encode()) > MAX_NUMBER:
            self.fail("a number of more than %d bytes" % MAX_NUMBER)
        if self.i == len(self.t):  # it may go on
            if _NUMBER.fullmatch(s) or _NUMBER.fullmatch(s + "0"):
                raise _End
            self.fail("not the start of a number: %r" % s)
        if not _NUMBER.fullmatch(s):
            self.fail("not a number: %r" % s)

    def value(self, depth):
        c = self.peek()
        if c == "{":
            self.obj(depth + 1)
        elif c == "[":
            self.arr(depth + 1)
        elif c == '"':
            self.string()
        elif c == "-" or c.isdigit():
            self.number()
        else:
            for lit in ("true", "false", "null"):
                if c == lit[0]:
                    for ch in lit:
                        self.take(ch)
                    return
            self.fail("not a value")

    def obj(self, depth):
        self.saw("depth", depth)
        if depth > MAX_DEPTH:
            self.fail("nesting deeper than %d" % MAX_DEPTH)
        self.take("{")
        self.ws()
        if self.peek() == "}":
            self.i += 1
            return
        while True:
            self.string()
            self.ws()
            self.take(":")
            self.ws()
            self.value(depth)
            self.ws()
            if self.peek() == "}":
                self.i += 1
                return
            self.take(",")
            self.ws()

    def arr(self, depth):
        self.saw("depth", depth)
        if depth > MAX_DEPTH:
            self.fail("nesting deeper than %d" % MAX_DEPTH)
        self.take("[")
        self.ws()
        if self.peek() == "]":
            self.i += 1
            return
        while True:
            self.value(depth)
            self.ws()
            if self.peek() == "]":
                self.i += 1
                return
            self.take(",")
            self.ws()


def scan(text, most=None):
    """"complete": text is optional whitespace and one JSON object ending at
    its last character; "prefix": the start of one; AssertionError otherwise.
    most (a dict), when given, gets the deepest nesting, the longest number
    (bytes) and the longest run of whitespace seen."""
    r = _Reader(text)
    try:
        r.ws()
        r.obj(1)
        if r.i != len(text):
            r.fail("text after the object")
        got = "complete"
    except _End:
        got = "prefix"
    if most is not None:
        most.update(r.most)
    return got


def test_scan_itself():
    assert scan('{"a": [1, 2.5e-3, {"b": null}], "c": "\\u00e9x"}') == "complete"
    assert scan(" \n{}") == "complete"
    for p in ("", "  ", "{", '{"a', '{"a":', '{"a": -', '{"a": 1.', '{"a": 1e+', '{"a": tr',
              '{"a": [1, ', '{"a": "\\u00'):
        assert scan(p) == "prefix", p
    for bad in ("[]", "x", "{} ", "{}x", '{"a": 01}', "{'a': 1}", '{"a": tru}', '{"a",',
                '{"a": 1.}', " " * 17 + "{}", '{"a": "\x01"}', "{" * 33 + "}" * 33,
                '{"a": ' + "1" * 65 + "}"):
        with pytest.raises(AssertionError):
            scan(bad)
    most = {}
    assert scan("{" + '"a":{' * 31 + "}" * 31 + "}", most) == "complete"
    assert most == {"depth": 32, "number": 0, "ws": 0}
    assert scan(' {"a": [-12.5e+3, \n' + " " * 14, most) == "prefix"
    assert most == {"depth": 2, "number": 8, "ws": 16}


# ---- a choice, whatever the endpoint ----

def choice_out(c):
    """text, finish, tokens (bytes for chat, text for completions), their
    log-probabilities and top alternatives ({} per position when absent)."""
    if hasattr(c, "message"):
        content = c.logprobs.content if c.logprobs and c.logprobs.content else []
        return {"text": c.message.content, "finish": c.finish_reason,
                "tokens": [bytes(t.bytes) for t in content], "lps": [t.logprob for t in content],
                "tops": [{x.token: x.logprob for x in t.top_logprobs} for t in content]}
    lp = c.logprobs
    return {"text": c.text, "finish": c.finish_reason,
            "tokens": list(lp.tokens) if lp else [], "lps": list(lp.token_logprobs) if lp else [],
            "tops": [dict(t) for t in lp.top_logprobs] if lp and lp.top_logprobs else []}


def check_choice(o, where=""):
    """One constrained choice: a whole object (stop) or the start of one
    (length); its tokens spell its text, nothing after the closing brace."""
    text = o["text"]
    assert o["finish"] in ("stop", "length"), (where, o)
    got = scan(text)
    if o["finish"] == "stop":
        assert got == "complete", (where, text)
        assert isinstance(json.loads(text), dict), (where, text)
        assert text == text.rstrip() and text.endswith("}"), (where, text)
    else:
        assert got == "prefix", (where, "finish length but the object is complete", text)
    assert text.lstrip(_WS)[:1] in ("", "{"), (where, text)
    if o["tokens"]:
        if isinstance(o["tokens"][0], bytes):
            assert b"".join(o["tokens"]).decode() == text, (where, o["tokens"], text)
        elif not any(t.startswith("bytes:") for t in o["tokens"]):
            assert "".join(o["tokens"]) == text, (where, o["tokens"], text)
        if o["finish"] == "stop":  # the closing brace's token is the last one
            last = o["tokens"][-1]
            last = last.decode() if isinstance(last, bytes) else last
            assert last.rstrip().endswith("}"), (where, o["tokens"][-3:])


def check_response(r, n_choices, logprobs=True):
    """Every choice checked; usage counts the tokens the logprobs list.
    Returns the choices in index order."""
    assert sorted(c.index for c in r.choices) == list(range(n_choices)), r.choices
    outs = [choice_out(c) for c in sorted(r.choices, key=lambda c: c.index)]
    for i, o in enumerate(outs):
        check_choice(o, "choice %d" % i)
    if logprobs:
        assert r.usage.completion_tokens == sum(len(o["lps"]) for o in outs), (r.usage, outs)
        for o in outs:
            assert len(o["lps"]) == len(o["tokens"]) >= 1
            assert all(lp <= 0 for lp in o["lps"]), o["lps"]
    return outs


# ---- daemons and clients ----

class Served:
    """Where a case runs: d serves the API, p is its prefilld (or None)."""

    def __init__(self, d, p):
        self.d, self.p = d, p
        self.client = sync_client(d)


@pytest.fixture(params=["local", "disaggregated"])
def on(request, d):
    if request.param == "local":
        yield Served(d, None)
        return
    p, a = request.getfixturevalue("pair")
    before = p.metric("pdserve:prefill_requests_total")
    yield Served(a, p)
    assert a.metric("pdserve:prompt_tokens_total") == 0, "a prompt was prefilled locally"
    assert a.metric("pdserve:prefill_failovers_total") == 0
    assert p.metric("pdserve:prefill_requests_total") > before, "nothing went to the peer"


_salts = itertools.count()


def params(kw, json_object=True, salt=False):
    """kw for the client: response_format (completions have no such argument
    in the client: extra_body), a fresh cache_salt when asked (a prompt
    computed whole, its log-probabilities to the bit)."""
    kw = dict(kw)
    extra = dict(kw.pop("extra_body", None) or {})
    if json_object:
        extra["response_format"] = JSON_OBJECT
    if salt:
        extra["cache_salt"] = "json-%d" % next(_salts)
    if extra:
        kw["extra_body"] = extra
    return kw


def user(text):
    return [{"role": "user", "content": text}]


def ask(client, json_object=True, salt=False, **kw):
    """One request (chat when kw has messages); the response."""
    kw = params(kw, json_object, salt)
    if "messages" in kw:
        return client.chat.completions.create(model=NAME, **kw)
    return client.completions.create(model=NAME, **kw)


# ---- many prompts ----

# completions prompts: several close their object within 32 tokens, greedy
TEXT_PROMPTS = [
    '{"name": "Alice", "age":',
    'Here is a JSON object with the keys a and b: ',
    'The weather today in JSON:',
    'A user record: {"id": 7, "email":',
    'Output an empty JSON object:',
    'config = {"debug": true, "level":',
    'The capital of France is',
    '1, 2, 3, 4,',
    'Once upon a time',
    'import json\nprint(json.dumps({"k": [1, 2]}))\n# prints',
    'Bonjour, le monde. 日本語の文章:',
    'Return {"x": 1} ->',
]
CHAT_PROMPTS = [
    'Reply with a JSON object with a single key "answer" whose value is the capital of France.',
    'Give {"ok": true} as JSON.',
    'What is 2+2? Answer as a JSON object {"result": number}.',
    'Name a color as JSON.',
    'Write JSON: {"a": 1}',
    'Is the sky blue? JSON {"yes": bool}.',
    'Hello',
    'Describe a cat in JSON with keys name and age.',
    'Respond with JSON only: the number 5 under key n.',
    'Donne-moi un objet JSON avec la clé "ville" et la valeur "Paris".',
]
MANY = dict(max_tokens=32, logprobs=True)


@pytest.mark.parametrize("temperature", [0, 0.8])
def test_completions_many_prompts_n2(on, temperature):
    r = ask(on.client, prompt=TEXT_PROMPTS, n=2, max_tokens=32, temperature=temperature,
            seed=3, logprobs=2)
    outs = check_response(r, 2 * len(TEXT_PROMPTS))
    stops = sum(o["finish"] == "stop" for o in outs)
    # a test where nothing closes proves little about closing
    assert stops >= len(outs) // 4, [o["text"] for o in outs]


def test_chat_many_prompts_async(on):
    """Every chat prompt twice at once, greedy n=2 and sampled n=3, with the
    async client: every choice is an object or the start of one."""
    async def all_of_them():
        async with async_client(on.d) as c:
            reqs = []
            for k, m in enumerate(CHAT_PROMPTS):
                reqs.append(c.chat.completions.create(
                    model=NAME, messages=user(m), n=2, temperature=0, max_tokens=32,
                    logprobs=True, response_format=JSON_OBJECT))
                reqs.append(c.chat.completions.create(
                    model=NAME, messages=user(m), n=3, temperature=0.8, seed=100 + k,
                    max_tokens=32, logprobs=True, top_logprobs=1,
                    response_format=JSON_OBJECT))
            return await asyncio.gather(*reqs)
    rs = asyncio.run(all_of_them())
    outs = []
    for k, r in enumerate(rs):
        assert r.object == "chat.completion"
        outs += check_response(r, 2 if k % 2 == 0 else 3)
        assert all(c.message.role == "assistant" for c in r.choices)
    stops = sum(o["finish"] == "stop" for o in outs)
    assert stops >= len(outs) // 4, [o["text"] for o in outs]


def test_small_max_tokens_ends_length_with_a_prefix(on):
    r = ask(on.client, prompt=TEXT_PROMPTS[:6], max_tokens=5, temperature=0.8, seed=9,
            logprobs=1)
    outs = check_response(r, 6)
    for o in outs:
        if o["finish"] == "length":
            assert len(o["lps"]) == 5, o
    assert sum(o["finish"] == "length" for o in outs) >= 4, outs
    assert r.usage.completion_tokens == sum(len(o["lps"]) for o in outs)
    c = ask(on.client, messages=user(CHAT_PROMPTS[7]), max_tokens=5, temperature=0, n=2,
            logprobs=True)
    for o in check_response(c, 2):
        assert o["finish"] == "length" and len(o["tokens"]) == 5, o
        assert o["text"].lstrip(_WS).startswith("{"), o


# ---- closing the object ----

CLOSES = 'Give {"ok": true} as JSON.'  # greedy: a small object, "stop"


def test_the_object_closes_the_choice(on):
    """The choice ends as the brace closes: with max_tokens exactly its
    length too (stop, not length), with one token less a prefix (length),
    and with ignore_eos all the same (nothing may follow the object)."""
    kw = dict(messages=user(CLOSES), temperature=0, logprobs=True, salt=True)
    whole = ask(on.client, max_tokens=64, **kw)
    o = check_response(whole, 1)[0]
    assert o["finish"] == "stop", o
    k = whole.usage.completion_tokens
    assert 2 <= k == len(o["tokens"]) < 64
    exact = check_response(ask(on.client, max_tokens=k, **kw), 1)[0]
    assert exact["finish"] == "stop" and exact["text"] == o["text"], (exact, o)
    short = check_response(ask(on.client, max_tokens=k - 1, **kw), 1)[0]
    assert short["finish"] == "length" and o["text"].startswith(short["text"]), (short, o)
    assert short["tokens"] == o["tokens"][:-1]
    eos = ask(on.client, max_tokens=64, extra_body={"ignore_eos": True}, **kw)
    assert check_response(eos, 1)[0]["text"] == o["text"]
    assert eos.usage.completion_tokens == k


def test_logit_bias_cannot_leave_the_format(on):
    """+100 on a token that cannot start the object, -100 on the brace: the
    mask wins over the bias."""
    status, t = on.d.json("POST", "/tokenize", {"model": NAME, "prompt": "Hello"})
    assert status == 200 and len(t["tokens"]) == 1, t
    hello = t["tokens"][0]
    status, t = on.d.json("POST", "/tokenize", {"model": NAME, "prompt": "{"})
    assert status == 200 and len(t["tokens"]) == 1, t
    brace = t["tokens"][0]
    r = ask(on.client, messages=user("Say hello."), max_tokens=24, temperature=0,
            logprobs=True, logit_bias={str(hello): 100, str(brace): -100})
    o = check_response(r, 1)[0]
    assert o["tokens"][0] not in (b"Hello", b"{"), o


# ---- the caps: depth 32, numbers of 64 bytes, 16 whitespace characters ----
#
# Few-shot prompts that go past each cap: the model copies the pattern until
# the mask stops it there (greedy, so it reaches the cap exactly).

CAPS = [
    ("depth", ('{"a": ' + "[" * 40 + "1" + "]" * 40 + "}\n") * 2),
    ("number", ('{"n": ' + "7" * 80 + "}\n") * 2),
    ("number", ('{"n": 0.' + "12345678" * 10 + "}\n") * 2),
    ("ws", ("{" + " " * 30 + '"a":' + "\n" * 20 + "1}\n") * 2),
]


def test_the_caps_hold(on):
    r = ask(on.client, prompt=[p for _, p in CAPS], max_tokens=76, temperature=0, logprobs=1)
    outs = check_response(r, len(CAPS))
    want = {"depth": MAX_DEPTH, "number": MAX_NUMBER, "ws": MAX_WS}
    for (cap, _), o in zip(CAPS, outs):
        most = {}
        scan(o["text"], most)
        assert most[cap] == want[cap], (cap, most, o["text"])


def test_preempted_constrained_jobs_stay_in_the_format():
    """A KV pool too small for the requests at once: jobs are preempted and
    recomputed, their place in the object kept."""
    with Decoded(MODEL_PATH, "--served-model-name", NAME, "--max-model-len", "512",
                 "--kv-cache-memory", "12MiB") as small:
        async def all_at_once():
            async with async_client(small) as c:
                return await asyncio.gather(*[c.chat.completions.create(
                    model=NAME, messages=user("Describe a cat in JSON, number %d." % i),
                    max_tokens=64, temperature=0.9, seed=i, logprobs=True,
                    response_format=JSON_OBJECT) for i in range(6)])
        for r in asyncio.run(all_at_once()):
            check_response(r, 1)
        assert "preempting" in small.log(), "nothing was preempted: the test tests nothing"


# ---- streaming ----

STREAM_CASES = [
    ("chat-greedy", dict(messages=user(CLOSES), max_tokens=48, temperature=0)),
    ("chat-seeded", dict(messages=user(CHAT_PROMPTS[0]), max_tokens=32, temperature=0.8,
                         seed=21)),
    ("completion-greedy", dict(prompt=TEXT_PROMPTS[0], max_tokens=48, temperature=0)),
    ("completion-seeded", dict(prompt=TEXT_PROMPTS[4], max_tokens=32, temperature=0.8,
                               seed=5)),
]


def streamed(chunks, chat):
    """Per choice index: text, finish reasons, usage (the last chunk's)."""
    per, usage = {}, None
    for chunk in chunks:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            p = per.setdefault(c.index, {"text": "", "finishes": [], "n_lp": 0})
            assert not p["finishes"], "a chunk of choice %d after its finish" % c.index
            if chat:
                p["text"] += c.delta.content or ""
                if c.logprobs and c.logprobs.content:
                    p["n_lp"] += len(c.logprobs.content)
            else:
                p["text"] += c.text
                if c.logprobs and c.logprobs.tokens:
                    p["n_lp"] += len(c.logprobs.tokens)
            if c.finish_reason:
                p["finishes"].append(c.finish_reason)
    return per, usage


@pytest.mark.parametrize("name,kw", STREAM_CASES, ids=[c[0] for c in STREAM_CASES])
def test_streamed_equals_whole(on, name, kw):
    whole = ask(on.client, salt=True, **kw)
    w = check_response(whole, 1, logprobs=False)[0]
    if "greedy" in name:
        assert w["finish"] == "stop", w  # the case exists to see a streamed stop
    lp = {"logprobs": True} if "messages" in kw else {"logprobs": 1}
    chunks = list(ask(on.client, salt=True, stream=True,
                      stream_options={"include_usage": True}, **dict(kw, **lp)))
    per, usage = streamed(chunks, "messages" in kw)
    assert list(per) == [0], per
    assert per[0]["text"] == w["text"], (per[0], w)
    assert per[0]["finishes"] == [w["finish"]]
    # the finish comes in the last chunk with choices; usage after it
    last = [c for c in chunks if c.choices][-1]
    assert last.choices[0].finish_reason == w["finish"]
    assert chunks[-1].choices == [] and usage.completion_tokens == whole.usage.completion_tokens
    assert per[0]["n_lp"] == usage.completion_tokens


def test_streamed_raw_sse_ends_at_the_brace(on):
    """The raw bytes: no delta after the one that closes the object."""
    body = {"model": NAME, "messages": user(CLOSES), "max_tokens": 48, "temperature": 0,
            "stream": True, "response_format": JSON_OBJECT}
    status, headers, data = on.d.request("POST", "/v1/chat/completions", body, timeout=120)
    assert status == 200 and headers["content-type"].startswith("text/event-stream"), data
    events = sse_events(data)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert scan(text) == "complete", text
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1]), finishes


def test_async_stream_equals_sync(on):
    kw = dict(model=NAME, messages=user(CHAT_PROMPTS[2]), max_tokens=32, temperature=0.8,
              seed=77, response_format=JSON_OBJECT)

    def salted():
        return dict(kw, extra_body={"cache_salt": "json-%d" % next(_salts)})

    async def run():
        async with async_client(on.d) as c:
            whole = await c.chat.completions.create(**salted())
            text = ""
            async for chunk in await c.chat.completions.create(stream=True, **salted()):
                for ch in chunk.choices:
                    text += ch.delta.content or ""
            return whole, text
    whole, text = asyncio.run(run())
    sync = on.client.chat.completions.create(**salted())
    assert whole.choices[0].message.content == text == sync.choices[0].message.content
    check_response(whole, 1, logprobs=False)


# ---- disaggregated equals local ----

EXACT_CASES = [
    dict(messages=user("Hello"), max_tokens=24, temperature=0, logprobs=True, top_logprobs=3),
    dict(messages=user(CHAT_PROMPTS[0]), max_tokens=32, temperature=0.8, seed=11,
         logprobs=True, top_logprobs=3),
    dict(messages=user(CHAT_PROMPTS[9]), max_tokens=32, temperature=0.8, seed=12,
         top_p=0.9, logprobs=True, top_logprobs=2),
    dict(prompt=TEXT_PROMPTS[6], max_tokens=24, temperature=0, logprobs=3),
    dict(prompt=TEXT_PROMPTS[1], max_tokens=24, temperature=0.8, seed=13, logprobs=3),
    dict(prompt=TEXT_PROMPTS[10], max_tokens=24, temperature=0.8, seed=14, logprobs=3),
]


def test_disaggregated_equals_local_to_the_bit(d, pair):
    """One choice, its prompt computed whole (a fresh cache_salt) on each
    side: prefilld draws the first token under decoded's mask, decoded the
    rest; tokens, text and log-probabilities equal decoded alone's."""
    p, a = pair
    local, remote = sync_client(d), sync_client(a)
    before = p.metric("pdserve:prefill_requests_total")
    for k, kw in enumerate(EXACT_CASES):
        want = check_response(ask(local, salt=True, **kw), 1)[0]
        got = check_response(ask(remote, salt=True, **kw), 1)[0]
        assert got == want, (k, got, want)
    assert p.metric("pdserve:prefill_requests_total") - before == len(EXACT_CASES)
    assert a.metric("pdserve:prompt_tokens_total") == 0
    assert a.metric("pdserve:prefill_failovers_total") == 0


# ---- log-probabilities stay the model's ----

def first(on, json_object, **kw):
    return choice_out(ask(on.client, json_object=json_object, salt=True, max_tokens=1,
                          temperature=0, **kw).choices[0])


def test_logprobs_are_the_models_own(on):
    # the model's own first token is allowed: the same token, the same numbers
    kw = dict(prompt='JSON: {"ok": true}\nJSON:', logprobs=5)
    free, bound = first(on, False, **kw), first(on, True, **kw)
    assert free["tokens"] == bound["tokens"], (free, bound)
    assert bound["text"].lstrip(_WS)[:1] in ("", "{"), bound
    assert bound["lps"] == free["lps"] and bound["tops"] == free["tops"], (free, bound)
    # chat "Hello": the model's own first token cannot start an object (on a
    # peer: prefilld drew it under the mask); the alternatives reported are
    # still the model's, the chosen token's number its raw one
    kw = dict(messages=user("Hello"), logprobs=True, top_logprobs=5)
    free, bound = first(on, False, **kw), first(on, True, **kw)
    assert free["tokens"] != bound["tokens"], (free, bound)
    assert scan(bound["text"]) == "prefix", bound
    with pytest.raises(AssertionError):
        scan(free["text"])
    assert bound["tops"] == free["tops"], (free, bound)
    assert math.isclose(free["lps"][0], max(free["tops"][0].values()), abs_tol=1e-6), free
    assert bound["lps"][0] < free["lps"][0], (free, bound)
    alt = bound["tokens"][0].decode()
    if alt in bound["tops"][0]:
        assert bound["tops"][0][alt] == bound["lps"][0]
    assert 0 < sum(math.exp(v) for v in bound["tops"][0].values()) <= 1.0001


def test_logprobs_of_a_whole_object_are_raw(on):
    """Greedy constrained: each chosen token's number is at most the best
    alternative's (the best may be masked), equal when the chosen is the best."""
    r = ask(on.client, salt=True, messages=user(CHAT_PROMPTS[3]), max_tokens=32, temperature=0,
            logprobs=True, top_logprobs=5)
    o = check_response(r, 1)[0]
    for tok, lp, tops in zip(o["tokens"], o["lps"], o["tops"]):
        assert len(tops) == 5 and lp <= max(tops.values()) + 1e-6, (tok, lp, tops)
        spelled = tok.decode("utf-8", "replace")
        if spelled in tops:
            assert math.isclose(tops[spelled], lp, abs_tol=1e-6), (tok, lp, tops)


# ---- refusals ----

# json_schema itself is test_decoded_schema.py's; here one it refuses
UNSUPPORTED_SCHEMA = {"type": "object", "properties": {"d": {"type": "string", "format": "date"}}}
BAD_FORMATS = [
    {"type": "json_schema", "json_schema": {"name": "x", "schema": UNSUPPORTED_SCHEMA}},
    {"type": "xml"},
    "json_object",
    {},
    {"json_object": True},
    {"type": 5},
    ["json_object"],
]


def counters(daemon):
    return (daemon.metric("pdserve:prompt_tokens_total"),
            daemon.metric("pdserve:generation_tokens_total"),
            daemon.metric("pdserve:remote_prompt_tokens_total"))


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_other_response_formats_refused(on, path):
    base = {"model": NAME, "max_tokens": 4, "temperature": 0}
    base.update({"messages": user("Hi")} if "chat" in path else {"prompt": "Hi"})
    before = counters(on.d)
    peer = on.p.metric("pdserve:prefill_requests_total") if on.p else None
    for rf in BAD_FORMATS:
        status, body = on.d.json("POST", path, dict(base, response_format=rf))
        err = assert_error(status, body, 400, "response_format")
        assert "response_format" in err["message"], (rf, err)
    if "chat" in path:  # the client's own way to say it
        with pytest.raises(openai.BadRequestError) as e:
            on.client.chat.completions.create(
                model=NAME, messages=user("Hi"), max_tokens=4,
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "x", "schema": UNSUPPORTED_SCHEMA}})
        assert e.value.body["param"] == "response_format", e.value.body
    assert counters(on.d) == before
    if on.p:
        assert on.p.metric("pdserve:prefill_requests_total") == peer
    assert on.d.metric("pdserve:num_requests_running") == 0
    # text and null are plain decoding
    for rf in ({"type": "text"}, None):
        status, body = on.d.json("POST", path, dict(base, response_format=rf))
        assert status == 200, (rf, body)


def test_dummy_model_refuses_json_object():
    """Dummy weights have no tokenizer: no masks, a 400 naming the field,
    nothing counted; the same request without it is served."""
    with Decoded(*TINY, "--max-model-len", "512") as dm:
        good = {"prompt": [1, 2, 3], "max_tokens": 4, "temperature": 0}
        before = counters(dm)
        for body in (dict(good, response_format=JSON_OBJECT),
                     dict(good, response_format=JSON_OBJECT, stream=True),
                     dict(good, response_format=JSON_OBJECT, n=2, prompt=[[1, 2], [3]])):
            status, out = dm.json("POST", "/v1/completions", body)
            err = assert_error(status, out, 400, "response_format")
            assert "tokenizer" in err["message"], err
        with pytest.raises(openai.BadRequestError) as e:
            sync_client(dm).completions.create(model=dm.json("GET", "/v1/models")[1]["data"][0]
                                               ["id"], prompt=[1, 2, 3], max_tokens=4,
                                               extra_body={"response_format": JSON_OBJECT})
        assert e.value.body["param"] == "response_format", e.value.body
        assert counters(dm) == before
        assert dm.metric("pdserve:num_requests_running") == 0
        status, out = dm.json("POST", "/v1/completions", good)
        assert status == 200 and out["usage"]["completion_tokens"] == 4, out
