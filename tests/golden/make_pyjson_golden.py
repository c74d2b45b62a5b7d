#!/usr/bin/env python3
"""Golden outputs of Python's json.dumps(json.loads(text), ensure_ascii=False,
indent=k) -- what transformers' tojson filter prints in a chat template -- for
test_pyjson.c (common/text/pyjson.c writes the same from the JSON text).

Standard library only; run from the repo root after changing the cases:

    python3 tests/golden/make_pyjson_golden.py

Writes tests/golden/pyjson_golden.jsonl, one line per (case, indent):
    {"in": text, "indent": 0 | 4, "out": what json.dumps printed}
    {"in": text, "indent": 0, "error": true}   json.loads refuses the text,
                                               or pyjson.c does by design (a
                                               lone surrogate, which no UTF-8
                                               prompt can hold; a repeated
                                               key; nesting past 64)
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))

CASES = [
    # shapes, white space, key order kept
    '{"b": 1, "a": [true, false, null], "c": {}}',
    ' [ ] ', '{ }', '[1,2 , 3]', '{"x":{"y":{"z":[[],[{}]]}}}',
    '\n\t{"k"\n:\r\n"v" ,"k2":[ 1 ]}\n',
    # integers: as written, any size; -0 is 0
    '0', '-0', '7', '-12', '123456789012345678901234567890', '-99999999999999999999',
    '[0, -0, 10, 9007199254740993]',
    # floats: repr
    '1.0', '-1.0', '0.0', '-0.0', '1.5', '0.1', '0.30000000000000004', '3.14159',
    '1e2', '1E2', '1e+2', '1e-2', '2.5e-3', '1e-4', '1e-5', '0.0001', '0.00001',
    '123456.789', '1e15', '1e16', '1.5e16', '12345678901234567.0', '9007199254740993.0',
    '1e22', '1e-7', '5e-324', '1.7976931348623157e308', '2.2250738585072014e-308',
    '1e400', '-1e400', '1e-400', '0.1e1', '100.0e-2', '-2.50', '1.000000000000000000001',
    # strings
    '"plain"', '""', '"quote \\" backslash \\\\ slash \\/"',
    '"\\b\\f\\n\\r\\t"', '"\\u0000\\u0001\\u001f\\u007f\\u0080"',
    '"\\u00e9\\u4e2d\\u6587"', '"\\ud83d\\ude00 emoji"', '"raw é 中文 🙂"',
    '"\\uD83D\\uDE00"',
    # a realistic tool
    '{"type": "function", "function": {"name": "get_weather", "description": '
    '"Get the weather \\u2014 in \\"°C\\"", "parameters": {"type": "object", "properties": '
    '{"city": {"type": "string", "maxLength": 64}, "days": {"type": "integer", "minimum": 1, '
    '"maximum": 7.0}, "units": {"enum": ["c", "f"]}}, "required": ["city"], '
    '"additionalProperties": false}}}',
]

# what json.loads accepts and pyjson.c refuses on purpose, or what both refuse
REFUSED = [
    '"\\ud800"', '"\\udc00 x"', '"\\ud83d\\u0041"',  # lone surrogates
    '', '   ', '[1,]', '{"a" 1}', '{"a":1,}', '01', '1.', '.5', '-', '+1', '1e', 'tru',
    '"unterminated', '[1] 2', '{"a":1}}', 'NaN', 'Infinity', "'single'", '"\\x41"',
    '"raw\x01control"', '"tab\there"', '[' * 65 + ']' * 65,
    # a repeated key: json.loads keeps the last value at the first's place;
    # pyjson.c refuses a text that reads two ways
    '{"a": 1, "a": 2}', '{"a": {"b": 1, "c": 0, "b": 1}}', '[{"x": 1}, {"x": 1, "\\u0078": 2}]',
]


def main():
    rows = []
    for text in CASES:
        value = json.loads(text)
        for indent in (0, 4):
            out = json.dumps(value, ensure_ascii=False, indent=indent or None)
            rows.append({"in": text, "indent": indent, "out": out})
    for text in REFUSED:
        rows.append({"in": text, "indent": 0, "error": True})
    path = os.path.join(HERE, "pyjson_golden.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"pyjson_golden.jsonl: {len(rows)} lines")


if __name__ == "__main__":
    main()
