#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build, fetch the
# default model, and run what pdserve can do today with it.
#
#   ./deploy/quickstart.sh
#
# Today: the model is loaded, validated and described (architecture, tensor
# types and sizes, fingerprint). Text generation and the prefilld/decoded pair
# join this script as they land.
set -euo pipefail
cd "$(dirname "$0")/.."

./deploy/install-deps.sh
if [ ! -f build/build.ninja ]; then
    meson setup build --buildtype=release >/dev/null
fi
ninja -C build >/dev/null
model=$(./deploy/fetch-model.sh)
echo "== pdserve-inspect $model"
./build/common/tools/pdserve-inspect "$model"
