#!/usr/bin/env python3
"""Writes the golden files the model tests compare against. Run from the repo root
with the test venv (deploy/install-deps.sh makes it):

    ~/.cache/pdserve/venv/bin/python tests/golden/make_golden.py [MODEL.gguf]

Outputs (committed):
  tests/golden/dequant_vectors.bin   raw blocks + floats from the `gguf` package's dequantize()
  tests/golden/default_model_rows.bin  rows of the default model dequantized by `gguf` (if MODEL given)
  tests/golden/dummy_ref.json        sha256 of every dummy tensor, from an independent
                                     numpy implementation of the generator in common/model_dummy.c

Binary format of the .bin files, little-endian, repeated records:
  u32 name_len, name bytes, u32 ggml type, u64 n_elements, u64 raw_len, raw bytes,
  f32[n_elements] expected values
"""
import hashlib
import json
import struct
import sys

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader
from gguf.quants import dequantize

GOLDEN = "tests/golden"


def record(out, name, qtype, n, raw, values):
    nb = name.encode()
    out.write(struct.pack("<I", len(nb)) + nb)
    out.write(struct.pack("<IQQ", int(qtype), n, len(raw)))
    out.write(bytes(raw))
    out.write(np.asarray(values, dtype="<f4").tobytes())


def random_blocks(rng, qtype, n_blocks):
    """Random payloads with finite, moderate f16 scales (the fields real files hold)."""
    if qtype == QT.F16:
        v = rng.standard_normal(n_blocks * 32).astype(np.float16)
        # edge values: subnormals, the largest half, signed zeros
        v[:6] = np.array([6e-8, -6e-8, 65504, -65504, 0.0, -0.0], dtype=np.float16)
        return v.tobytes()
    if qtype == QT.BF16:
        v = rng.standard_normal(n_blocks * 32).astype(np.float32)
        return (v.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    size = {QT.Q8_0: 34, QT.Q4_0: 18, QT.Q4_1: 20, QT.Q4_K: 144, QT.Q6_K: 210}[qtype]
    raw = bytearray(rng.integers(0, 256, n_blocks * size, dtype=np.uint8).tobytes())
    for b in range(n_blocks):
        off = b * size
        if qtype == QT.Q6_K:  # d is last
            off += 208
        raw[off:off + 2] = np.float16(rng.uniform(-0.1, 0.1)).tobytes()
        if qtype in (QT.Q4_1, QT.Q4_K):  # m, dmin
            raw[off + 2:off + 4] = np.float16(rng.uniform(-1, 1)).tobytes()
    return bytes(raw)


def dequant_vectors():
    rng = np.random.default_rng(20261126)
    with open(f"{GOLDEN}/dequant_vectors.bin", "wb") as out:
        for qtype in (QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q4_K, QT.Q6_K):
            per = 256 if qtype in (QT.Q4_K, QT.Q6_K) else 32
            for n_blocks in (1, 7):
                raw = random_blocks(rng, qtype, n_blocks)
                vals = dequantize(np.frombuffer(raw, dtype=np.uint8), qtype).reshape(-1)
                record(out, f"{qtype.name}x{n_blocks}", qtype, n_blocks * per, raw, vals)


def default_model_rows(path):
    r = GGUFReader(path)
    want = {
        "token_embd.weight": (0, 1, 2, 49151),  # Q8_0
        "blk.0.attn_q.weight": (0, 575),  # Q4_1
        "blk.29.ffn_down.weight": (0, 575),  # Q4_1, the other shape
        "output_norm.weight": (0,),  # F32
    }
    with open(f"{GOLDEN}/default_model_rows.bin", "wb") as out:
        for t in r.tensors:
            if t.name not in want:
                continue
            ne0 = int(t.shape[0])
            data = np.asarray(t.data)
            rows = data.reshape(-1, data.shape[-1])  # one row of ne0 elements per line
            for row in want[t.name]:
                raw = rows[row].tobytes()
                vals = dequantize(rows[row], t.tensor_type).reshape(-1)
                assert vals.size == ne0
                record(out, f"{t.name}#{row}", t.tensor_type, ne0, raw, vals)


# ---- dummy weights: an independent implementation of the generator ----
M64 = (1 << 64) - 1


def mix64(z):
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def fnv1a64(s):
    h = 0xCBF29CE484222325
    for c in s.encode():
        h = ((h ^ c) * 0x100000001B3) & M64
    return h


def dummy_tensor(name, ne0, ne1, seed, dtype):
    key = int(mix64(np.uint64(seed) ^ mix64(np.uint64(fnv1a64(name)))))
    i = np.arange(1, ne0 * ne1 + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        u = mix64(np.uint64(key) + i * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
    x = ((2 * u.astype(np.int64) + 1) - (1 << 24)).astype(np.float32) / np.float32(1 << 24)
    if name.endswith("norm.weight"):
        v = np.float32(1) + x * np.float32(0.25)
    else:
        v = x * np.float32(1.0 / np.sqrt(float(ne0)))
    v = v.astype(np.float32)
    if dtype == "f32":
        return v.astype("<f4").tobytes()
    if dtype == "f16":
        return v.astype("<f2").tobytes()
    b = v.view(np.uint32).astype(np.uint64)  # bf16, round to nearest even
    b = (b + np.uint64(0x7FFF) + ((b >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
    return b.astype("<u2").tobytes()


def dummy_shapes(hp):
    q = hp["n_head"] * hp["head_dim"]
    kv = hp["n_head_kv"] * hp["head_dim"]
    e, f = hp["n_embd"], hp["n_ff"]
    yield "token_embd.weight", e, hp["n_vocab"]
    for layer in range(hp["n_layer"]):
        for w, ne0, ne1 in (("attn_norm", e, 1), ("attn_q", e, q), ("attn_k", e, kv),
                            ("attn_v", e, kv), ("attn_output", q, e), ("ffn_norm", e, 1),
                            ("ffn_gate", e, f), ("ffn_up", e, f), ("ffn_down", f, e)):
            yield f"blk.{layer}.{w}.weight", ne0, ne1
    yield "output_norm.weight", e, 1
    if not hp["tied"]:
        yield "output.weight", e, hp["n_vocab"]


def dummy_ref():
    tiny = dict(n_layer=2, n_embd=64, n_ff=128, n_head=4, n_head_kv=2, head_dim=16,
                n_vocab=256, tied=True)
    gqa3 = dict(n_layer=3, n_embd=144, n_ff=384, n_head=6, n_head_kv=2, head_dim=24,
                n_vocab=509, tied=False)
    custom = dict(n_layer=1, n_embd=48, n_ff=80, n_head=2, n_head_kv=1, head_dim=24,
                  n_vocab=97, tied=False)
    cases = [
        ("tiny", tiny, 42, "f32"),
        ("tiny-gqa3", gqa3, 7, "f32"),
        ('{"n_layer":1,"n_embd":48,"n_ff":80,"n_head":2,"n_head_kv":1,"n_vocab":97,'
         '"tied_output":false,"dtype":"bf16"}', custom, 3, "bf16"),
        ('{"n_layer":1,"n_embd":48,"n_ff":80,"n_head":2,"n_head_kv":1,"n_vocab":97,'
         '"tied_output":false,"dtype":"f16"}', custom, 3, "f16"),
    ]
    out = []
    for shape, hp, seed, dtype in cases:
        tensors = {name: hashlib.sha256(dummy_tensor(name, ne0, ne1, seed, dtype)).hexdigest()
                   for name, ne0, ne1 in dummy_shapes(hp)}
        out.append({"shape": shape, "seed": seed, "tensors": tensors})
    with open(f"{GOLDEN}/dummy_ref.json", "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    dequant_vectors()
    dummy_ref()
    if len(sys.argv) > 1:
        default_model_rows(sys.argv[1])
