"""The default model served for the constrained-decoding tests
(test_decoded_json.py, test_decoded_schema.py): decoded's arguments, a
prefilld + decoded pair prefilling every prompt on the peer (module
fixtures `d` and `pair`, imported by the tests), and the official clients.
The tests skip before importing this when the model is absent."""
import contextlib
import os

import openai
import pytest

from harness import Decoded, Prefilld, default_model, wait_for, write_key

MODEL_PATH = default_model()
NAME = "smollm2"


def decoded_args():
    return ("--served-model-name", NAME, "--max-model-len", "2048",
            "--kv-cache-memory", "256MiB")


@contextlib.contextmanager
def disagg_pair(tmp_path):
    """A prefilld and a decoded prefilling every prompt on it, the session up."""
    psk = write_key(tmp_path / "k.psk")
    with Prefilld("--model", MODEL_PATH, "--kv-cache-memory", "256MiB", psk=psk) as p, \
            Decoded("--model", MODEL_PATH, *decoded_args(), "--kv-psk-file", psk,
                    "--prefill", p.addr, "--local-prefill-max-tokens", "0",
                    "--prefill-timeout-ms", "120000") as a:
        wait_for(lambda: "KV session up" in a.log(), 60, "a KV session")
        yield p, a


@pytest.fixture(scope="module")
def d():
    with Decoded(MODEL_PATH, *decoded_args()) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    if not os.environ.get("PREFILLD"):
        pytest.skip("set PREFILLD to the prefilld binary")
    with disagg_pair(tmp_path_factory.mktemp("pair")) as pa:
        yield pa
        p, a = pa
        # every prompt went to the peer
        assert a.metric("pdserve:remote_prompt_tokens_total") > 0
        assert a.metric("pdserve:prompt_tokens_total") == 0


def sync_client(daemon, timeout=300):
    return openai.OpenAI(base_url=daemon.base_url, api_key="unused", max_retries=0,
                         timeout=timeout)


def async_client(daemon, timeout=300):
    return openai.AsyncOpenAI(base_url=daemon.base_url, api_key="unused", max_retries=0,
                              timeout=timeout)
