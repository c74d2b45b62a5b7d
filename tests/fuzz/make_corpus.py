#!/usr/bin/env python3
"""Writes the seed corpus for fuzz_gguf with the `gguf` package's writer (an
independent producer of valid files). Run from the repo root with the test venv:

    ~/.cache/pdserve/venv/bin/python tests/fuzz/make_corpus.py

Seeds are small on purpose: libFuzzer mutates them, the replay test runs them.
"""
import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFWriter
from gguf.quants import quantize

OUT = "tests/fuzz/corpus/gguf"


def every_value_type():
    w = GGUFWriter(f"{OUT}/seed-kv-types.gguf", "llama")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_float32("t.f32", 1.5)
    w.add_uint64("t.u64", 1 << 40)
    w.add_int64("t.i64", -(1 << 40))
    w.add_float64("t.f64", -2.25)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_array("t.arr_str", ["a", "", "ccc"])
    w.add_array("t.arr_int", [1, -2, 3])
    w.add_array("t.arr_f", [0.5, 1.5])
    w.add_tensor("a.weight", np.arange(8, dtype=np.float32))
    w.add_tensor("b.weight", np.ones((2, 4), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tiny_llama(name, qtype):
    n_embd, n_ff, n_head, n_kv, n_vocab = 32, 64, 2, 1, 16
    hd = n_embd // n_head
    rng = np.random.default_rng(1)
    w = GGUFWriter(f"{OUT}/{name}", "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)

    def mat(tname, rows, cols):
        x = rng.standard_normal((rows, cols)).astype(np.float32)
        if qtype == QT.F32:
            w.add_tensor(tname, x)
        else:
            q = quantize(x, qtype)
            w.add_tensor(tname, q, raw_shape=q.shape, raw_dtype=qtype)

    mat("token_embd.weight", n_vocab, n_embd)
    w.add_tensor("blk.0.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
    mat("blk.0.attn_q.weight", n_embd, n_embd)
    mat("blk.0.attn_k.weight", n_kv * hd, n_embd)
    mat("blk.0.attn_v.weight", n_kv * hd, n_embd)
    mat("blk.0.attn_output.weight", n_embd, n_embd)
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
    mat("blk.0.ffn_gate.weight", n_ff, n_embd)
    mat("blk.0.ffn_up.weight", n_ff, n_embd)
    mat("blk.0.ffn_down.weight", n_embd, n_ff)
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    every_value_type()
    tiny_llama("seed-llama-f32.gguf", QT.F32)
    tiny_llama("seed-llama-q8_0.gguf", QT.Q8_0)
    tiny_llama("seed-llama-q4_1.gguf", QT.Q4_1)
