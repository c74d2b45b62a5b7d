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

if ! "$src/deploy/bundle.sh" --build "$build" --out "$tmp" > "$tmp/bundle.out" 2>&1; then
    cat "$tmp/bundle.out" >&2
    fail "bundle.sh failed"
fi
cat "$tmp/bundle.out"
tarball="$(tail -n 1 "$tmp/bundle.out")"
[ -f "$tarball" ] || fail "bundle.sh did not print the tarball's path last"
size="$(stat -c %s "$tarball")"
[ "$size" -le $((25 * 1024 * 1024)) ] || fail "$tarball is $size bytes, over 25 MiB"

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
