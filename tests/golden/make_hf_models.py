#!/usr/bin/env python3
"""Tiny Hugging Face checkpoints (tests/golden/hf/<name>/) and float64 goldens of
them from transformers, for the checkpoint-directory loader (issue 26).

Not run by the test suite (it needs torch); run by hand from the repo root in the
golden venv (see make_engine_golden.py; transformers 4.47.1). Qwen3 is newer than
4.47.1, so the qwen3 model is built in a child process that puts transformers
4.51.3 (the first minor release with Qwen3) ahead of the venv's own:

    ~/.cache/pdserve/golden-venv/bin/pip install --no-deps \\
        --target ~/.cache/pdserve/transformers-4.51.3 transformers==4.51.3
    ~/.cache/pdserve/golden-venv/bin/python tests/golden/make_hf_models.py [NAME...]

Each model is made from a fixed seed, saved with save_pretrained (safetensors),
reloaded from disk in float64, checked against an independent numpy float64
forward pass, and then written as
    tests/golden/engine_hf-<name>.bin  ("PDGL" v1, the format of make_engine_golden.py)
    tests/golden/greedy_hf-<name>.bin  ("PDGG" v1, the format of make_greedy_golden.py)
Prompts are token ids drawn from a fixed numpy seed (the models have no tokenizer).

Float64 throughout: transformers computes the rotary angles, RMSNorm and the
attention softmax in float32 whatever the model's dtype; enable_f64() patches all
three (see there).
"""
import json
import math
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, DynamicCache

HF_DIR = "tests/golden/hf"
GOLDEN_DIR = "tests/golden"
QWEN3_TRANSFORMERS = os.path.expanduser("~/.cache/pdserve/transformers-4.51.3")
TOPK = 64
LENGTHS = [1, 3, 8, 17, 42, 100, 201]  # make_engine_golden.py's, capped
GREEDY_LENGTHS = [1, 2, 4, 7, 11, 16, 24, 33]  # 8 prompts
N_GEN = 32
NEAR_TIE = 1e-3  # DESIGN.md's near-tie rule: top-2 gap < NEAR_TIE * max|logit|
INIT_RANGE = 0.1  # std of every matrix and bias; RMSNorm weights are 1 + 0.1 N(0,1)

MODELS = {
    "llama31": dict(
        seed=31, arch="LlamaForCausalLM", dtype=torch.float32, shard=None,
        config=dict(hidden_size=128, intermediate_size=192, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                    vocab_size=512, rope_theta=500000.0,
                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8192},
                    max_position_embeddings=131072, rms_norm_eps=1e-5,
                    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
        # Llama 3 style: config.json says one eos, generation_config.json two
        generation=dict(bos_token_id=1, eos_token_id=[2, 3])),
    "qwen2": dict(
        seed=2, arch="Qwen2ForCausalLM", dtype=torch.bfloat16, shard=None,
        config=dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                    rope_theta=1000000.0, max_position_embeddings=32768, rms_norm_eps=1e-6,
                    tie_word_embeddings=True, use_sliding_window=False,
                    bos_token_id=1, eos_token_id=2)),
    "qwen3": dict(
        seed=5, arch="Qwen3ForCausalLM", dtype=torch.float16, shard=None,
        config=dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                    vocab_size=512, rope_theta=1000000.0, max_position_embeddings=40960,
                    rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False,
                    use_sliding_window=False, sliding_window=None,
                    bos_token_id=1, eos_token_id=2)),
    "mistral": dict(
        seed=7, arch="MistralForCausalLM", dtype=torch.bfloat16, shard="400KB",
        config=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                    vocab_size=512, sliding_window=4096, rope_theta=1000000.0,
                    max_position_embeddings=32768, rms_norm_eps=1e-5,
                    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)),
}


# ---------------------------------------------------------------- float64 patches

