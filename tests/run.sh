#!/usr/bin/env bash
# Every test suite on a fresh machine: install what is missing, build, fetch
# the default model, run unit, kernels, integration and fuzz-corpus suites.
#
#   ./tests/run.sh                  # all suites in ./build
#   BUILD=build-x ./tests/run.sh    # another build directory
#   ./tests/run.sh --suite unit     # extra arguments go to `meson test`
#
# Exit status is non-zero on any failure. The last line is
# "N passed, N failed, N skipped" (skips are tests that exit 77 with a reason,
# e.g. GPU tests on a machine without a GPU; they are never counted as passes).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD="${BUILD:-build}"
./deploy/install-deps.sh
# test_hooks: the daemons' test-only hooks (prefilld --test-tamper-every), which
# the integration suite needs; a build without them skips those tests (77)
if [ ! -f "$BUILD/build.ninja" ]; then
    meson setup "$BUILD" -Dwerror=true -Dtest_hooks=true ${MESON_ARGS:-} >/dev/null
else
    # a build set up before the option existed must be reconfigured first
    meson configure "$BUILD" -Dtest_hooks=true >/dev/null 2>&1 ||
        meson setup --reconfigure "$BUILD" -Dtest_hooks=true >/dev/null
fi
ninja -C "$BUILD" >/dev/null
PDSERVE_MODEL="$(./deploy/fetch-model.sh)"
export PDSERVE_MODEL
# the default model as a Hugging Face checkpoint (bf16), for the checkpoint
# tests: transformers' conversion reproduced bit for bit from the GGUF and
# checked tensor by tensor against its SHA-256s (a few seconds; kept)
PDSERVE_HF_MODEL="${PDSERVE_HF_MODEL:-${HOME}/.cache/pdserve/hf/smollm2-135m-instruct}"
"${PDSERVE_VENV:-${HOME}/.cache/pdserve/venv}/bin/python" tests/golden/make_smollm2_checkpoint.py \
    "$PDSERVE_MODEL" "$PDSERVE_HF_MODEL" >&2
export PDSERVE_HF_MODEL

rc=0
meson test -C "$BUILD" --no-rebuild --print-errorlogs "$@" || rc=$?

# Summarise from meson's own log: one line that a person and CI can read.
python3 - "$BUILD/meson-logs/testlog.json" <<'PY'
import json, sys
counts = {"OK": 0, "FAIL": 0, "SKIP": 0, "TIMEOUT": 0, "EXPECTEDFAIL": 0, "UNEXPECTEDPASS": 0, "ERROR": 0}
with open(sys.argv[1]) as f:
    for line in f:
        r = json.loads(line).get("result", "ERROR")
        counts[r] = counts.get(r, 0) + 1
failed = counts["FAIL"] + counts["TIMEOUT"] + counts["UNEXPECTEDPASS"] + counts["ERROR"]
print(f"{counts['OK'] + counts['EXPECTEDFAIL']} passed, {failed} failed, {counts['SKIP']} skipped")
PY
exit $rc
