"""tools, tool_choice and parallel_tool_calls on /v1/chat/completions with
the official openai client, against decoded serving the default model
(SmolLM2-135M-Instruct) under the model templates that have tools (Qwen2.5's,
Qwen3's and Llama-3.1's own, given with --chat-template) and under its own,
which has none (tools refused unless tool_choice is "none").

The judges: jsonschema's Draft 2020-12 validator for every call's
arguments; the output's own tokens (logprobs) for what the arguments must be
(a named call's are the model's bytes; a required array's or a read call's
are json.dumps(parameters, ensure_ascii=False) of what it wrote);
transformers' renderings (tests/golden/chat_tools_golden.jsonl) for the
prompt; the whole response for the stream."""
import itertools
import json
import os
import re
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field

from harness import Decoded, Prefilld, default_model, wait_for, write_key

MODEL_PATH = default_model()
if MODEL_PATH is None:
    pytest.skip("the default model is absent ($PDSERVE_MODEL; ./deploy/fetch-model.sh)",
                allow_module_level=True)

# d: decoded with the model's own template (no tools)
from served import NAME, d, decoded_args, sync_client  # noqa: E402,F401,F811

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(SRC, "tests", "golden")
QWEN25 = "Qwen-Qwen2.5-7B-Instruct.jinja"
QWEN3 = "Qwen-Qwen3-0.6B.jinja"
LLAMA31 = "meta-llama-Llama-3.1-8B-Instruct.jinja"


def template_args(name):
    return ("--chat-template", os.path.join(GOLDEN, "chat", "hf", name))


def with_template(name):
    return Decoded(MODEL_PATH, *decoded_args(), *template_args(name))


@pytest.fixture(scope="module")
def q():
    with with_template(QWEN25) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def q3():
    with with_template(QWEN3) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def ll():
    with with_template(LLAMA31) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def qpair(tmp_path_factory):
    """served.pair's shape, decoded with Qwen2.5's template."""
    if not os.environ.get("PREFILLD"):
        pytest.skip("set PREFILLD to the prefilld binary")
    psk = write_key(tmp_path_factory.mktemp("qpair") / "k.psk")
    with Prefilld("--model", MODEL_PATH, "--kv-cache-memory", "256MiB", psk=psk) as p, \
            Decoded("--model", MODEL_PATH, *decoded_args(), *template_args(QWEN25),
                    "--kv-psk-file", psk, "--prefill", p.addr,
                    "--local-prefill-max-tokens", "0", "--prefill-timeout-ms", "120000") as a:
        wait_for(lambda: "KV session up" in a.log(), 60, "a KV session")
        yield p, a


# ---- tools ----

class Weather(BaseModel):
    """The weather in a city, for some days."""
    model_config = ConfigDict(extra="forbid")
    city: str = Field(max_length=20)
    days: int = Field(ge=1, le=7)
    units: Literal["celsius", "fahrenheit"]


def tool(name, params, desc=None):
    f = {"name": name}
    if desc:
        f["description"] = desc
    f["parameters"] = params
    return {"type": "function", "function": f}


def obj(props, required=None):
    return {"type": "object", "properties": props,
            "required": list(props) if required is None else required,
            "additionalProperties": False}


WEATHER = tool("get_weather", Weather.model_json_schema(), "Get the weather in a city")
SEARCH = tool("search", obj({"q": {"type": "string", "maxLength": 30},
                             "limit": {"type": "integer", "minimum": 1, "maximum": 10}},
                            required=["q"]), "Search the web")
# values json.dumps writes its own way: non-ASCII kept, quotes escaped
PICK = tool("pick_city", obj({"city": {"enum": ["Zürich", 'São "Paulo"']},
                              "ratio": {"const": 1.5}}))
TOOLS = [WEATHER, SEARCH, PICK]
TWO = [WEATHER, PICK]  # a shorter prompt (CPU prefill) where three are not the point
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What's the weather in Zürich?"}]
CALL_ID = re.compile(r"call_[0-9a-f]{24}")
_salts = itertools.count()


def named(name):
    return {"type": "function", "function": {"name": name}}


def create(daemon, messages=ASK, **kw):
    """Greedy, each prompt computed whole (a fresh cache_salt)."""
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 200)
    kw.setdefault("extra_body", {})["cache_salt"] = "tools-%d-%d" % (os.getpid(), next(_salts))
    return sync_client(daemon).chat.completions.create(model=NAME, messages=messages, **kw)


