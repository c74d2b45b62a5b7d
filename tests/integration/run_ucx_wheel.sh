#!/usr/bin/env bash
# Run a KV-channel test file (run_pytest.sh's arguments) on PyPI's UCX wheel
# (libucx-cu13, installed in the test venv by deploy/install-deps.sh) instead
# of the system's UCX: the same binaries, the wheel's libraries first on the
# loader's path (docs/operations.md, "Which UCX"). Exit 77 with the reason
# when the venv has no wheel.
set -u
venv="${PDSERVE_VENV:-${HOME}/.cache/pdserve/venv}"
lib=$("$venv/bin/python" - 2>/dev/null <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("libucx")  # finds the package without importing it
if spec and spec.origin:
    print(os.path.join(os.path.dirname(spec.origin), "lib"))
PY
)
if [ -z "$lib" ] || [ ! -e "$lib/libucp.so.0" ]; then
    echo "skip: no libucx-cu13 in $venv (./deploy/install-deps.sh installs it)"
    exit 77
fi
version=$(sed -n 's/^Version: //p' "$lib/pkgconfig/ucx.pc" 2>/dev/null)
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PDSERVE_EXPECT_UCX="${version:-1.}"
echo "UCX from $lib (${version:-version unknown})"
exec "$(dirname "$0")/run_pytest.sh" "$@"
