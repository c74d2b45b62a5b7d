#!/usr/bin/env python3
"""Seed corpus for fuzz_tok_json: small tokenizer.json files written by the
`tokenizers` library itself (an independent producer), one per configuration
the loader reads. Run from the repo root with the golden venv:

    ~/.cache/pdserve/golden-venv/bin/python tests/fuzz/make_tok_json_corpus.py

The two SentencePiece-style seeds are copies of tests/golden/tokjson/spm*.
"""
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, \
    processors, trainers

OUT = "tests/fuzz/corpus/tok_json"
TEXT = ["Hello world, 12345 times. caf\u00e9 na\u00efve \U0001F600 <|im_start|>user\n",
        "The quick brown fox jumps over the lazy dog 0123456789 \t tabs  and   spaces"] * 4
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
          r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def byte_level(name, pre, ignore_merges=False, template=False, byte_fallback=False):
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges, byte_fallback=byte_fallback))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT, tr)
    if template:
        tok.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)])
    tok.add_tokens(["plain added"])
    tok.save(f"{OUT}/seed-{name}.json")


def main():
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False)
    byte_level("bytelevel", bl)
    byte_level("digits", pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                  bl]))
    byte_level("llama3", pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        ignore_merges=True, template=True)
    for suffix in ("", "-metaspace"):
        src = f"tests/golden/tokjson/spm{suffix.replace('-', '_')}/tokenizer.json"
        with open(src, "rb") as f, open(f"{OUT}/seed-spm{suffix}.json", "wb") as o:
            o.write(f.read())


if __name__ == "__main__":
    main()
