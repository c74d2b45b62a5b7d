#!/usr/bin/env python3
"""Golden logits for the engine tests, from an independent implementation:
Hugging Face transformers (pinned below) loading the same GGUF files with
`gguf_file=`, run in float64 (rotary angles included).

Not run by the test suite (it needs torch); run by hand after changing the
prompts or the dummy generator, from the repo root:

    python3 -m venv ~/.cache/pdserve/golden-venv
    ~/.cache/pdserve/golden-venv/bin/pip install torch==2.5.1 transformers==4.47.1 \
        accelerate==1.2.1 gguf==0.17.1 numpy==1.26.4
    ninja -C build
    ~/.cache/pdserve/golden-venv/bin/python tests/golden/make_engine_golden.py \
        build/common/tools/pdserve-inspect ~/.cache/pdserve/SmolLM2-135M-Instruct.Q4_1.gguf

Writes tests/golden/engine_<name>.bin, little-endian:
    char magic[4] = "PDGL"; u32 version = 1; u32 n_vocab; u32 n_prompts; u32 topk
    per prompt: u32 n; i32 tokens[n];
                per position: f64 logsumexp; f64 max|logit|; topk x (u32 id, f32 logit)
                f32 logits[n_vocab] of the last position
Dummy models are written by pdserve-inspect --write-gguf with the shapes and
seeds in DUMMIES; the test regenerates them the same way.
"""
import math
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.models.llama import modeling_llama

assert transformers.__version__ == "4.47.1", transformers.__version__

TOPK = 64
LENGTHS = [1, 3, 8, 17, 42, 100, 201, 300]
DUMMIES = [("tiny-mha", 11), ("tiny-gqa3", 12), ("tiny-gqa4", 13)]
TEXTS = [
    "Hello",
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is disaggregated serving?<|im_end|>\n<|im_start|>assistant\n",
    "东京是日本的首都，也是世界上人口最多的城市之一。 Tokyo is the capital of Japan. "
    "Die Hauptstadt Deutschlands ist Berlin. La capitale de l'Italie est Rome. 12345 + 67890 = 80235.",
    "In 1969, the Apollo 11 mission landed the first humans on the Moon. Neil Armstrong and Buzz "
    "Aldrin spent about two and a quarter hours outside the spacecraft, while Michael Collins "
    "orbited above in the command module. The mission carried a plaque that read: 'Here men from "
    "the planet Earth first set foot upon the Moon, July 1969, A.D. We came in peace for all "
    "mankind.' ",
    "A key-value cache stores the attention keys and values of every token a model has already "
    "seen, so that generating the next token costs one pass over one token rather than over the "
    "whole prompt. Paged caches split it into fixed-size blocks, like virtual memory pages, so "
    "sequences of different lengths share one pool without fragmentation. ",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old "
    "clockmaker who could repair anything that ticked. Children brought him broken music boxes, "
    "farmers brought him rusty weather vanes, and once a travelling merchant brought him a "
    "silver compass that always pointed toward home. ",
]


def rotary_forward_f64(self, x, position_ids):
    """LlamaRotaryEmbedding.forward with the angles in float64 (upstream forces
    float32, which would make the reference less exact than what it checks)."""
    dim = self.inv_freq.shape[0] * 2
    base = self.config.rope_theta
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    freqs = position_ids[:, :, None].to(torch.float64) * inv[None, None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def prompts_for(name, n_vocab, tokenizer):
    out = []
    if tokenizer is None:
        rng = np.random.default_rng(1234 + n_vocab)  # fixed per model
        for n in LENGTHS:
            out.append([int(t) for t in rng.integers(0, n_vocab, n)])
        return out
    for n, text in zip(LENGTHS, TEXTS):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        while len(ids) < n:  # long prompts: repeat the text
            ids = ids + tokenizer(" " + text, add_special_tokens=False)["input_ids"]
        out.append(ids[:n])
    return out


def run(path, name, out_path, with_tokenizer):
    d, f = os.path.split(os.path.abspath(path))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float64,
                                                 attn_implementation="eager")
    model.eval()
    emb = model.model.embed_tokens.weight
    if getattr(model.config, "tie_word_embeddings", False):
        assert torch.equal(model.lm_head.weight, emb), "tied output not tied"
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f) if with_tokenizer else None
    n_vocab = model.config.vocab_size
    prompts = prompts_for(name, n_vocab, tok)
    with open(out_path, "wb") as o:
        o.write(b"PDGL" + struct.pack("<IIII", 1, n_vocab, len(prompts), TOPK))
        for ids in prompts:
            with torch.no_grad():
                logits = model(torch.tensor([ids]), use_cache=False).logits[0]  # (n, vocab) f64
            o.write(struct.pack("<I", len(ids)) + np.asarray(ids, "<i4").tobytes())
            for row in logits:
                lse = float(torch.logsumexp(row, 0))
                mx = float(row.abs().max())
                top = torch.topk(row, TOPK)
                o.write(struct.pack("<dd", lse, mx))
                rec = np.zeros(TOPK, dtype=[("id", "<u4"), ("v", "<f4")])
                rec["id"] = top.indices.numpy()
                rec["v"] = top.values.numpy()
                o.write(rec.tobytes())
            o.write(logits[-1].numpy().astype("<f4").tobytes())
    print(f"{out_path}: {len(prompts)} prompts, vocab {n_vocab}", file=sys.stderr)


def main():
    inspect, default_model = sys.argv[1], sys.argv[2]
    modeling_llama.LlamaRotaryEmbedding.forward = rotary_forward_f64
    torch.set_num_threads(os.cpu_count() or 1)
    run(default_model, "default", "tests/golden/engine_default.bin", True)
    with tempfile.TemporaryDirectory() as tmp:
        for shape, seed in DUMMIES:
            g = os.path.join(tmp, f"{shape}.gguf")
            subprocess.run([inspect, "--load-format", "dummy", "--model-shape", shape,
                            "--seed", str(seed), "--write-gguf", g], check=True,
                           stdout=subprocess.DEVNULL)
            run(g, shape, f"tests/golden/engine_{shape}.bin", False)


if __name__ == "__main__":
    main()
