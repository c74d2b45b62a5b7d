#!/usr/bin/env python3
"""Rebuild the default model's Hugging Face checkpoint from its GGUF, without
torch, bit for bit as make_hf_smollm2.py has transformers make it, and verify it:

    make_smollm2_checkpoint.py GGUF OUTDIR

Runs in the test venv (gguf, numpy, safetensors; deploy/install-deps.sh). What
transformers 4.47.1 does, redone here:
  - every tensor dequantized to float32 by gguf's own dequantize (transformers
    calls the same function);
  - attn_q / attn_k rows un-permuted (llama.cpp's convert script interleaves the
    two rotary halves of each head; transformers' LlamaTensorProcessor undoes it);
  - GGUF names mapped to Hugging Face names; no lm_head.weight when the GGUF has
    no output.weight (tied embeddings: save_pretrained writes only the embedding);
  - float32 -> bfloat16 rounded to nearest, ties to even, as torch's .to(bfloat16);
  - written by the safetensors package with metadata {"format": "pt"}, as
    save_pretrained does;
and config.json / generation_config.json copied from tests/golden/hf/smollm2/.

Every tensor's SHA-256, dtype and shape, and the two JSON files' SHA-256, are then
checked against tests/golden/hf/smollm2.manifest.json; the first mismatch is named
and the exit status is 1. A verified OUTDIR gets a stamp file, and a later run
whose stamp still matches (manifest, file sizes and mtimes) does nothing.
"""
import hashlib
import json
import os
import re
import shutil
import struct
import sys

import numpy as np
from gguf import GGUFReader, dequantize

HERE = os.path.dirname(os.path.abspath(__file__))
MANIFEST = os.path.join(HERE, "hf", "smollm2.manifest.json")
JSON_DIR = os.path.join(HERE, "hf", "smollm2")
JSON_FILES = ("config.json", "generation_config.json")
STAMP = ".pdserve-checkpoint-stamp"