def dumps(v):
    """Python's json.dumps as the templates' tojson and vLLM's parsers use it."""
    return json.dumps(v, ensure_ascii=False)


def raw_text(choice):
    """What the model wrote: its tokens' bytes, joined."""
    return b"".join(bytes(t.bytes) for t in choice.logprobs.content).decode()


def check_calls(choice, params=PARAMS):
    """A choice that called: content null, finish tool_calls, distinct call
    ids, each call one of params' with arguments valid against its schema.
    [(name, arguments)]."""
    m = choice.message
    assert choice.finish_reason == "tool_calls", choice
    assert m.content is None and m.role == "assistant", m
    assert m.tool_calls, m
    ids = [c.id for c in m.tool_calls]
    assert all(CALL_ID.fullmatch(i) for i in ids) and len(set(ids)) == len(ids), ids
    out = []
    for c in m.tool_calls:
        assert c.type == "function" and c.function.name in params, c
        if params[c.function.name] is not None:
            jsonschema.Draft202012Validator(params[c.function.name]).validate(
                json.loads(c.function.arguments))
        out.append((c.function.name, c.function.arguments))
    return out


def streamed(daemon, **kw):
    """The stream's content, calls [(name, arguments)] (by index: id and name
    from the first delta, arguments joined) and finish reasons."""
    content, calls, finishes, first = "", {}, [], None
    for chunk in create(daemon, stream=True, **kw):
        for ch in chunk.choices:
            assert not finishes, "a chunk after the finish"
            if first is None:
                first = ch.delta
            content += ch.delta.content or ""
            for t in ch.delta.tool_calls or []:
                if t.index not in calls:
                    assert t.index == len(calls), (t, calls)
                    assert CALL_ID.fullmatch(t.id or "") and t.type == "function", t
                    assert t.function.name, t
                    calls[t.index] = [t.function.name, ""]
                else:
                    assert t.id is None and not t.function.name, t
                calls[t.index][1] += t.function.arguments or ""
            if ch.finish_reason:
                finishes.append(ch.finish_reason)
    assert first is not None and first.role == "assistant", first
    return content, [tuple(c) for _, c in sorted(calls.items())], finishes


# ---- 1. a named call ----

def test_named_call(q):
    """The output is the function's arguments, valid against its parameters
    (Pydantic's schema), the model's bytes as they are; the client's parse
    gives a Weather."""
    r = create(q, tools=TOOLS, tool_choice=named("get_weather"), logprobs=True)
    c = r.choices[0]
    calls = check_calls(c)
    assert [n for n, _ in calls] == ["get_weather"], calls
    assert calls[0][1] == raw_text(c), (calls, raw_text(c))
    assert r.usage.completion_tokens == len(c.logprobs.content)
    Weather.model_validate_json(calls[0][1])

    p = sync_client(q).beta.chat.completions.parse(
        model=NAME, messages=ASK, tools=[openai.pydantic_function_tool(Weather)],
        tool_choice=named("Weather"), temperature=0, max_tokens=200)
    pc = p.choices[0]
    assert pc.finish_reason == "tool_calls" and pc.message.content is None, pc
    assert [t.function.name for t in pc.message.tool_calls] == ["Weather"], pc
    got = pc.message.tool_calls[0].function.parsed_arguments
    assert isinstance(got, Weather), got
    assert got == Weather.model_validate_json(pc.message.tool_calls[0].function.arguments)


# ---- 2. required ----

def check_required(c):
    """Each call is an element of the array the model wrote, its arguments
    json.dumps(parameters, ensure_ascii=False)."""
    calls = check_calls(c)
    wrote = json.loads(raw_text(c))
    assert isinstance(wrote, list), wrote
    assert calls == [(e["name"], dumps(e["parameters"])) for e in wrote], (calls, wrote)
    return calls


def test_required(q):
    """parallel_tool_calls false: exactly one call; true: one or more, each
    valid (sampled until a choice closes its array)."""
    r = create(q, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
               logprobs=True)
    assert len(check_required(r.choices[0])) == 1, r
    whole, seen = 0, []
    for seed in (3, 0, 1, 2, 4, 5):
        r = create(q, tools=TOOLS, tool_choice="required", parallel_tool_calls=True,
                   temperature=0.8, seed=seed, n=2, max_tokens=160, logprobs=True)
        for c in r.choices:
            seen.append(c.finish_reason)
            if c.finish_reason != "length":
                assert len(check_required(c)) >= 1
                whole += 1
        if whole:
            break
    assert whole, ("no choice closed its array", seen)


