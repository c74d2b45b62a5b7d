#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build, fetch the
# default model, and run what pdserve can do today with it.
#
#   ./deploy/quickstart.sh
#
# Today: the model is loaded, validated and described (architecture, tensor
# types and sizes, fingerprint); then decoded serves it on loopback and answers
# one chat completion. The prefilld/decoded pair joins this script when it
# lands.
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

# decoded on loopback: one chat completion through the OpenAI-compatible API,
# then a clean stop (SIGTERM drains and exits 0). Ports: $PDSERVE_QS_PORT
# (default 8000) and the next one for /metrics.
port="${PDSERVE_QS_PORT:-8000}"
echo "== decoded on 127.0.0.1:$port"
./build/decoded/decoded "$model" --host 127.0.0.1 --port "$port" \
    --admin-host 127.0.0.1 --admin-port "$((port + 1))" --served-model-name smollm2 \
    --max-model-len 2048 --kv-cache-memory 256MiB --log-level warning &
decoded_pid=$!
trap 'kill "$decoded_pid" 2>/dev/null || true' EXIT
for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    kill -0 "$decoded_pid" 2>/dev/null || { echo "decoded did not start" >&2; exit 1; }
    sleep 0.1
done
question="What is the capital of France?"
echo "user: $question"
reply=$(curl -sS --max-time 120 "http://127.0.0.1:$port/v1/chat/completions" \
    -H "Content-Type: application/json" \
    -d "{\"model\":\"smollm2\",\"messages\":[{\"role\":\"user\",\"content\":\"$question\"}],\"max_tokens\":48,\"temperature\":0}")
printf 'assistant: %s\n' "$(python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])' <<<"$reply")"
kill -TERM "$decoded_pid"
rc=0
wait "$decoded_pid" || rc=$?
trap - EXIT
[ "$rc" -eq 0 ] || { echo "decoded exited with $rc" >&2; exit 1; }
echo "== decoded stopped cleanly"
