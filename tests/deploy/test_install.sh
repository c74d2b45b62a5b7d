#!/usr/bin/env bash
# meson install into a DESTDIR stage: every file lands where
# docs/operations.md says, units are configured for the prefix and pass
# `systemd-analyze verify` with no complaint.
#   test_install.sh BUILD_DIR
set -u
build="$1"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
fail=0
bad() { echo "FAIL: $*"; fail=1; }

if ! meson install -C "$build" --no-rebuild --quiet --destdir "$stage" >"$stage.log" 2>&1; then
    cat "$stage.log"; rm -f "$stage.log"; echo "FAIL: meson install"; exit 1
fi
rm -f "$stage.log"
prefix=$(meson introspect "$build" --buildoptions |
         python3 -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"]=="prefix"))')
root="$stage$prefix"
echo "installed tree under DESTDIR (prefix $prefix):"
(cd "$stage" && find . -type f -printf '%m %p\n' | sort)

for f in bin/decoded bin/prefilld bin/pdserve-inspect bin/pdserve-generate; do
    [ -x "$root/$f" ] || bad "$prefix/$f missing or not executable"
done
for f in lib/systemd/system/decoded.service lib/systemd/system/decoded@.service \
         lib/systemd/system/prefilld.service lib/systemd/system/prefilld@.service \
         lib/sysusers.d/pdserve.conf lib/tmpfiles.d/pdserve.conf \
         share/doc/pdserve/examples/decoded.json share/doc/pdserve/examples/prefilld.json \
         share/doc/pdserve/operations.md; do
    [ -f "$root/$f" ] || { bad "$prefix/$f missing"; continue; }
    [ "$(stat -c %a "$root/$f")" = 644 ] || bad "$prefix/$f mode $(stat -c %a "$root/$f"), not 644"
done
if grep -rl '@[a-z]*@' "$root/lib/systemd/system" >/dev/null 2>&1; then
    bad "unconfigured @placeholders@ left in units"
fi
for d in decoded prefilld; do
    grep -q "^ExecStart=$prefix/bin/$d " "$root/lib/systemd/system/$d.service" ||
        bad "$d.service ExecStart does not name $prefix/bin/$d"
    # the example configuration is one the daemon accepts
    "$root/bin/$d" --config "$root/share/doc/pdserve/examples/$d.json" --print-config \
        >/dev/null || bad "$d refuses the example configuration"
done

if command -v systemd-analyze >/dev/null; then
    # verify checks ExecStart= binaries on the real file system: point the
    # copies at the staged ones; any complaint (stderr) is a failure, since
    # verify exits 0 on most of them.
    vdir="$stage/verify"; mkdir -p "$vdir"
    for u in decoded.service decoded@.service prefilld.service prefilld@.service; do
        sed "s|$prefix/bin/|$root/bin/|g" "$root/lib/systemd/system/$u" >"$vdir/$u"
    done
    for u in decoded.service decoded@0.service prefilld.service prefilld@0.service; do
        out=$(systemd-analyze verify --man=no "$vdir/$u" 2>&1); rc=$?
        if [ $rc -ne 0 ] || [ -n "$out" ]; then bad "systemd-analyze verify $u: rc $rc: $out"; fi
    done
    for u in decoded.service decoded@.service prefilld.service prefilld@.service; do
        systemd-analyze security --offline=true "$vdir/$u" 2>/dev/null | tail -1
    done
else
    bad "systemd-analyze not found (./deploy/install-deps.sh installs systemd)"
fi
[ $fail -eq 0 ] && echo "install tree OK"
exit $fail