# ---- 3. streamed == whole ----

@pytest.mark.parametrize("choice", [named("get_weather"), "required"],
                         ids=["named", "required"])
def test_streamed_equals_whole(q, choice):
    kw = dict(tools=TWO, tool_choice=choice, parallel_tool_calls=False)
    want = check_calls(create(q, **kw).choices[0])
    content, calls, finishes = streamed(q, **kw)
    assert content == "", content
    assert calls == want, (calls, want)
    assert finishes == ["tool_calls"], finishes


# ---- 4. history: calls and results fed back ----

def qwen25(msgs, tools):
    """Qwen2.5's template with tools, as transformers renders it (tojson is
    json.dumps(ensure_ascii=False); a call's arguments reach it parsed), for
    conversations without a system message."""
    out = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
           "assistant.\n\n# Tools\n\nYou may call one or more functions to assist with the user "
           "query.\n\nYou are provided with function signatures within <tools></tools> XML tags:"
           "\n<tools>" + "".join("\n" + dumps(t) for t in tools) +
           "\n</tools>\n\nFor each function call, return a json object with function name and "
           "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": "
           "<function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n")
    for i, m in enumerate(msgs):
        if m["role"] == "user" or (m["role"] == "assistant" and not m.get("tool_calls")):
            out += "<|im_start|>%s\n%s<|im_end|>\n" % (m["role"], m["content"])
        elif m["role"] == "assistant":
            out += "<|im_start|>assistant" + ("\n" + m["content"] if m.get("content") else "")
            for c in m["tool_calls"]:
                out += '\n<tool_call>\n{"name": "%s", "arguments": %s}\n</tool_call>' % (
                    c["function"]["name"], dumps(json.loads(c["function"]["arguments"])))
            out += "<|im_end|>\n"
        else:
            assert m["role"] == "tool", m
            if i == 0 or msgs[i - 1]["role"] != "tool":
                out += "<|im_start|>user"
            out += "\n<tool_response>\n%s\n</tool_response>" % m["content"]
            if i == len(msgs) - 1 or msgs[i + 1]["role"] != "tool":
                out += "<|im_end|>\n"
    return out + "<|im_start|>assistant\n"


def golden():
    with open(os.path.join(GOLDEN, "chat_tools_golden.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_qwen25_judge_itself():
    """qwen25() is transformers' rendering on every golden Qwen2.5 case it covers."""
    n = 0
    for g in golden():
        if (g["template"] == QWEN25 and g["gen"] and g["tools"] and
                all(m["role"] != "system" for m in g["messages"])):
            assert qwen25(g["messages"], json.loads(g["tools"])) == g["out"], g["messages"]
            n += 1
    assert n >= 4, n


def rendered(daemon, body):
    """The prompt decoded renders for a chat body (bytes or dict): /tokenize's
    ids and their text."""
    status, _, data = daemon.request("POST", "/tokenize", body)
    tok = json.loads(data)
    assert status == 200, tok
    status, det = daemon.json("POST", "/detokenize", {"tokens": tok["tokens"]})
    assert status == 200, det
    return tok["tokens"], det["prompt"]


def test_round_trip(q):
    """A named call's response fed back with its result: the prompt is
    transformers' (Qwen2.5), and the request with tool_choice auto runs on
    exactly those tokens."""
    call = create(q, tools=TWO, tool_choice=named("get_weather")).choices[0]
    check_calls(call)
    tc = call.message.tool_calls[0]
    conv = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": tc.id, "type": "function",
             "function": {"name": tc.function.name, "arguments": tc.function.arguments}}]},
        {"role": "tool", "tool_call_id": tc.id, "content": "21 C"}]
    r = create(q, messages=conv, tools=TWO, tool_choice="auto", max_tokens=40)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls"), r
    ids, text = rendered(q, {"messages": conv, "tools": TWO, "tool_choice": "auto"})
    want = qwen25(conv, TWO)
    assert text == want, (text, want)
    status, tok = q.json("POST", "/tokenize", {"prompt": want})
    assert status == 200 and tok["tokens"] == ids, tok
    assert r.usage.prompt_tokens == len(ids), (r.usage, len(ids))


@pytest.mark.parametrize("template,fixture", [(QWEN25, "q"), (QWEN3, "q3"), (LLAMA31, "ll")],
                         ids=["qwen25", "qwen3", "llama31"])
