#!/usr/bin/env python3
"""tokenizer.json test files and their golden ids, from Hugging Face `tokenizers`
(pinned below), for pdserve's tokenizer.json loader (issue 27): byte-level BPE
and SentencePiece-style BPE, each configured as a real checkpoint's
tokenizer.json is.

Not run by the test suite (it needs transformers and tokenizers); run by hand
from the repo root with the golden venv of make_tokenizer_golden.py after
changing the corpus, the vocabularies or the configurations below:

    ~/.cache/pdserve/golden-venv/bin/python tests/golden/make_tokjson_golden.py \\
        ~/.cache/pdserve/SmolLM2-135M-Instruct.Q4_1.gguf [--only NAME[,NAME...]]

--only rewrites just the named configurations (and their goldens), leaving the
other files as they are; a byte-level one other than smollm2 then takes its
vocabulary and merges from the smollm2/tokenizer.json already on disk.

Writes, under tests/golden/tokjson/:
  smollm2/tokenizer.json         what transformers writes for the default model's
  smollm2/tokenizer_config.json  GGUF (AutoTokenizer.from_pretrained(dir,
                                 gguf_file=...).save_pretrained(...)), bytes as
                                 written (tokenizer.model, a copy of the GGUF, and
                                 special_tokens_map.json are dropped). Its oddities
                                 are transformers', kept on purpose: BPE with
                                 byte_fallback/fuse_unk over a byte-level vocab, a
                                 decoder Sequence[ByteFallback, Fuse, Replace("▁",
                                 " "), ByteLevel], BOS <|im_start|> added by a
                                 TemplateProcessing (bos = eos = <|im_start|> in the
                                 config: the GGUF converter's swap).
  llama3/tokenizer.json          the same vocabulary and merges configured as
                                 Llama-3's tokenizer.json: Split(LLAMA3_PATTERN,
                                 isolated) then ByteLevel(use_regex false), BPE
                                 ignore_merges, post-processor Sequence[ByteLevel,
                                 TemplateProcessing] adding BOS "<|endoftext|>" (id 0,
                                 standing in for <|begin_of_text|>), ByteLevel decoder
  smollm2_declared/tokenizer.json  SmolLM2's own configuration (what the GGUF's
                                 tokenizer.ggml.pre = "smollm" names): Digits(individual)
                                 then ByteLevel(use_regex true); no BOS; BPE unk_token
                                 null, so the 21 bytes the vocabulary lacks (0x04,
                                 0x06, 0x13, 0x14, 0x16, 0x1d, 0xc0, 0xc1, 0xf1, 0xf2,
                                 0xf5-0xff) are dropped -- and the pieces either side
                                 then merge ("!\\x04!" is "!!", 10095) -- where the
                                 transformers file (unk "<|endoftext|>", fuse_unk)
                                 gives id 0
  qwen2/tokenizer.json           the same vocabulary and merges configured as
                                 Qwen2/Qwen2.5's tokenizer.json (transformers'
                                 Qwen2Converter): normalizer NFC; Split(QWEN2_PATTERN,
                                 isolated) then ByteLevel(add_prefix_space, trim_offsets,
                                 use_regex all false); BPE unk_token null,
                                 continuing_subword_prefix and end_of_word_suffix ""
                                 (not null: as Qwen2's file), no ignore_merges, no
                                 byte_fallback; post-processor ByteLevel (all false; no
                                 BOS); ByteLevel decoder (all false). NFC is applied
                                 to the text between added tokens, before the Split.
                                 Its ids differ from llama3's only where NFC changes
                                 the text (the vocabulary has no multi-digit piece,
                                 so \\p{N} vs \\p{N}{1,3} changes nothing)
  spm/tokenizer.json             SentencePiece-style BPE over tests/golden/tok_spm.gguf
                                 configured as Llama-2's tokenizer.json ("legacy"):
                                 normalizer Sequence[Prepend("▁"), Replace(" ", "▁")],
                                 no pre-tokenizer, byte_fallback, BOS "<s>", decoder
                                 Sequence[Replace("▁", " "), ByteFallback, Fuse, Strip]
  spm_metaspace/tokenizer.json   the same model as newer SentencePiece conversions
                                 write it: no normalizer, Metaspace(prepend_scheme
                                 "first", split false) pre-tokenizer and decoder. The
                                 Metaspace decoder does not fold byte tokens: <0x0A>
                                 decodes as that text ("dec" on most lines); Llama's
                                 own non-legacy files keep the spm decoder Sequence
  <name>.jsonl                   one line per tokenizer_corpus.jsonl line, same order:
      "ids"      encode(text, add_special_tokens=False): added-token text parsed
                 (the `tokenizers` default)
      "raw"      the same with encode_special_tokens=True (added-token text encoded
                 as plain text, as pdserve's tokenizer_smollm.jsonl "ids" are); only
                 if different from "ids"
      "sp"       encode(text, add_special_tokens=True) (BOS from the post-processor);
                 only if different from "ids". NB: not the "sp" of
                 tokenizer_smollm.jsonl, which means "control tokens parsed"
      "dec"      decode(ids, skip_special_tokens=False); only if not the text itself
      "dec_skip" decode(sp or ids, skip_special_tokens=True); only if different
                 from "dec" (or from the text where "dec" is absent)
      "dec_raw"  decode(raw, skip_special_tokens=False) where "raw" is present;
                 only if not the text itself
      "error"    where tokenizers raised (none at the time of writing)
      texts with a NUL also go as KEY_hex (UTF-8 in hex), as in
      make_tokenizer_golden.py: C JSON strings stop at a NUL
  <name>.meta.json               the sha256 of the tokenizer.json the goldens were
                                 computed from (Tokenizer.from_file of the written
                                 file, so they are of exactly the committed bytes),
                                 the corpus's sha256, library versions, counts

Added tokens (what the C side must match): `tokenizers` extracts every added
token, special or not, from the text before normalization and pre-tokenization,
whatever add_special_tokens says -- add_special_tokens only switches the
post-processor (BOS/EOS). Only Tokenizer.encode_special_tokens = True (transformers'
split_special_tokens=True) makes special added tokens plain text; non-special
added tokens are still extracted then. An added token with normalized=false is
matched in the raw text; the text between added tokens is normalized and
pre-tokenized piece by piece (so Prepend("▁") puts a "▁" after every control
token, whereas Metaspace(prepend_scheme "first") prepends only at offset 0).
decode(skip_special_tokens=True) drops special added tokens only.

The script checks itself against the transformers-based goldens: smollm2's
"ids" (raw) equal tokenizer_smollm.jsonl's "sp" ("ids") on every line,
smollm2_declared's equal "decl_sp"/"decl" there on every text without a byte
the vocabulary lacks (see main()), and spm's equal
tokenizer_spm.jsonl's on its lines (every 3rd corpus line); it fails otherwise.
"""
import json
import os
import shutil
import sys
import tempfile
import unicodedata

