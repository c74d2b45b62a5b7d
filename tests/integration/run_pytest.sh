#!/usr/bin/env bash
# Run one integration test file with the test venv's pytest.
#   run_pytest.sh DECODED_BINARY FILE.py [pytest args]
# Exit 77 (skipped) when the venv lacks pytest/openai (./deploy/install-deps.sh
# installs them) or when every test in the file was skipped; a skip is never
# reported as a pass.
set -u
export DECODED="$1"; shift
file="$1"; shift
venv="${PDSERVE_VENV:-${HOME}/.cache/pdserve/venv}"
py="$venv/bin/python"
if ! "$py" -c "import pytest, openai" 2>/dev/null; then
    echo "skip: $py lacks pytest/openai; run ./deploy/install-deps.sh"
    exit 77
fi
report=$(mktemp)
trap 'rm -f "$report"' EXIT
"$py" -m pytest -q -p no:cacheprovider -rs --junitxml="$report" "$file" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then exit 77; fi
if [ "$rc" -eq 0 ] && "$py" - "$report" <<'PY'
import sys, xml.etree.ElementTree as ET
s = ET.parse(sys.argv[1]).getroot()
s = s if s.tag == "testsuite" else s.find("testsuite")
t, k = int(s.get("tests", 0)), int(s.get("skipped", 0))
sys.exit(0 if t > 0 and t == k else 1)
PY
then
    echo "every test was skipped"
    exit 77
fi
exit "$rc"
