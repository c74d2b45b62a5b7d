#!/usr/bin/env bash
# deploy/bundle.sh end to end: pack this build, unpack it in a temporary
# folder, run programs from there with an empty environment (relocation, and
# the libraries come from the bundle), and run the bundle's check.sh, which on
# a machine without a GPU must stop at the GPU step with a clear reason.
#
#   tests/gpu/test_bundle.sh SRCDIR BUILDDIR
set -euo pipefail
src="$1"
build="$2"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# with PyPI's CUDA UCX beside the build's, where the test venv has it
# (deploy/install-deps.sh), as the GPU session's bundle is made
venv="${PDSERVE_VENV:-${HOME}/.cache/pdserve/venv}"
wheel="$("$venv/bin/python" -c 'import importlib.util, os
s = importlib.util.find_spec("libucx")
print(os.path.join(os.path.dirname(s.origin), "lib") if s and s.origin else "")' 2>/dev/null || true)"
extra=()
[ -n "$wheel" ] && [ -e "$wheel/ucx/libuct_cuda.so.0" ] && extra=(--ucx-cuda "$wheel")
if ! "$src/deploy/bundle.sh" --build "$build" --out "$tmp" "${extra[@]}" > "$tmp/bundle.out" 2>&1; then
    cat "$tmp/bundle.out" >&2
    fail "bundle.sh failed"
fi
cat "$tmp/bundle.out"
tarball="$(tail -n 1 "$tmp/bundle.out")"
[ -f "$tarball" ] || fail "bundle.sh did not print the tarball's path last"
size="$(stat -c %s "$tarball")"
[ "$size" -le $((32 * 1024 * 1024)) ] || fail "$tarball is $size bytes, over 32 MiB"

mkdir "$tmp/unpacked"
tar -xf "$tarball" -C "$tmp/unpacked"
root="$(echo "$tmp"/unpacked/pdserve-*)"
[ -x "$root/bin/pdserve-env" ] || fail "no bin/pdserve-env in the bundle"
version="$(sed -n 's/^#define PD_VERSION "\(.*\)"$/\1/p' "$build/common/base/pd_config.h")"

# relocation: nothing from this shell's environment, run from elsewhere
got="$(cd / && env -i "$root/bin/pdserve-inspect" --version)"
[ "$got" = "pdserve-inspect $version" ] || fail "pdserve-inspect --version printed '$got'"
got="$(cd "$tmp" && env -i "$root/bin/pdserve-env" pdserve-generate --version)"
[ "$got" = "pdserve-generate $version" ] || fail "pdserve-generate --version printed '$got'"
echo "ok: --version from the unpacked bundle with env -i"

# the libraries a program loads come from the bundle's lib/
libs="$(env -i "$root/bin/pdserve-env" /usr/bin/ldd "$root/libexec/pdserve-generate")"
for l in libsodium libcjson libopenblas; do
    echo "$libs" | grep -q "$l.* => $root/lib/" || fail "$l does not resolve into $root/lib: $libs"
done
echo "ok: libsodium, cJSON, OpenBLAS resolve into the bundle"
# a real run on the bundled OpenBLAS
env -i "$root/bin/pdserve-generate" --load-format dummy --model-shape tiny --prompt-ids 5,6 -n 2 \
    > "$tmp/gen.out" 2>&1 || { cat "$tmp/gen.out" >&2; fail "pdserve-generate from the bundle failed"; }
echo "ok: pdserve-generate runs from the bundle"

# the second UCX: loaded where asked (a GPU node: /dev/nvidiactl), the build's otherwise
if [ ${#extra[@]} -gt 0 ] && [ -x "$root/libexec/prefilld" ]; then
    [ -e "$root/lib/ucx-cuda/libucp.so.0" ] && [ -e "$root/lib/ucx-cuda/ucx/libuct_cuda.so.0" ] ||
        fail "--ucx-cuda left no lib/ucx-cuda/ with its CUDA transport"
    grep -q "^ucx: .*lib/ucx-cuda: .*takes CUDA memory" "$root/BUILDINFO" || fail "BUILDINFO names no CUDA UCX"
    got="$(env -i PD_UCX=cuda "$root/bin/pdserve-env" /usr/bin/ldd "$root/libexec/prefilld")"
    echo "$got" | grep -q "libucp.so.0 => $root/lib/ucx-cuda/" || fail "PD_UCX=cuda: libucp is not the bundle's CUDA UCX: $got"
    got="$(env -i PD_UCX=host "$root/bin/pdserve-env" /usr/bin/ldd "$root/libexec/prefilld")"
    echo "$got" | grep -q "libucp.so.0 => $root/lib/libucp" || fail "PD_UCX=host: libucp is not the build's: $got"
    echo "ok: the bundle's CUDA UCX is loaded with PD_UCX=cuda, the build's with PD_UCX=host"
fi

# check.sh: where there is a GPU it would run the whole check (minutes), so
# only the no-GPU path is tested here
if [ -x "$root/libexec/attn_bench" ] && env -i "$root/bin/pdserve-env" attn_bench --probe > /dev/null 2>&1; then
    echo "a GPU is present: not running check.sh here (run it by hand: $root/tests/gpu/check.sh)"
    exit 0
fi
rc=0
(cd "$tmp" && OUT="$tmp/check-out" "$root/tests/gpu/check.sh") > "$tmp/check.out" 2>&1 || rc=$?
cat "$tmp/check.out"
[ "$rc" -eq 2 ] || fail "check.sh without a GPU exited $rc, not 2"
grep -q "no usable GPU here\|built without CUDA" "$tmp/check.out" || fail "check.sh did not say why it stopped"
if [ -x "$root/libexec/attn_bench" ]; then
    grep -q "no CUDA d" "$tmp/check.out" || fail "check.sh did not give the probe's reason"
fi
tail -n 8 "$tmp/check.out" | grep -q "^step " || fail "check.sh did not end with its table"
[ -s "$tmp/check-out/check.log" ] || fail "check.sh wrote no log under \$OUT"
echo "ok: check.sh stops at the GPU step with the reason"
