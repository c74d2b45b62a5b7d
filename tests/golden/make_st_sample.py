#!/usr/bin/env python3
"""Writes tests/golden/st_sample.safetensors with the `safetensors` package's
writer (an independent producer of the format) and, beside it,
st_sample.json: each tensor's name, dtype, shape, byte count and a few
element values as numpy reads them, for test_safetensors to check the C
parser against. Run from the repo root with the test venv:

    ~/.cache/pdserve/venv/bin/python tests/golden/make_st_sample.py

numpy has no bfloat16: the BF16 tensor is written as raw bits (the top half
of each float32, whose values are exact in bfloat16), and its values are read
back by numpy from those bits.
"""
import json
import os

import numpy as np
import safetensors

OUT = "tests/golden/st_sample"
META = {"format": "pt"}  # one key: the writer orders several differently each run
PICK = 4  # element values recorded per tensor: first, last, and a few between


def spec(dtype, shape, raw):
    """One tensor for safetensors.serialize_file, in the form this version
    takes (TensorSpec from 0.7, a dict before)."""
    if hasattr(safetensors, "TensorSpec"):
        return safetensors.TensorSpec(dtype=dtype, shape=list(shape), data_ptr=raw.ctypes.data,
                                      data_len=raw.nbytes)
    return {"dtype": dtype, "shape": list(shape), "data": raw.tobytes()}


def bf16_bits(x):
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    assert not (bits & 0xFFFF).any(), "values must be exact in bfloat16"
    return (bits >> 16).astype("<u2")


def main():
    rng = np.random.default_rng(7)
    f32 = {
        "model.embed_tokens.weight": rng.standard_normal((3, 4)).astype("<f4"),
        "model.norm.weight": np.array([1.0, -0.5, 3.25], dtype="<f4"),
    }
    f16 = {
        "model.layers.0.mlp.up_proj.weight": (rng.standard_normal((2, 3, 2)) * 4).astype("<f2"),
        "model.layers.0.self_attn.o_proj.bias": np.array([65504.0, -1.0, 2**-24], dtype="<f2"),
    }
    # small multiples of 1/8 are exact in bfloat16
    bf16 = {
        "lm_head.weight": np.round(rng.standard_normal((1, 5, 1, 2)) * 8) / 8,
        "model.layers.0.input_layernorm.weight": np.array([1.0, 2.0, -128.0, 0.0078125]),
    }
    keep = []  # the raw arrays must outlive serialize_file (TensorSpec holds pointers)
    tensors, want = {}, []

    def add(name, dtype, x, raw, values):
        keep.append(raw)
        tensors[name] = spec(dtype, x.shape, raw)
        flat = values.reshape(-1)
        idx = sorted({0, flat.size - 1, *np.linspace(0, flat.size - 1, PICK).astype(int)})
        want.append({"name": name, "dtype": {"float32": "F32", "float16": "F16",
                                             "bfloat16": "BF16"}[dtype],
                     "shape": list(x.shape), "nbytes": int(raw.nbytes),
                     "values": [[int(i), float(flat[i])] for i in idx]})

    for name, x in f32.items():
        add(name, "float32", x, np.ascontiguousarray(x), x.astype(np.float32))
    for name, x in f16.items():
        add(name, "float16", x, np.ascontiguousarray(x), x.astype(np.float32))
    for name, x in bf16.items():
        raw = bf16_bits(x)
        back = (raw.astype(np.uint32) << 16).view(np.float32)
        add(name, "bfloat16", np.asarray(x), raw, back)

    safetensors.serialize_file(tensors, f"{OUT}.safetensors",
                               metadata=META)
    os.chmod(f"{OUT}.safetensors", 0o644)  # the writer makes it 0600
    want.sort(key=lambda t: t["name"])
    with open(f"{OUT}.json", "w", encoding="utf-8") as f:  # one tensor a line
        f.write('{"writer": %s,\n "metadata": %s,\n "tensors": [\n  %s]}\n'
                % (json.dumps(f"safetensors {safetensors.__version__}"),
                   json.dumps(META),
                   ",\n  ".join(json.dumps(t) for t in want)))


if __name__ == "__main__":
    main()