def rope_inv_freq_f64(rope_theta, dim, rope_scaling):
    """transformers' inverse frequencies ('default' and 'llama3' rope types), in
    float64 (upstream computes them in float32)."""
    rs = rope_scaling or {}
    rtype = rs.get("rope_type", rs.get("type", "default"))
    inv = 1.0 / (rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    if rtype == "default":
        return inv
    if rtype != "llama3":
        raise NotImplementedError(f"rope_type {rtype}")
    factor = rs["factor"]
    lo, hi = rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    low_wl, high_wl = old / lo, old / hi
    wavelen = 2 * math.pi / inv
    inv_l = torch.where(wavelen > low_wl, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
    medium = ~(wavelen < high_wl) * ~(wavelen > low_wl)
    return torch.where(medium, smoothed, inv_l)


def _module_inv_freq_f64(mod):
    inv = getattr(mod, "_pd_inv_freq_f64", None)
    if inv is not None:
        return inv
    if getattr(mod, "config", None) is not None:  # Llama, Qwen2 (4.47.1), Qwen3 (4.51.3)
        cfg = mod.config
        inv = rope_inv_freq_f64(cfg.rope_theta, mod.inv_freq.shape[0] * 2, cfg.rope_scaling)
        assert mod.attention_scaling == 1.0, mod.attention_scaling
    else:  # MistralRotaryEmbedding in 4.47.1 keeps dim and base itself
        inv = rope_inv_freq_f64(mod.base, mod.dim, None)
    # same frequencies as upstream's float32 buffer, to float32 rounding
    up = mod.inv_freq.to(torch.float64)
    assert torch.allclose(inv, up, rtol=1e-6, atol=0), (inv, up)
    mod._pd_inv_freq_f64 = inv
    return inv


def rotary_forward_f64(self, x, position_ids):
    """<Arch>RotaryEmbedding.forward with the angles in float64 (rope scaling
    included; make_engine_golden.py's version knows no scaling)."""
    inv = _module_inv_freq_f64(self)
    freqs = position_ids[:, :, None].to(torch.float64) * inv[None, None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rmsnorm_forward_f64(self, hidden_states):
    """<Arch>RMSNorm.forward without its cast to float32."""
    assert hidden_states.dtype == torch.float64
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


_softmax = torch.nn.functional.softmax


def softmax_f64(input, dim=None, _stacklevel=3, dtype=None):
    """Eager attention calls softmax(..., dtype=torch.float32): keep float64."""
    if dtype == torch.float32 and input.dtype == torch.float64:
        dtype = torch.float64
    return _softmax(input, dim=dim, _stacklevel=_stacklevel, dtype=dtype)


def enable_f64():
    import importlib
    for arch in ("llama", "qwen2", "mistral", "qwen3"):
        try:
            m = importlib.import_module(f"transformers.models.{arch}.modeling_{arch}")
        except ImportError:
            continue
        for attr in dir(m):
            cls = getattr(m, attr)
            if not isinstance(cls, type) or cls.__module__ != m.__name__:
                continue
            if attr.endswith("RotaryEmbedding"):
                cls.forward = rotary_forward_f64
            elif attr.endswith("RMSNorm"):
                cls.forward = rmsnorm_forward_f64
    torch.nn.functional.softmax = softmax_f64


# ---------------------------------------------------------------- golden writers

def top2_gap(row):
    t = torch.topk(row, 2).values
    return float(t[0] - t[1]), float(row.abs().max())


def write_engine_golden(model, prompts, out_path):
    """'PDGL' v1, as make_engine_golden.py. Returns (near-tie rows, rows)."""
    n_vocab = model.config.vocab_size
    ties = rows = 0
    with open(out_path, "wb") as o:
        o.write(b"PDGL" + struct.pack("<IIII", 1, n_vocab, len(prompts), TOPK))
        for ids in prompts:
            with torch.no_grad():
                logits = model(torch.tensor([ids]), use_cache=False).logits[0]
            assert logits.dtype == torch.float64 and logits.shape[1] == n_vocab
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
                gap, _ = top2_gap(row)
                ties += gap < NEAR_TIE * mx
                rows += 1
            o.write(logits[-1].numpy().astype("<f4").tobytes())
    return ties, rows


def write_greedy_golden(model, prompts, n_gen, out_path):
    """'PDGG' v1, as make_greedy_golden.py (KV cache on, as there). Returns
    (near-tie steps, steps, generated ids per prompt)."""
    ties = steps = 0
    gens = []
    with open(out_path, "wb") as o:
        o.write(b"PDGG" + struct.pack("<III", 1, len(prompts), n_gen))
        for ids in prompts:
            o.write(struct.pack("<I", len(ids)) + np.asarray(ids, "<i4").tobytes())
            past, inp, gen = DynamicCache(), torch.tensor([ids]), []
            for _ in range(n_gen):
                with torch.no_grad():
                    r = model(inp, past_key_values=past, use_cache=True)
                past = r.past_key_values
                row = r.logits[0, -1]
                assert row.dtype == torch.float64
                nxt = int(torch.argmax(row))
                gap, mx = top2_gap(row)
                o.write(struct.pack("<iff", nxt, gap, mx))
                ties += gap < NEAR_TIE * mx
                steps += 1
                gen.append(nxt)
                inp = torch.tensor([[nxt]])
            gens.append(gen)
    return ties, steps, gens


# ---------------------------------------------------------------- numpy reference

def _rms(x, w, eps):
    return w * (x / np.sqrt((x * x).mean(-1, keepdims=True) + eps))


def numpy_forward(sd, cfg, ids):
    """An independent float64 forward pass of the four architectures (Llama with
    Qwen2's q/k/v biases and Qwen3's per-head q/k RMSNorm), from the state dict."""
    g = lambda k: sd[k]  # noqa: E731
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or cfg["hidden_size"] // H
    eps = cfg["rms_norm_eps"]
    inv = rope_inv_freq_f64(cfg["rope_theta"], d, cfg.get("rope_scaling")).numpy()
    n = len(ids)
    ang = np.arange(n, dtype=np.float64)[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)  # (n, d/2)

    def rope(t):  # t (n, heads, d), halves rotated (rotate_half convention)
        a, b = t[..., : d // 2], t[..., d // 2:]
        c, s = cos[:, None, :], sin[:, None, :]
        return np.concatenate([a * c - b * s, b * c + a * s], -1)

    x = g("model.embed_tokens.weight")[ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms(x, g(p + "input_layernorm.weight"), eps)
        proj = {}
        for t in "qkv":
            y = h @ g(p + f"self_attn.{t}_proj.weight").T
            if p + f"self_attn.{t}_proj.bias" in sd:
                y = y + g(p + f"self_attn.{t}_proj.bias")
            proj[t] = y.reshape(n, -1, d)
        q, k, v = proj["q"], proj["k"], proj["v"]
        if p + "self_attn.q_norm.weight" in sd:
            q = _rms(q, g(p + "self_attn.q_norm.weight"), eps)
            k = _rms(k, g(p + "self_attn.k_norm.weight"), eps)
        q, k = rope(q), rope(k)
        out = np.empty((n, H, d))
        mask = np.triu(np.full((n, n), -np.inf), 1)
        for hh in range(H):
            kh = hh // (H // KV)
            s = q[:, hh] @ k[:, kh].T / math.sqrt(d) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            out[:, hh] = (s / s.sum(-1, keepdims=True)) @ v[:, kh]
        x = x + out.reshape(n, -1) @ g(p + "self_attn.o_proj.weight").T
        h = _rms(x, g(p + "post_attention_layernorm.weight"), eps)
        gate = h @ g(p + "mlp.gate_proj.weight").T
        up = h @ g(p + "mlp.up_proj.weight").T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ g(p + "mlp.down_proj.weight").T
    x = _rms(x, g("model.norm.weight"), eps)
    lm = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    return x @ lm.T


def check_against_numpy(model, ids):
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    ref = numpy_forward(sd, model.config.to_dict(), ids)
    with torch.no_grad():
        got = model(torch.tensor([ids]), use_cache=False).logits[0].numpy()
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert err < 1e-12, f"transformers float64 vs numpy float64: relative error {err:g}"
    return err


# ---------------------------------------------------------------- models

def init_weights(model, seed):
    """Every parameter drawn afresh from one generator: matrices and biases
    N(0, INIT_RANGE) (transformers would zero the biases), RMSNorm weights
    1 + 0.1 N(0,1) (transformers would make them ones)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied lm_head is not listed
            r = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * r)
            else:
                p.copy_(INIT_RANGE * r)


def prompts_for(seed, vocab):
    rng = np.random.default_rng(seed)
    eng = [[int(t) for t in rng.integers(0, vocab, n)] for n in LENGTHS]
    gre = [[int(t) for t in rng.integers(0, vocab, n)] for n in GREEDY_LENGTHS]
    return eng, gre


def build(name):
    spec = MODELS[name]
    out = os.path.join(HF_DIR, name)
    cls = getattr(transformers, spec["arch"])
    torch.manual_seed(spec["seed"])
    config = cls.config_class(initializer_range=INIT_RANGE, **spec["config"])
    model = cls(config)
    init_weights(model, spec["seed"])
    if "generation" in spec:
        for k, v in spec["generation"].items():
            setattr(model.generation_config, k, v)
    model = model.to(spec["dtype"])
    stored = {k: v.clone() for k, v in model.state_dict().items()}
    if os.path.isdir(out):
        shutil.rmtree(out)
    kw = {"max_shard_size": spec["shard"]} if spec["shard"] else {}
    model.save_pretrained(out, safe_serialization=True, **kw)

    # the goldens are of the stored weights: reload them from disk in float64
    model, info = AutoModelForCausalLM.from_pretrained(
        out, torch_dtype=torch.float64, attn_implementation="eager", output_loading_info=True)
    model.eval()
    assert not any(info.values()), info
    for k, v in model.state_dict().items():
        assert torch.equal(v, stored[k].to(torch.float64)), k
    if config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    eng, gre = prompts_for(1000 + spec["seed"], config.vocab_size)
    err = check_against_numpy(model, eng[4])
    et, er = write_engine_golden(model, eng, os.path.join(GOLDEN_DIR, f"engine_hf-{name}.bin"))
    gt, gs, gens = write_greedy_golden(model, gre, N_GEN,
                                       os.path.join(GOLDEN_DIR, f"greedy_hf-{name}.bin"))
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    distinct = np.mean([len(set(g)) for g in gens])
    print(f"{name}: transformers {transformers.__version__}, {size} bytes in {out}, "
          f"numpy check {err:.1e}, near-ties: greedy {gt}/{gs}, engine rows {et}/{er}, "
          f"distinct tokens per greedy continuation {distinct:.1f}/{N_GEN}", file=sys.stderr)


def main():
    names = sys.argv[1:] or list(MODELS)
    for n in names:
        if n not in MODELS:
            sys.exit(f"unknown model {n}; have {', '.join(MODELS)}")
    torch.set_num_threads(os.cpu_count() or 1)
    enable_f64()
    have_qwen3 = hasattr(transformers, "Qwen3ForCausalLM")
    for n in names:
        if MODELS[n]["arch"] == "Qwen3ForCausalLM" and not have_qwen3:
            if not os.path.isdir(os.path.join(QWEN3_TRANSFORMERS, "transformers")):
                sys.exit(f"transformers {transformers.__version__} has no Qwen3: install 4.51.3 "
                         f"into {QWEN3_TRANSFORMERS} (see the docstring)")
            env = dict(os.environ)
            env["PYTHONPATH"] = QWEN3_TRANSFORMERS + os.pathsep + env.get("PYTHONPATH", "")
            subprocess.run([sys.executable, os.path.abspath(__file__), n], env=env, check=True)
            continue
        build(n)


if __name__ == "__main__":
    main()
