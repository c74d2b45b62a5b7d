#!/usr/bin/env python3
"""GGUF files of the new architectures from an independent producer: llama.cpp's
own converter (convert_hf_to_gguf.py, from the llama-cpp-python sdist's vendored
llama.cpp) run on the Hugging Face test checkpoints (tests/golden/hf/), so that
the GGUF path of qwen2, qwen3 and Llama-3.1 (rope_freqs.weight) is checked on
files pdserve did not write. Each keeps its checkpoint's weights exactly (its
stored type, or f32), so the checkpoint's goldens (engine_hf-<name>.bin) are its
goldens too: tests/unit/test_checkpoint.c checks them.

Not run by the test suite (it needs torch); by hand, in the golden venv:

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.16 -d /tmp/lcp
    tar -xzf /tmp/lcp/llama_cpp_python-0.3.16.tar.gz -C /tmp/lcp
    ~/.cache/pdserve/golden-venv/bin/python tests/golden/make_hf_gguf.py \\
        /tmp/lcp/llama_cpp_python-0.3.16/vendor/llama.cpp

The test models have no tokenizer, so the converter's vocabulary step is
skipped (set_vocab made a no-op), and the mistral_common package it imports for
Mistral's own tokenizer format (not installed, not used here) is a stand-in;
everything else is the converter's own.
Writes tests/golden/gguf/hf-<name>.gguf.
"""
import importlib.abc
import importlib.machinery
import os
import sys
import types

# name -> the converter's --outtype: the checkpoint's own element type
MODELS = {"llama31": "f32", "qwen2": "bf16", "qwen3": "f16"}


class _Stub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """mistral_common and its submodules as empty modules whose every name is
    a placeholder class: imported by the converter, never called here."""

    def find_spec(self, name, path, target=None):
        if name == "mistral_common" or name.startswith("mistral_common."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        m = types.ModuleType(spec.name)
        m.__path__ = []
        m.__getattr__ = lambda attr: type(attr, (), {})
        return m

    def exec_module(self, module):
        pass


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    lcpp = os.path.abspath(sys.argv[1])
    sys.meta_path.insert(0, _Stub())
    sys.path.insert(0, os.path.join(lcpp, "gguf-py"))
    sys.path.insert(0, lcpp)
    import convert_hf_to_gguf as conv

    for obj in list(vars(conv).values()):
        if isinstance(obj, type) and "set_vocab" in obj.__dict__:
            obj.set_vocab = lambda self: None
    os.makedirs("tests/golden/gguf", exist_ok=True)
    for name, outtype in MODELS.items():
        out = "tests/golden/gguf/hf-%s.gguf" % name
        sys.argv = ["convert_hf_to_gguf.py", "tests/golden/hf/" + name, "--outfile", out,
                    "--outtype", outtype]
        conv.main()
        print("wrote", out, os.path.getsize(out), "bytes")


if __name__ == "__main__":
    main()
