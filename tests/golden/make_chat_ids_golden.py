#!/usr/bin/env python3
"""Prompt token ids of chat conversations as transformers makes them
(apply_chat_template(messages, add_generation_prompt=True, tokenize=True):
the template rendered, then encoded without the tokenizer's own special
tokens) for the tokenizer.json + tokenizer_config.json that transformers
writes for the default model (tests/golden/tokjson/smollm2/): what decoded's
/v1/chat/completions must send to the engine for the default model served as
a checkpoint (tests/integration/test_disagg_checkpoint.py). Golden venv:

    ~/.cache/pdserve/golden-venv/bin/python tests/golden/make_chat_ids_golden.py

Writes tests/golden/chat_ids_smollm2.jsonl: {"messages": [...], "ids": [...]}.
"""
import json

import transformers
from transformers import AutoTokenizer

assert transformers.__version__ == "4.47.1", transformers.__version__

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Name three primary colours."}],
    [{"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Écris « bonjour » en japonais, s'il te plaît. 日本語で"}],
]


def main():
    tok = AutoTokenizer.from_pretrained("tests/golden/tokjson/smollm2")
    with open("tests/golden/chat_ids_smollm2.jsonl", "w", encoding="utf-8") as f:
        for msgs in CONVERSATIONS:
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            f.write(json.dumps({"messages": msgs, "ids": ids}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
