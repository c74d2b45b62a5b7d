#!/usr/bin/env python3
"""The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) as a Hugging Face
checkpoint, and float64 goldens of that checkpoint, for the checkpoint-directory
loader (issue 26). The checkpoint (~270 MB) is not committed: the test suite
rebuilds it bit for bit, without torch, with make_smollm2_checkpoint.py and checks
it against the manifest this script writes.

Run by hand from the repo root in the golden venv (see make_engine_golden.py):

    ~/.cache/pdserve/golden-venv/bin/python tests/golden/make_hf_smollm2.py \\
        ~/.cache/pdserve/SmolLM2-135M-Instruct.Q4_1.gguf

transformers loads the GGUF (dequantized to float32, Q/K rows un-permuted), the
model is cast to bfloat16 and saved with save_pretrained into
    ~/.cache/pdserve/hf/smollm2-135m-instruct/            (config, generation config, weights)
    ~/.cache/pdserve/hf/smollm2-135m-instruct-tokenizer/  (the tokenizer transformers builds)
and the committed outputs are
    tests/golden/hf/smollm2.manifest.json     SHA-256, dtype and shape of every tensor's
                                              raw bytes, SHA-256 of the two JSON files
    tests/golden/hf/smollm2/config.json, generation_config.json
    tests/golden/engine_hf-smollm2.bin        ("PDGL" v1, make_engine_golden.py's text prompts)
    tests/golden/greedy_hf-smollm2.bin        ("PDGG" v1, make_greedy_golden.py's prompts)
the goldens from the saved bfloat16 checkpoint reloaded in float64.
"""
import hashlib
import json
import os
import shutil
import struct
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_engine_golden  # noqa: E402  (asserts transformers 4.47.1)
import make_greedy_golden  # noqa: E402
from make_hf_models import enable_f64, write_engine_golden, write_greedy_golden  # noqa: E402
from make_smollm2_checkpoint import sha256_file  # noqa: E402

CKPT = os.path.expanduser("~/.cache/pdserve/hf/smollm2-135m-instruct")
TOKDIR = os.path.expanduser("~/.cache/pdserve/hf/smollm2-135m-instruct-tokenizer")
NAME_OR_PATH = "HuggingFaceTB/SmolLM2-135M-Instruct"
COMMITTED = "tests/golden/hf/smollm2"
MANIFEST = "tests/golden/hf/smollm2.manifest.json"
JSON_FILES = ("config.json", "generation_config.json")


def safetensors_tensors(path):
    """(name, dtype, shape, sha256 of the raw bytes) in the file's data order,
    from the header, without the safetensors package."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        header.pop("__metadata__", None)
        out = []
        for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            a, b = t["data_offsets"]
            f.seek(base + a)
            out.append((name, t["dtype"], t["shape"], hashlib.sha256(f.read(b - a)).hexdigest()))
    return out


def write_manifest(gguf_path):
    index = os.path.join(CKPT, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for fn in files:
        for name, dtype, shape, digest in safetensors_tensors(os.path.join(CKPT, fn)):
            tensors[name] = {"file": fn, "dtype": dtype, "shape": shape, "sha256": digest}
    man = {
        "source": os.path.basename(gguf_path),
        "source_sha256": sha256_file(gguf_path),
        "made_by": "transformers 4.47.1 from_pretrained(gguf_file=) -> bfloat16 -> save_pretrained",
        "json_sha256": {j: sha256_file(os.path.join(CKPT, j)) for j in JSON_FILES},
        "tensors": tensors,
    }
    with open(MANIFEST, "w") as f:
        json.dump(man, f, indent=1)
        f.write("\n")
    os.makedirs(COMMITTED, exist_ok=True)
    for j in JSON_FILES:
        shutil.copyfile(os.path.join(CKPT, j), os.path.join(COMMITTED, j))
    print(f"{MANIFEST}: {len(tensors)} tensors in {files}", file=sys.stderr)


def main():
    gguf_path = os.path.abspath(sys.argv[1])
    d, f = os.path.split(gguf_path)
    torch.set_num_threads(os.cpu_count() or 1)

    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    model = model.to(torch.bfloat16)
    model.config._name_or_path = NAME_OR_PATH  # not the local path of the GGUF
    for p in (CKPT, TOKDIR):
        if os.path.isdir(p):
            shutil.rmtree(p)
    model.save_pretrained(CKPT, safe_serialization=True)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    tok.save_pretrained(TOKDIR)
    stored = {k: v.clone() for k, v in model.state_dict().items()}
    del model
    write_manifest(gguf_path)

    enable_f64()
    model, info = AutoModelForCausalLM.from_pretrained(
        CKPT, torch_dtype=torch.float64, attn_implementation="eager", output_loading_info=True)
    model.eval()
    assert not any(info.values()), info
    for k, v in model.state_dict().items():
        assert torch.equal(v, stored[k].to(torch.float64)), k
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    prompts = make_engine_golden.prompts_for("default", model.config.vocab_size, tok)
    et, er = write_engine_golden(model, prompts, "tests/golden/engine_hf-smollm2.bin")
    gp = [tok(t, add_special_tokens=False)["input_ids"] for t in make_greedy_golden.PROMPTS]
    gt, gs, gens = write_greedy_golden(model, gp, make_greedy_golden.N_GEN,
                                       "tests/golden/greedy_hf-smollm2.bin")
    for ids, g in zip(gp, gens):
        print(repr(tok.decode(g))[:100], file=sys.stderr)
    print(f"smollm2: near-ties: greedy {gt}/{gs}, engine rows {et}/{er}", file=sys.stderr)


if __name__ == "__main__":
    main()
