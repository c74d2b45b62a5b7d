#!/usr/bin/env python3
"""Token ids of every rendering in tests/golden/chat_hf_golden.jsonl, as
transformers' apply_chat_template(tokenize=True) makes them: the rendered
text encoded by the `tokenizers` library without the tokenizer's own special
tokens (add_special_tokens=False, which is what tokenize=True does), Qwen's
templates with tests/golden/tokjson/qwen2/tokenizer.json, Llama's and
Mistral's with tests/golden/tokjson/llama3/tokenizer.json. Golden venv:

    ~/.cache/pdserve/golden-venv/bin/python tests/golden/make_chat_hf_ids.py

Writes tests/golden/chat_hf_ids.jsonl: one line per golden line, {"ids": [...]}
(or {} where transformers refused the conversation).
"""
import json

import tokenizers
from tokenizers import Tokenizer

assert tokenizers.__version__ == "0.21.4", tokenizers.__version__


def main():
    tok = {n: Tokenizer.from_file(f"tests/golden/tokjson/{n}/tokenizer.json")
           for n in ("qwen2", "llama3")}
    with open("tests/golden/chat_hf_golden.jsonl", encoding="utf-8") as f, \
            open("tests/golden/chat_hf_ids.jsonl", "w", encoding="utf-8") as o:
        for line in f:
            row = json.loads(line)
            if "out" not in row:
                o.write("{}\n")
                continue
            t = tok["qwen2" if row["template"].startswith("Qwen") else "llama3"]
            ids = t.encode(row["out"], add_special_tokens=False).ids
            o.write(json.dumps({"ids": ids}) + "\n")


if __name__ == "__main__":
    main()