import gguf
import tokenizers
from make_smollm2_checkpoint import sha256_file  # (this folder is on sys.path)
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers import AutoTokenizer
from transformers.integrations.ggml import GGUFTokenizerSkeleton

assert transformers.__version__ == "4.47.1", transformers.__version__
assert tokenizers.__version__ == "0.21.4", tokenizers.__version__

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "tokjson")

# Llama-3's pre-tokenizer pattern, as in Meta-Llama-3's tokenizer.json (and
# transformers' TikTokenConverter): digits in runs of 1-3, letters with one
# leading non-letter, and the (?!\S) lookahead that leaves one space to the
# next word.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Qwen2's (and Qwen2.5's), as in their tokenizer.json and transformers 4.47.1's
# models/qwen2/tokenization_qwen2.py PRETOKENIZE_REGEX (= Qwen2Converter's):
# Llama-3's but with single digits (\p{N}, not \p{N}{1,3}).
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def row_text(r, key="text"):
    if key + "_hex" in r:
        return bytes.fromhex(r[key + "_hex"]).decode("utf-8")
    return r[key]


def put_text(rec, key, text):
    """C JSON strings end at a NUL: such texts also go as KEY_hex."""
    rec[key] = text
    if "\0" in text:
        rec[key + "_hex"] = text.encode("utf-8").hex()


