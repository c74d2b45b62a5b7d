#!/usr/bin/env python3
"""Greedy continuations of 16 varied prompts from Hugging Face transformers
(pinned in make_engine_golden.py) on the default model's GGUF, in float64: the
gate of the CPU engine's default path over quantized weights (issue 25,
DESIGN.md's near-tie rule). Run by hand, not by the suite (it needs torch):

    ~/.cache/pdserve/golden-venv/bin/python tests/golden/make_greedy_golden.py \\
        ~/.cache/pdserve/SmolLM2-135M-Instruct.Q4_1.gguf

Writes tests/golden/greedy_default.bin, little-endian:
    char magic[4] = "PDGG"; u32 version = 1; u32 n_prompts; u32 n_gen
    per prompt: u32 n; i32 tokens[n];
                per generated token: i32 id; f32 top-2 gap; f32 max|logit|
(the gap and max|logit| of the logits that chose the token)
"""
import os
import struct
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.models.llama import modeling_llama

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_engine_golden import rotary_forward_f64  # noqa: E402

N_GEN = 64
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village",
    "def fibonacci(n):",
    "Water boils at",
    "The three primary colors are",
    "<|im_start|>user\nWhat is the speed of light?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nHow do I sort a list in Python?<|im_end|>\n<|im_start|>assistant\n",
    "In 1969, the Apollo 11 mission",
    "import numpy as np\nx = np.arange(10)\n",
    "The recipe calls for two cups of flour,",
    "Photosynthesis is the process by which",
    "Die Hauptstadt Deutschlands ist",
    "1, 2, 3, 5, 8, 13,",
    "Q: What is 12 times 12?\nA:",
    "The best way to learn a new language is",
]


def main():
    path = sys.argv[1]
    modeling_llama.LlamaRotaryEmbedding.forward = rotary_forward_f64
    torch.set_num_threads(os.cpu_count() or 1)
    d, f = os.path.split(os.path.abspath(path))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float64,
                                                 attn_implementation="eager")
    model.eval()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    out_path = "tests/golden/greedy_default.bin"
    with open(out_path, "wb") as o:
        o.write(b"PDGG" + struct.pack("<III", 1, len(PROMPTS), N_GEN))
        for text in PROMPTS:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            o.write(struct.pack("<I", len(ids)) + np.asarray(ids, "<i4").tobytes())
            seq = list(ids)
            past = None
            inp = torch.tensor([seq])
            for _ in range(N_GEN):
                with torch.no_grad():
                    r = model(inp, past_key_values=past, use_cache=True)
                past = r.past_key_values
                row = r.logits[0, -1]
                top = torch.topk(row, 2)
                nxt = int(top.indices[0])
                gap = float(top.values[0] - top.values[1])
                o.write(struct.pack("<iff", nxt, gap, float(row.abs().max())))
                seq.append(nxt)
                inp = torch.tensor([[nxt]])
            print(repr(tok.decode(seq[len(ids):]))[:100], file=sys.stderr)
    print(f"{out_path}: {len(PROMPTS)} prompts x {N_GEN} tokens", file=sys.stderr)


if __name__ == "__main__":
    main()