def test_prompt_is_transformers(request, template, fixture):
    """Every golden conversation (tools as the client wrote them, calls,
    results) renders as transformers did, or is refused with its message."""
    daemon = request.getfixturevalue(fixture)
    n = 0
    for g in golden():
        if g["template"] != template or not g["gen"]:
            continue
        body = '{"messages": %s%s}' % (json.dumps(g["messages"]),
                                        ', "tools": ' + g["tools"] if g["tools"] else "")
        if "error" in g:
            status, _, data = daemon.request("POST", "/v1/chat/completions", body.encode())
            err = json.loads(data)["error"]
            assert status == 400 and err["param"] == "messages", err
            assert err["message"] == g["error"], (err, g["error"])
            continue
        ids, text = rendered(daemon, body.encode())
        want = g["out"]
        if g["bos"]:  # the template prints the model's BOS: SmolLM2's, not Llama's
            bos = daemon.json("POST", "/detokenize", {"tokens": ids[:1]})[1]["prompt"]
            assert want.startswith(g["bos"]) and bos and bos != g["bos"]
            want = bos + want[len(g["bos"]):]
        assert text == want, (g["messages"], text, want)
        n += 1
    assert n >= 8, n


def test_llama31_one_call_per_message(ll):
    conv = [{"role": "user", "content": "Zürich weather, and search for umbrellas"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {
                    "name": "get_weather", "arguments": '{"city": "Zürich"}'}},
                {"id": "call_2", "type": "function", "function": {
                    "name": "search", "arguments": '{"q": "umbrellas"}'}}]},
            {"role": "user", "content": "and then?"}]
    with pytest.raises(openai.BadRequestError) as e:
        create(ll, messages=conv, tools=TOOLS, max_tokens=8)
    assert e.value.status_code == 400 and e.value.body["param"] == "messages", e.value.body
    assert "This model only supports single tool-calls at once!" in e.value.body["message"]


# ---- 5. auto and none ----

def test_auto_prose(q):
    """A question the model answers in prose: content, no calls, streamed the same."""
    kw = dict(messages=[{"role": "user", "content": "Write a short poem about the sea."}],
              tools=[WEATHER], tool_choice="auto", max_tokens=30)
    c = create(q, **kw).choices[0]
    assert isinstance(c.message.content, str) and c.message.content, c
    assert c.message.tool_calls is None, c
    assert c.finish_reason in ("stop", "length"), c
    assert streamed(q, **kw) == (c.message.content, [], [c.finish_reason])


def echo(*blocks):
    """A prompt the model answers by repeating the <tool_call> blocks given."""
    return [{"role": "user", "content": "Repeat exactly this text: " + "\n".join(
        '<tool_call>\n{"name": "%s", "arguments": %s}\n</tool_call>' % b for b in blocks)}]


ECHOES = {
    "one": echo(("get_weather", '{"city": "Zürich", "days": 2}')),
    "two": echo(("get_weather", '{"city": "Paris"}'), ("search", '{"q": "umbrella"}')),
    # what json.dumps writes its own way: escapes, floats, a -0.0, a big int
    "values": echo(("search", r'{"q": "\u00e9\n\"", "l": [true, null, {"a": []}], '
                              r'"neg": -0.0, "big": 12345678901234567890, "e": 2.5e+3, '
                              r'"z": 0.000001, "f": 1.10}')),
}


@pytest.mark.parametrize("name", list(ECHOES))
def test_auto_reads_hermes_blocks(q, name):
    """Qwen2.5's way: each <tool_call> block the model writes (here it
    repeats them) is a call, its arguments written again as json.dumps
    writes them; streamed the same."""
    kw = dict(messages=ECHOES[name], tools=[WEATHER, SEARCH], max_tokens=140)
    c = create(q, logprobs=True, **kw).choices[0]
    calls = check_calls(c, {"get_weather": None, "search": None})
    wrote = raw_text(c)
    blocks = [json.loads(b) for b in re.findall(r"<tool_call>(.*?)</tool_call>", wrote, re.S)]
    assert wrote.lstrip().startswith("<tool_call>") and blocks, wrote
    assert calls == [(b["name"], dumps(b["arguments"])) for b in blocks], (calls, wrote)
    assert streamed(q, **kw) == ("", calls, ["tool_calls"])


LLAMA_CALL = {"type": "json_schema", "json_schema": {"name": "call", "schema": {
    "type": "object",
    "properties": {"name": {"const": "get_weather"},
                   "parameters": WEATHER["function"]["parameters"]},
    "required": ["name", "parameters"], "additionalProperties": False}}}