def dump(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")


def gguf_array(reader, key):
    return reader.fields[key].contents()


# --- the tokenizer.json files ------------------------------------------------

def write_smollm2(gguf_path):
    """transformers' conversion of the GGUF, as save_pretrained writes it."""
    d, name = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    dst = os.path.join(OUT, "smollm2")
    os.makedirs(dst, exist_ok=True)
    tmp = tempfile.mkdtemp()
    try:
        tok.save_pretrained(tmp)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(os.path.join(tmp, f), os.path.join(dst, f))
    finally:
        shutil.rmtree(tmp)
    return os.path.join(dst, "tokenizer.json")


def byte_level_parts(smollm2_json):
    """Vocabulary, merges and added tokens of the transformers-written file."""
    with open(smollm2_json, encoding="utf-8") as f:
        j = json.load(f)
    vocab = j["model"]["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in j["model"]["merges"]]
    added = sorted(j["added_tokens"], key=lambda a: a["id"])
    return vocab, merges, added


def add_tokens(tok, added):
    tok.add_special_tokens([AddedToken(a["content"], single_word=a["single_word"], lstrip=a["lstrip"],
                                       rstrip=a["rstrip"], normalized=a["normalized"], special=True)
                            for a in added if a["special"]])
    tok.add_tokens([AddedToken(a["content"], single_word=a["single_word"], lstrip=a["lstrip"],
                               rstrip=a["rstrip"], normalized=a["normalized"], special=False)
                    for a in added if not a["special"]])


def save(tok, name, pretty=True):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "tokenizer.json")
    tok.save(path, pretty=pretty)
    return path


def write_llama3(vocab, merges, added):
    tok = Tokenizer(BPE(vocab, merges, fuse_unk=False, byte_fallback=False, ignore_merges=True))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    bos = "<|endoftext|>"
    assert vocab[bos] == 0
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                      special_tokens=[(bos, vocab[bos])])])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    add_tokens(tok, added)
    return save(tok, "llama3")


def write_smollm2_declared(vocab, merges, added):
    tok = Tokenizer(BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    add_tokens(tok, added)
    return save(tok, "smollm2_declared")


def write_qwen2(vocab, merges, added):
    tok = Tokenizer(BPE(vocab, merges, dropout=None, unk_token=None, continuing_subword_prefix="",
                        end_of_word_suffix="", fuse_unk=False, byte_fallback=False, ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    # the bindings' ByteLevel pre-tokenizer takes no trim_offsets argument (it is
    # swallowed by **kwargs) and their ByteLevel decoder takes none at all: the
    # pre-tokenizer's is set as a property, the decoder is read from its JSON
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    byte_level.trim_offsets = False
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False), byte_level])
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    dec = decoders.ByteLevel()
    dec.__setstate__(json.dumps({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                                 "use_regex": False}).encode())
    tok.decoder = dec
    add_tokens(tok, added)
    return save(tok, "qwen2")


def spm_parts(path):
    """tok_spm.gguf's pieces; merges derived from the scores by transformers'
    own GGUF code (the file has none), so the order of tied scores is
    transformers'."""
    r = gguf.GGUFReader(path)
    toks = gguf_array(r, "tokenizer.ggml.tokens")
    scores = gguf_array(r, "tokenizer.ggml.scores")
    types = gguf_array(r, "tokenizer.ggml.token_type")
    unk = toks[r.fields["tokenizer.ggml.unknown_token_id"].contents()]
    bos = toks[r.fields["tokenizer.ggml.bos_token_id"].contents()]
    merges = GGUFTokenizerSkeleton({"tokens": toks, "scores": scores}).merges
    return toks, types, merges, unk, bos


def spm_tokenizer(toks, types, merges, unk, bos):
    vocab = {t: i for i, t in enumerate(toks)}
    tok = Tokenizer(BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    # as Llama-2's file: unk and control pieces special; user-defined pieces
    # (type 4) non-special added tokens, as transformers' SpmConverter adds them
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                            for t, ty in zip(toks, types) if ty in (2, 3)])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t, ty in zip(toks, types) if ty == 4])
    if bos in vocab:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, vocab[bos])])
    return tok


def write_spm(parts):
    tok = spm_tokenizer(*parts)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return save(tok, "spm")


def write_spm_metaspace(parts):
    tok = spm_tokenizer(*parts)
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    return save(tok, "spm_metaspace")


# --- goldens -------------------------------------------------------------------

