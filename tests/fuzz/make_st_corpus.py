#!/usr/bin/env python3
"""Writes the seed corpus for fuzz_safetensors with the `safetensors` package's
writer (an independent producer of valid files). Run from the repo root with
the test venv:

    ~/.cache/pdserve/venv/bin/python tests/fuzz/make_st_corpus.py

Seeds are small on purpose: libFuzzer mutates them, the replay test runs them.
The writer orders metadata keys differently from run to run (a hash map), so
seed-metadata.safetensors changes each time; the others come out the same.
Besides files of each dtype pdserve reads (F32, F16, BF16), there are names as
a sharded checkpoint's shards carry them, metadata, an empty file, and dtypes
it refuses by name (I64, F64), so every path of the parser has a seed.
"""
import os

import numpy as np
import safetensors

OUT = "tests/fuzz/corpus/safetensors"
NP = {"float32": "<f4", "float16": "<f2", "float64": "<f8", "int64": "<i8"}


def spec(dtype, arr):
    """One tensor for safetensors.serialize_file, in the form this version
    takes (TensorSpec from 0.7, a dict before). Keep arr alive meanwhile."""
    shape = list(np.shape(arr))
    if dtype == "bfloat16":  # numpy has none: raw bits, the top half of a float32
        arr = (np.ascontiguousarray(arr, dtype="<f4").view(np.uint32) >> 16).astype("<u2")
    else:
        arr = np.ascontiguousarray(arr, dtype=NP[dtype])
    if hasattr(safetensors, "TensorSpec"):
        return arr, safetensors.TensorSpec(dtype=dtype, shape=shape, data_ptr=arr.ctypes.data,
                                           data_len=arr.nbytes)
    return arr, {"dtype": dtype, "shape": shape, "data": arr.tobytes()}


def write(name, tensors, metadata=None):
    """tensors: {tensor name: (dtype, array)}"""
    keep, specs = [], {}
    for tname, (dtype, arr) in tensors.items():
        raw, s = spec(dtype, arr)
        keep.append(raw)
        specs[tname] = s
    safetensors.serialize_file(specs, f"{OUT}/{name}", metadata=metadata)
    os.chmod(f"{OUT}/{name}", 0o644)


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(f"{OUT}/{f}")
    rng = np.random.default_rng(3)

    def x(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    for dtype, tag in (("float32", "f32"), ("float16", "f16"), ("bfloat16", "bf16")):
        write(f"seed-{tag}.safetensors", {"a.weight": (dtype, x(4)), "b.weight": (dtype, x(2, 3))})
    write("seed-dims.safetensors", {"d1": ("float32", x(3)), "d2": ("float16", x(2, 2)),
                                    "d3": ("bfloat16", x(1, 2, 3)),
                                    "d4": ("float32", x(2, 1, 2, 1))})
    # a shard of a sharded checkpoint: its tensors' full names, the usual metadata
    write("seed-shard.safetensors", {
        "model.embed_tokens.weight": ("bfloat16", x(4, 8)),
        "model.layers.0.self_attn.q_proj.weight": ("bfloat16", x(8, 8)),
        "model.layers.0.self_attn.q_proj.bias": ("bfloat16", x(8)),
        "model.layers.0.input_layernorm.weight": ("float32", x(8)),
        "lm_head.weight": ("float16", x(4, 8)),
    }, metadata={"format": "pt"})
    write("seed-metadata.safetensors", {"w": ("float32", x(2))},
          metadata={"format": "pt", "note": "héllo \"quoted\" \\ \u00e9\u4e2d", "empty": ""})
    write("seed-empty.safetensors", {})
    write("seed-metadata-only.safetensors", {}, metadata={"format": "pt"})
    # valid files of dtypes pdserve refuses by name
    write("seed-i64.safetensors", {"ids": ("int64", np.arange(3))})
    write("seed-f64.safetensors", {"x": ("float64", x(2)),
                                   "y": ("float32", x(2))})


if __name__ == "__main__":
    main()
