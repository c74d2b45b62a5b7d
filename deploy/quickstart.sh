#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build, fetch the
# default model, and run what pdserve can do today with it.
#
#   ./deploy/quickstart.sh
#
# The model is loaded, validated and described (architecture, tensor types
# and sizes, fingerprint); then the prefilld/decoded pair runs on loopback with
# a freshly generated key: decoded answers one chat completion whose prompt
# prefilld computed and shipped over the KV channel, and the metrics say so.
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

# The pair on loopback: a fresh key (prefilld --gen-psk, in a temporary
# directory), prefilld on the KV port, decoded sending it every prompt
# (--local-prefill-max-tokens 0); one chat completion through the
# OpenAI-compatible API, then a clean stop (SIGTERM drains and exits 0).
# Ports: $PDSERVE_QS_PORT (default 8000) for the API and the next one for
# decoded's /metrics; $PDSERVE_QS_KV_PORT (default 14579) and the next one for
# prefilld's KV channel and admin address.
port="${PDSERVE_QS_PORT:-8000}"
kv_port="${PDSERVE_QS_KV_PORT:-14579}"
tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
./build/prefilld/prefilld --gen-psk "$tmp/kv.psk"
echo "== prefilld on 127.0.0.1:$kv_port (KV channel)"
./build/prefilld/prefilld "$model" --kv-ip 127.0.0.1 --kv-port "$kv_port" \
    --admin-host 127.0.0.1 --admin-port "$((kv_port + 1))" --kv-psk-file "$tmp/kv.psk" \
    --max-model-len 2048 --kv-cache-memory 256MiB --log-level warning &
pids+=($!)
echo "== decoded on 127.0.0.1:$port (API), prefilling on 127.0.0.1:$kv_port"
./build/decoded/decoded "$model" --host 127.0.0.1 --port "$port" \
    --admin-host 127.0.0.1 --admin-port "$((port + 1))" --served-model-name smollm2 \
    --max-model-len 2048 --kv-cache-memory 256MiB --log-level warning \
    --prefill "127.0.0.1:$kv_port" --kv-ip 127.0.0.1 --kv-psk-file "$tmp/kv.psk" \
    --local-prefill-max-tokens 0 &
decoded_pid=$!
pids+=("$decoded_pid")
metric() {
    curl -sf "http://127.0.0.1:$((port + 1))/metrics" | awk -v m="$1" 'index($1, m) == 1 { s += $2 } END { print s + 0 }'
}
for _ in $(seq 600); do
    if curl -sf "http://127.0.0.1:$port/health" >/dev/null && [ "$(metric pdserve:kv_peer_up)" = 1 ]; then
        break
    fi
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || { echo "a daemon did not start" >&2; exit 1; }; done
    sleep 0.1
done
[ "$(metric pdserve:kv_peer_up)" = 1 ] || { echo "no KV session between decoded and prefilld" >&2; exit 1; }
question="What is the capital of France?"
echo "user: $question"
reply=$(curl -sS --max-time 120 "http://127.0.0.1:$port/v1/chat/completions" \
    -H "Content-Type: application/json" \
    -d "{\"model\":\"smollm2\",\"messages\":[{\"role\":\"user\",\"content\":\"$question\"}],\"max_tokens\":48,\"temperature\":0}")
printf 'assistant: %s\n' "$(python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])' <<<"$reply")"
remote=$(metric pdserve:remote_prompt_tokens_total)
local_=$(metric 'pdserve:prompt_tokens_total{')
bytes=$(metric pdserve:kv_bytes_received_total)
echo "== prompt prefilled by prefilld: $remote tokens over the KV channel ($bytes bytes verified), $local_ locally"
[ "$remote" != 0 ] && [ "$local_" = 0 ] || { echo "the prompt was not prefilled remotely" >&2; exit 1; }
rc=0
for p in "$decoded_pid" "${pids[0]}"; do
    kill -TERM "$p"
    wait "$p" || rc=$?
done
pids=()
[ "$rc" -eq 0 ] || { echo "a daemon exited with $rc" >&2; exit 1; }
echo "== decoded and prefilld stopped cleanly"