NAMES = {  # GGUF llama tensor names -> Hugging Face LlamaForCausalLM names
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
BLOCK = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


class Mismatch(Exception):
    pass


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hf_name(name):
    if name in NAMES:
        return NAMES[name]
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", name)
    if not m or m.group(2) not in BLOCK:
        raise Mismatch(f"GGUF tensor {name}: no Hugging Face name for it")
    return f"model.layers.{m.group(1)}.{BLOCK[m.group(2)]}.{m.group(3)}"


def field(reader, key):
    f = reader.fields[key]
    v = f.parts[f.data[0]]
    return bytes(v).decode() if f.types[0].name == "STRING" else v.tolist()[0]


def unpermute(w, n_head):
    """transformers' LlamaTensorProcessor._reverse_permute_weights."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def bf16_bits(a):
    """float32 -> bfloat16 bit patterns, round to nearest even (torch's rounding)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():  # torch's NaN patterns differ between code paths
        raise Mismatch("non-finite weight")
    u = a.view(np.uint32)
    return ((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)).astype(np.uint16)


def checkpoint_tensors(gguf_path):
    """(name, uint16 bfloat16 bits) in the GGUF's order."""
    r = GGUFReader(gguf_path)
    arch = field(r, "general.architecture")
    if arch != "llama":
        raise Mismatch(f"GGUF architecture {arch!r}: only llama is handled")
    n_head = field(r, "llama.attention.head_count")
    n_kv = field(r, "llama.attention.head_count_kv")
    out = []
    for t in r.tensors:
        w = dequantize(t.data, t.tensor_type)
        if ".attn_q." in t.name:
            w = unpermute(w, n_head)
        elif ".attn_k." in t.name:
            w = unpermute(w, n_kv)
        out.append((hf_name(t.name), bf16_bits(w)))
    return out


def write_safetensors(tensors, path):
    import safetensors
    keep = []
    try:
        from safetensors import TensorSpec  # safetensors >= 0.7
        specs = {}
        for name, a in tensors:
            keep.append(a)
            specs[name] = TensorSpec(dtype="bfloat16", shape=list(a.shape),
                                     data_ptr=a.ctypes.data, data_len=a.nbytes)
    except ImportError:
        specs = {name: {"dtype": "bfloat16", "shape": list(a.shape), "data": a.tobytes()}
                 for name, a in tensors}
    safetensors.serialize_file(specs, path, metadata={"format": "pt"})


def read_safetensors(path):
    """{name: (dtype, shape, sha256 of the raw bytes)}, parsed independently."""
    out = {}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            a, b = t["data_offsets"]
            f.seek(8 + n + a)
            out[name] = (t["dtype"], t["shape"], hashlib.sha256(f.read(b - a)).hexdigest())
    return out


def verify(outdir, man):
    files = sorted({t["file"] for t in man["tensors"].values()})
    got = {}
    for fn in files:
        p = os.path.join(outdir, fn)
        if not os.path.exists(p):
            raise Mismatch(f"{fn}: missing")
        for name, v in read_safetensors(p).items():
            got[name] = (fn,) + v
    for name, want in man["tensors"].items():
        if name not in got:
            raise Mismatch(f"tensor {name}: missing")
        fn, dtype, shape, digest = got[name]
        if (fn, dtype, shape) != (want["file"], want["dtype"], want["shape"]):
            raise Mismatch(f"tensor {name}: {fn} {dtype} {shape}, manifest "
                           f"{want['file']} {want['dtype']} {want['shape']}")
        if digest != want["sha256"]:
            raise Mismatch(f"tensor {name}: SHA-256 {digest}, manifest {want['sha256']}")
    extra = sorted(set(got) - set(man["tensors"]))
    if extra:
        raise Mismatch(f"tensor {extra[0]}: not in the manifest")
    for j, want in man["json_sha256"].items():
        p = os.path.join(outdir, j)
        if not os.path.exists(p) or sha256_file(p) != want:
            raise Mismatch(f"{j}: missing or SHA-256 differs from the manifest")
    return files + sorted(man["json_sha256"])


def stamp_of(outdir, files, man_sha):
    st = {f: [os.stat(os.path.join(outdir, f)).st_size,
              os.stat(os.path.join(outdir, f)).st_mtime_ns] for f in files}
    return {"manifest_sha256": man_sha, "files": st}


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: make_smollm2_checkpoint.py GGUF OUTDIR")
    gguf_path, outdir = sys.argv[1], sys.argv[2]
    man_sha = sha256_file(MANIFEST)
    with open(MANIFEST) as f:
        man = json.load(f)
    stamp = os.path.join(outdir, STAMP)
    try:
        with open(stamp) as f:
            old = json.load(f)
        if old == stamp_of(outdir, list(old["files"]), man_sha):
            return 0  # verified before, untouched since
    except (OSError, ValueError, KeyError):
        pass

    try:
        if sha256_file(gguf_path) != man["source_sha256"]:
            raise Mismatch(f"{gguf_path}: not the GGUF the manifest was made from "
                           f"({man['source']}, SHA-256 {man['source_sha256']})")
        files = sorted({t["file"] for t in man["tensors"].values()})
        if files != ["model.safetensors"]:
            raise Mismatch(f"manifest names {files}: only one model.safetensors is handled")
        os.makedirs(outdir, exist_ok=True)
        if os.path.exists(stamp):
            os.remove(stamp)
        tmp = os.path.join(outdir, "model.safetensors.tmp")
        write_safetensors(checkpoint_tensors(gguf_path), tmp)
        os.replace(tmp, os.path.join(outdir, "model.safetensors"))
        for j in JSON_FILES:
            shutil.copyfile(os.path.join(JSON_DIR, j), os.path.join(outdir, j))
        checked = verify(outdir, man)
    except Mismatch as e:
        print(f"make_smollm2_checkpoint: {e}", file=sys.stderr)
        return 1
    with open(stamp, "w") as f:
        json.dump(stamp_of(outdir, checked, man_sha), f)
    print(f"make_smollm2_checkpoint: {outdir}: {len(man['tensors'])} tensors verified",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
