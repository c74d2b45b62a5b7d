#!/usr/bin/env python3
"""Golden renderings of conversations with tools by transformers'
apply_chat_template, for the tool parts of common/text/chat.c (Qwen2.5,
Qwen3, Llama-3.1's own templates).

Not run by the test suite (it needs transformers); run by hand from the repo
root with the golden venv of make_chat_hf_golden.py (same pins):

    ~/.cache/pdserve/golden-venv/bin/python tests/golden/make_chat_tools_golden.py

The conversations are written as an OpenAI client sends them: "tools" is the
request's JSON text (rendered from the text, so numbers and escapes are as
the client wrote them), a tool call's "arguments" a JSON string, content null
beside tool calls. They reach the template as vLLM hands them over: tools
and arguments parsed (json.loads: a dict, as the templates expect; the
Qwen2.5 and Llama-3.1 templates would tojson a string into a quoted one),
null content as "", and "tool_calls" only on messages that have some.

Writes tests/golden/chat_tools_golden.jsonl, one line per (template,
conversation, gen):
    {"template", "bos", "eos", "tools": text | null, "messages": [...as sent],
     "gen": bool, "out": text}        or    {..., "error": message}
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_chat_hf_golden as hf  # noqa: E402  (pins, template hashes, tokenizer)

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ["Qwen-Qwen2.5-7B-Instruct.jinja", "Qwen-Qwen3-0.6B.jinja",
         "meta-llama-Llama-3.1-8B-Instruct.jinja"]

WEATHER = ('{"type": "function", "function": {"name": "get_weather", "description": '
           '"Current weather \\u2014 in \\"\\u00b0C\\" or \\u00b0F\\n", "parameters": '
           '{"type": "object", "properties": {"city": {"type": "string", "maxLength": 64}, '
           '"days": {"type": "integer", "minimum": 1, "maximum": 7.0, "default": 1e0}, '
           '"units": {"enum": ["c", "f"]}}, "required": ["city"], '
           '"additionalProperties": false}}}')
SEARCH = ('{"type":"function","function":{"name":"search","parameters":{"type":"object",'
          '"properties":{"q":{"type":"string"},"limit":{"type":"number","exclusiveMaximum":'
          '1e3}},"required":["q"]},"strict":true}}')
NOPARAMS = '{"type": "function", "function": {"name": "now"}}'
TOOLS_2 = "[" + WEATHER + ",\n " + SEARCH + "]"
TOOLS_3 = "[" + WEATHER + "," + SEARCH + "," + NOPARAMS + "]"


def msg(role, content, **kw):
    m = {"role": role, "content": content}
    m.update(kw)
    return m


def call(i, name, args):
    return {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}


S, U, A, T = "system", "user", "assistant", "tool"
CALL_W = call(1, "get_weather", '{"city": "Paris", "days": 2}')
CALL_W2 = call(2, "get_weather", '{ "city":"Zürich","units":"c","days":1.0 }')
CALL_S = call(3, "search", '{"q": "a \\"quoted\\" \\u00e9 query\\n", "limit": 1e2}')

CONVERSATIONS = [
    (TOOLS_2, [msg(U, "What's the weather in Paris?")]),
    (TOOLS_3, [msg(S, "You are a helpful agent."), msg(U, "Weather in Paris?")]),
    (TOOLS_2, [msg(U, "Weather in Paris?"), msg(A, None, tool_calls=[CALL_W]),
               msg(T, '{"temp": 21.5, "sky": "clear"}', tool_call_id="call_1")]),
    (TOOLS_2, [msg(S, "Be brief."), msg(U, "Weather in Paris?"),
               msg(A, None, tool_calls=[CALL_W]),
               msg(T, "21.5 \u00b0C, \"clear\"\nno wind", tool_call_id="call_1"),
               msg(A, "It is 21.5 \u00b0C and clear."), msg(U, "Thanks!")]),
    # content beside calls, two calls, two results in a row (Llama-3.1 raises)
    (TOOLS_2, [msg(U, "Zürich weather, and search for umbrellas"),
               msg(A, "Let me check both.", tool_calls=[CALL_W2, CALL_S]),
               msg(T, "cold", tool_call_id="call_2"),
               msg(T, "[\"umbrella A\"]", tool_call_id="call_3")]),
    (TOOLS_2, [msg(U, "two calls, no text"), msg(A, "", tool_calls=[CALL_W2, CALL_S]),
               msg(T, "r1", tool_call_id="call_2"), msg(T, "r2", tool_call_id="call_3"),
               msg(U, "and then?")]),
    # history with calls, no tools in this request
    (None, [msg(U, "Weather in Paris?"), msg(A, None, tool_calls=[CALL_W]),
            msg(T, "sunny", tool_call_id="call_1"), msg(U, "ok")]),
    # Qwen3: the last query is the last user message that is not a wrapped
    # tool result; reasoning beside calls
    (TOOLS_2, [msg(U, "q"), msg(A, "<think>\nneed weather\n</think>\n\nchecking",
                                tool_calls=[CALL_W]),
               msg(T, "sunny", tool_call_id="call_1"),
               msg(U, "<tool_response>\nextra\n</tool_response>")]),
    (TOOLS_2, [msg(U, "q"), msg(A, "<think>r</think>", tool_calls=[CALL_W])]),
    # Llama-3.1: tools go into the first message after the system one
    (TOOLS_3, [msg(S, "sys"), msg(U, "  padded first  "), msg(A, "a"), msg(U, "b")]),
    (TOOLS_2, [msg(S, "only a system message")]),
    # tools without a system message, unicode in results
    (TOOLS_3, [msg(U, "now?"), msg(A, None, tool_calls=[call(4, "now", "{}")]),
               msg(T, "2026-12-07T13:00 \u2014 \U0001F642", tool_call_id="call_4")]),
]


def for_template(messages):
    """The messages as vLLM hands them to the template."""
    out = []
    for m in messages:
        t = {"role": m["role"], "content": m["content"] if m["content"] is not None else ""}
        if m.get("tool_calls"):
            t["tool_calls"] = [{"type": "function", "function": {
                "name": c["function"]["name"],
                "arguments": json.loads(c["function"]["arguments"])}} for c in m["tool_calls"]]
        if "tool_call_id" in m:
            t["tool_call_id"] = m["tool_call_id"]
        out.append(t)
    return out


def main():
    rows = []
    for name in NAMES:
        _, bos, eos = hf.TEMPLATES[name]
        tok = hf.make_tokenizer(hf.load_template(name), bos, eos)
        for tools, conv in CONVERSATIONS:
            for gen in (False, True):
                row = {"template": name, "bos": bos, "eos": eos, "tools": tools,
                       "messages": conv, "gen": gen}
                kw = {"tools": json.loads(tools)} if tools else {}
                try:
                    row["out"] = tok.apply_chat_template(for_template(conv),
                                                         add_generation_prompt=gen,
                                                         tokenize=False, **kw)
                except Exception as e:  # the template raised
                    row["error"] = str(e)
                rows.append(row)
    path = os.path.join(HERE, "chat_tools_golden.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
    n_err = sum(1 for r in rows if "error" in r)
    print(f"chat_tools_golden.jsonl: {len(rows)} lines, {n_err} errors")


if __name__ == "__main__":
    main()
