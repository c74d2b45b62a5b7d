#!/usr/bin/env bash
# common/kvchan/kvx under valgrind: a small send/recv pair (tiny pool, some requests
# failing their integrity check on purpose), both processes under memcheck;
# any definite leak or memory error in either fails the test.
#   kvx_valgrind.sh KVX_PEER SANITIZE
# Exit 77 (skipped) in a sanitizer build (valgrind cannot run ASan binaries)
# or when valgrind is missing (deploy/install-deps.sh installs it).
# No suppression file: UCX 1.13 showed no definite leaks or errors here (its
# known leak, tests/lsan-ucx.supp, needs a peer dead during wire-up, which this
# pair does not do); a future one belongs in tests/integration/kvx_valgrind.supp,
# scoped to UCX frames.
set -u
peer="$1"
sanitize="${2:-none}"
if [ "$sanitize" != "none" ]; then
    echo "skip: sanitizer build ($sanitize); valgrind runs in the plain build"
    exit 77
fi
if ! command -v valgrind >/dev/null; then
    echo "skip: valgrind is not installed; run ./deploy/install-deps.sh"
    exit 77
fi
dir=$(mktemp -d)
spid=
cleanup() { [ -n "$spid" ] && kill -9 "$spid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
python3 - "$dir/k.psk" <<'PY'
import os, sys
with open(sys.argv[1], "w") as f:
    f.write("k1 " + os.urandom(32).hex() + "\n")
os.chmod(sys.argv[1], 0o600)
PY
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
lo=$(( (RANDOM % 250) * 100 + 30000 ))
vg=(valgrind -q --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite
    --error-exitcode=99 --num-callers=30)
"${vg[@]}" "$peer" --role send --kv-ip 127.0.0.1 --kv-port "$port" \
    --kv-data-ports "$lo-$((lo + 49))" --psk-file "$dir/k.psk" --tamper 5 \
    >"$dir/send.out" 2>"$dir/send.err" &
spid=$!
for _ in $(seq 1 300); do
    grep -q '^listening' "$dir/send.out" 2>/dev/null && break
    sleep 0.1
done
"${vg[@]}" "$peer" --role recv --connect "127.0.0.1:$port" --kv-ip 127.0.0.1 \
    --kv-data-ports "$((lo + 50))-$((lo + 99))" --psk-file "$dir/k.psk" \
    --requests 30 --inflight 4 --expect-tamper 5 >"$dir/recv.out" 2>"$dir/recv.err"
rrc=$?
kill -TERM "$spid"
wait "$spid"
src=$?
spid=
cat "$dir/recv.out" "$dir/send.out"
grep -v 'SHM_HUGETLB' "$dir/recv.err" "$dir/send.err"
echo "receiver exit $rrc, sender exit $src"
[ "$rrc" -eq 0 ] && [ "$src" -eq 0 ]