def test_auto_reads_llama_answer(ll):
    """Llama-3.1's way: an answer that is one {"name", "parameters"} object
    (forced here by response_format) is the call."""
    kw = dict(tools=[WEATHER], tool_choice="auto", response_format=LLAMA_CALL)
    c = create(ll, logprobs=True, **kw).choices[0]
    calls = check_calls(c)
    wrote = json.loads(raw_text(c))
    assert calls == [("get_weather", dumps(wrote["parameters"]))], (calls, wrote)
    assert streamed(ll, **kw) == ("", calls, ["tool_calls"])


def test_none_hides_the_tools(q):
    """tool_choice none: the prompt is the one without tools; a plain answer."""
    plain = create(q, max_tokens=4)
    r = create(q, tools=[WEATHER], tool_choice="none", max_tokens=4)
    auto = create(q, tools=[WEATHER], max_tokens=1)
    assert r.usage.prompt_tokens == plain.usage.prompt_tokens < auto.usage.prompt_tokens
    c = r.choices[0]
    assert isinstance(c.message.content, str) and c.message.tool_calls is None, c
    assert c.finish_reason in ("stop", "length"), c


# ---- 6. refusals ----

PATTERN = tool("code", obj({"code": {"type": "string", "pattern": "^[A-Z]+$"}}))
NOT_JSON = ASK + [{"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function",
     "function": {"name": "get_weather", "arguments": "{city: Zürich}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "21 C"}]
REFUSED = [
    # (what, daemon, request, param, words in the message)
    ("tools on a template without", "d", dict(tools=TOOLS), "tools", ["has no tools"]),
    ("required on a template without", "d", dict(tools=TOOLS, tool_choice="required"),
     "tools", ["has no tools"]),
    ("named not among the tools", "q", dict(tools=TOOLS, tool_choice=named("nope")),
     "tool_choice", ["nope"]),
    ("required without tools", "q", dict(tool_choice="required"), "tool_choice", ["tools"]),
    ("pattern under a named choice", "q", dict(tools=[PATTERN], tool_choice=named("code")),
     "tools", ['"pattern"']),
    ("arguments not JSON", "q", dict(messages=NOT_JSON, tools=TOOLS), "messages",
     ["not JSON"]),
    ("json_object beside required", "q", dict(tools=TOOLS, tool_choice="required",
                                              response_format={"type": "json_object"}),
     "response_format", []),
    ("parallel_tool_calls not a boolean", "q",
     dict(tools=TOOLS, extra_body={"parallel_tool_calls": "yes"}), "parallel_tool_calls", []),
    ("two tools of one name", "q", dict(tools=[WEATHER, WEATHER]), "tools", ["get_weather"]),
]


@pytest.mark.parametrize("what,fixture,req,param,words", REFUSED,
                         ids=[r[0] for r in REFUSED])
def test_refusals(request, what, fixture, req, param, words):
    daemon = request.getfixturevalue(fixture)
    with pytest.raises(openai.BadRequestError) as e:
        create(daemon, max_tokens=8, **req)
    body = e.value.body
    assert e.value.status_code == 400 and body["param"] == param, (what, body)
    for w in words:
        assert w in body["message"], (what, w, body["message"])
    assert daemon.metric("pdserve:num_requests_running") == 0


def test_none_on_a_template_without_tools(d):
    c = create(d, tools=TOOLS, tool_choice="none", max_tokens=4).choices[0]
    assert isinstance(c.message.content, str) and c.message.tool_calls is None, c
    assert c.finish_reason in ("stop", "length"), c


def test_tools_on_completions(q):
    with pytest.raises(openai.BadRequestError) as e:
        sync_client(q).completions.create(model=NAME, prompt="Hi", max_tokens=4,
                                          extra_body={"tools": TOOLS})
    assert e.value.status_code == 400 and e.value.body["param"] == "tools", e.value.body


# ---- 7. disaggregated ----

def test_disaggregated_equals_local(q, qpair):
    """Prefilled on the peer, a named call's arguments are decoded alone's."""
    p, a = qpair
    before = p.metric("pdserve:prefill_requests_total")
    for choice in (named("get_weather"), named("pick_city")):
        want = check_calls(create(q, tools=TWO, tool_choice=choice).choices[0])
        got = check_calls(create(a, tools=TWO, tool_choice=choice).choices[0])
        assert got == want, (choice, got, want)
    assert p.metric("pdserve:prefill_requests_total") - before == 2
    assert a.metric("pdserve:prompt_tokens_total") == 0