def record(tok, text):
    rec = {}
    try:
        tok.encode_special_tokens = False
        ids = tok.encode(text, add_special_tokens=False).ids
        sp = tok.encode(text, add_special_tokens=True).ids
        tok.encode_special_tokens = True
        raw = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        rec["ids"] = ids
        if raw != ids:
            rec["raw"] = raw
        if sp != ids:
            rec["sp"] = sp
        dec = tok.decode(ids, skip_special_tokens=False)
        if dec != text:
            put_text(rec, "dec", dec)
        dsk = tok.decode(sp, skip_special_tokens=True)
        if dsk != dec:
            put_text(rec, "dec_skip", dsk)
        if raw != ids:
            draw = tok.decode(raw, skip_special_tokens=False)
            if draw != text:
                put_text(rec, "dec_raw", draw)
    except Exception as e:  # noqa: BLE001 -- recorded, and reported
        tok.encode_special_tokens = False
        rec["error"] = f"{type(e).__name__}: {e}"
    return rec


def golden(name, path, texts, corpus_sha, source):
    tok = Tokenizer.from_file(path)  # the committed bytes, not the object that wrote them
    rows = [record(tok, t) for t in texts]
    dump(os.path.join(OUT, name + ".jsonl"), rows)
    counts = {"lines": len(rows)}
    for k in ("raw", "sp", "dec", "dec_skip", "dec_raw", "error"):
        counts[k] = sum(1 for r in rows if k in r)
    meta = {"tokenizer_json": f"{name}/tokenizer.json", "sha256": sha256_file(path),
            "corpus": "tokenizer_corpus.jsonl", "corpus_sha256": corpus_sha,
            "tokenizers": tokenizers.__version__, "transformers": transformers.__version__,
            "source": source, "counts": counts}
    with open(os.path.join(OUT, name + ".meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"{name}: {counts}")
    return rows


def compare(what, a_rows, b_rows, a_get, b_get):
    n = sum(1 for a, b in zip(a_rows, b_rows) if a_get(a) != b_get(b))
    print(f"  {what}: {n} of {len(b_rows)} lines differ")
    return n


BYTE_LEVEL = {"llama3": write_llama3, "smollm2_declared": write_smollm2_declared, "qwen2": write_qwen2}
SPM = {"spm": write_spm, "spm_metaspace": write_spm_metaspace}
NAMES = ["smollm2", *BYTE_LEVEL, *SPM]


def args():
    a = sys.argv[1:]
    only = NAMES
    if len(a) == 3 and a[1] == "--only":
        only = a[2].split(",")
        if not only or any(n not in NAMES for n in only):
            sys.exit(f"--only takes names from {', '.join(NAMES)}")
    elif len(a) != 1:
        sys.exit(__doc__)
    return a[0], [n for n in NAMES if n in only]


def main():
    gguf_path, names = args()
    corpus_path = os.path.join(HERE, "tokenizer_corpus.jsonl")
    texts = [row_text(r) for r in read_jsonl(corpus_path)]
    corpus_sha = sha256_file(corpus_path)
    os.makedirs(OUT, exist_ok=True)

    smol_src = {"gguf": os.path.basename(gguf_path), "gguf_sha256": sha256_file(gguf_path)}
    paths = {}
    if "smollm2" in names:
        paths["smollm2"] = write_smollm2(gguf_path)
    if any(n in BYTE_LEVEL for n in names):
        # the vocabulary of the smollm2 file just written, or (--only) of the one on disk
        vocab, merges, added = byte_level_parts(paths.get("smollm2", os.path.join(OUT, "smollm2", "tokenizer.json")))
        for n, write in BYTE_LEVEL.items():
            if n in names:
                paths[n] = write(vocab, merges, added)
    spm_gguf = os.path.join(HERE, "tok_spm.gguf")
    spm_src = {"gguf": "tests/golden/tok_spm.gguf", "gguf_sha256": sha256_file(spm_gguf)}
    if any(n in SPM for n in names):
        parts = spm_parts(spm_gguf)
        for n, write in SPM.items():
            if n in names:
                paths[n] = write(parts)

    rows = {}
    for name, path in paths.items():
        rows[name] = golden(name, path, texts, corpus_sha, spm_src if name.startswith("spm") else smol_src)
    for name in NAMES:  # the goldens on disk of the configurations not rewritten (--only)
        if name not in rows:
            rows[name] = read_jsonl(os.path.join(OUT, name + ".jsonl"))

    # added-token text is parsed without add_special_tokens (see the docstring)
    if "smollm2" in paths:
        t = Tokenizer.from_file(paths["smollm2"])
        assert t.encode("a<|im_start|>b", add_special_tokens=False).ids[1] == 1
    if "spm" in paths:
        t = Tokenizer.from_file(paths["spm"])
        assert t.encode("<ctl>", add_special_tokens=False).ids == [t.token_to_id("<ctl>")]

    print("checks against the transformers goldens (expected 0):")
    old = read_jsonl(os.path.join(HERE, "tokenizer_smollm.jsonl"))
    old_spm = read_jsonl(os.path.join(HERE, "tokenizer_spm.jsonl"))
    ids = lambda r: r.get("ids")  # noqa: E731
    raw = lambda r: r.get("raw", r.get("ids"))  # noqa: E731
    bad = 0
    if "smollm2" in paths:
        bad += compare("smollm2 ids vs tokenizer_smollm sp", rows["smollm2"], old,
                       ids, lambda r: r.get("sp", r["ids"]))
        bad += compare("smollm2 raw vs tokenizer_smollm ids", rows["smollm2"], old, raw, lambda r: r["ids"])
    # SmolLM2's own file has unk_token null: a byte its vocabulary lacks (21 of
    # 256: 0x04, 0x06, ...) is dropped, where transformers' GGUF conversion
    # (unk "<|endoftext|>", fuse_unk) writes a 0 -- and with it dropped, the
    # pieces either side may merge ("!\x04!" -> "!!"). The two agree on every
    # line whose text has no such byte.
    decl = lambda r: r.get("decl", r["ids"])  # noqa: E731
    decl_sp = lambda r: r.get("decl_sp", r.get("sp", r["ids"]))  # noqa: E731
    clean = [0 not in decl(r) for r in old]
    pick = lambda rs: [r for r, c in zip(rs, clean) if c]  # noqa: E731
    if "smollm2_declared" in paths:
        bad += compare("smollm2_declared ids vs tokenizer_smollm decl_sp (texts without absent bytes)",
                       pick(rows["smollm2_declared"]), pick(old), ids, decl_sp)
        bad += compare("smollm2_declared raw vs tokenizer_smollm decl (texts without absent bytes)",
                       pick(rows["smollm2_declared"]), pick(old), raw, decl)
        unk = [(a, b) for a, b, c in zip(rows["smollm2_declared"], old, clean) if not c]
        print(f"  (for information) {len(unk)} texts with bytes absent from the vocabulary: raw differs from "
              f"decl on {sum(1 for a, b in unk if raw(a) != decl(b))}, differs from decl without its 0s on "
              f"{sum(1 for a, b in unk if raw(a) != [x for x in decl(b) if x != 0])} (pieces merged across "
              "a dropped byte)")
    if "spm" in paths:
        bad += compare("spm ids vs tokenizer_spm sp", rows["spm"][::3], old_spm, ids,
                       lambda r: r.get("sp", r["ids"]))
        bad += compare("spm raw vs tokenizer_spm ids", rows["spm"][::3], old_spm, raw, lambda r: r["ids"])
    if "smollm2" in paths:
        print("  (for information) smollm2 ids vs tokenizer_smollm ids (control text not parsed): "
              f"{sum(1 for a, b in zip(rows['smollm2'], old) if a['ids'] != b['ids'])} differ")
    print("between configurations (ids):")
    for a, b in [("llama3", "smollm2"), ("smollm2_declared", "smollm2"), ("llama3", "smollm2_declared"),
                 ("qwen2", "llama3"), ("qwen2", "smollm2_declared"), ("spm_metaspace", "spm")]:
        compare(f"{a} vs {b}", rows[a], rows[b], ids, ids)
    print(f"  (for information) NFC changes {sum(1 for t in texts if unicodedata.normalize('NFC', t) != t)} "
          f"of {len(texts)} corpus texts")
    if bad:
        sys.exit("the goldens disagree with the transformers goldens")

if __name__ == "__main__":
    main()
