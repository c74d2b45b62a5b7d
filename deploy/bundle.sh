#!/usr/bin/env bash
# Pack a built tree into a relocatable tarball for a machine that has none of
# pdserve's libraries (a GPU node with only the NVIDIA driver and CUDA):
#
#   deploy/bundle.sh [--build DIR] [--out DIR] [--format xz|gz] [--extra PROGRAM]...
#                    [--ucx-cuda DIR] [--sanitizer WHEEL|DIR]
#
# Builds nothing: DIR (default build/) must hold a finished build. Writes
# OUT/pdserve-VERSION-ARCH.tar.xz (OUT defaults to DIR) and prints its path on
# the last line. Fails if the tarball is over 32 MiB (half of the 64 MiB a GPU
# session carries, the rest left for results). --extra adds a program
# from outside the build with its libraries (ucx_info, ucx_perftest: the node
# has no UCX tools either). --ucx-cuda adds a second UCX that takes CUDA memory
# (DIR: its lib/, e.g. PyPI's libucx-cu13 wheel's libucx/lib, as
# deploy/install-deps.sh installs it in the test venv) for the KV channel's
# direct path (docs/operations.md, "Which UCX"). --sanitizer adds NVIDIA's
# compute-sanitizer for check.sh's `sanitize` step (the GPU node has none):
# PyPI's wheel (`pip download --no-deps nvidia-cuda-sanitizer-api==13.5.25`,
# about 18 MiB) or its unpacked nvidia/cu13/compute-sanitizer directory; the
# tool and its libraries only (about 12 MiB packed), not its docs or headers.
#
# Inside, under pdserve-VERSION/:
#   bin/pdserve-env       runs a bundled program (or any command) with lib/ on
#                         LD_LIBRARY_PATH (and UCX_MODULE_DIR when UCX is
#                         bundled), from wherever the bundle was unpacked
#   bin/<program>         one wrapper per program: bin/pdserve-inspect --version
#   libexec/<program>     the binaries (debug info stripped)
#   lib/                  every shared library they load that is not glibc and
#                         not CUDA's (the node has CUDA; the CUDA runtime is linked
#                         statically): libsodium, cJSON, OpenBLAS and its Fortran
#                         runtime, libevent, libsystemd..., UCX and its transport
#                         modules (lib/ucx/) when a program links UCX
#   lib/ucx-cuda/         with --ucx-cuda: that UCX, its CUDA transports
#                         (lib/ucx-cuda/ucx/) and their libraries; pdserve-env
#                         puts it first where the node has an NVIDIA driver
#                         (/dev/nvidiactl), or when PD_UCX=cuda (PD_UCX=host:
#                         the build's UCX always)
#   tools/compute-sanitizer/  with --sanitizer: the tool, its launchers and libraries
#   tests/gpu/check.sh    the GPU check (tests/gpu/check.sh in the source tree)
#   tests/integration/    harness.py and test_disagg_gpu.py, which check.sh runs
#   tests/bench/          kvx_bench.py (check.sh's kvx step, with --extra ucx_perftest)
#   README, BUILDINFO, MANIFEST (sha256 of every file)
set -euo pipefail

MAX_BYTES=$((32 * 1024 * 1024))
src_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="build"
out=""
format="xz"
extras=()
ucx_cuda=""
sanitizer=""

die() { echo "bundle.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --build) build="${2:?--build needs a directory}"; shift 2 ;;
        --out) out="${2:?--out needs a directory}"; shift 2 ;;
        --format) format="${2:?--format needs xz or gz}"; shift 2 ;;
        --extra) extras+=("${2:?--extra needs a program}"); shift 2 ;;
        --ucx-cuda) ucx_cuda="${2:?--ucx-cuda needs a directory}"; shift 2 ;;
        --sanitizer) sanitizer="${2:?--sanitizer needs a wheel or a directory}"; shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
case "$format" in xz) tflag=J ext=tar.xz ;; gz) tflag=z ext=tar.gz ;; *) die "--format: xz or gz" ;; esac
[ -f "$build/build.ninja" ] || die "$build is not a meson build directory (meson setup $build && ninja -C $build)"
build="$(cd "$build" && pwd)"
out="$(mkdir -p "${out:-$build}" && cd "${out:-$build}" && pwd)"

version="$(sed -n 's/^#define PD_VERSION "\(.*\)"$/\1/p' "$build/common/base/pd_config.h")"
cuda="$(sed -n 's/^#define PD_HAVE_CUDA \(.*\)$/\1/p' "$build/common/base/pd_config.h")"
[ -n "$version" ] || die "$build/common/base/pd_config.h names no PD_VERSION"
arch="$(uname -m)"
name="pdserve-$version-$arch"

# Programs, by their place in the build; those not built are left out.
programs=(
    common/tools/pdserve-inspect
    common/tools/pdserve-generate
    decoded/decoded
    prefilld/prefilld
    tests/kernels/test_kernels
    tests/kernels/test_engine_cuda
    tests/kernels/test_tag
    tests/bench/attn_bench
    tests/bench/prefill_bench
    tests/bench/gpu_engine_bench
    tests/bench/tag_bench
    tests/bench/kvx_bench
)
[ -x "$build/common/tools/pdserve-inspect" ] || die "$build has no pdserve-inspect: run ninja -C $build first"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
root="$stage/$name"
mkdir -p "$root/bin" "$root/libexec" "$root/lib" "$root/tests/gpu"

# glibc (the node's own must be used) and CUDA (the node has it; cudart is static)
skip_lib() {
    case "$1" in
        linux-vdso.so*|ld-linux*.so*|libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*) return 0 ;;
        libresolv.so*|libutil.so*|libanl.so*|libnsl.so*) return 0 ;;
        libcuda.so*|libcudart.so*|libcublas.so*|libcublasLt.so*|libnvidia-*|libnvrtc*|libnvJitLink*) return 0 ;;
    esac
    return 1
}

ucx_dir=""
# Copy the non-system libraries `ldd FILE` resolves (the whole closure).
bundle_libs() {
    local line soname path
    while IFS= read -r line; do
        case "$line" in
            *"=> not found"*)
                soname="${line%% =>*}"; soname="${soname//[[:space:]]/}"
                skip_lib "$soname" || die "$1 needs $soname, which is not installed here"
                continue ;;
            *" => "/*) ;;
            *) continue ;;
        esac
        soname="${line%% =>*}"; soname="${soname//[[:space:]]/}"
        path="${line#*=> }"; path="${path%% (*}"
        skip_lib "$soname" && continue
        [ -e "$root/lib/$soname" ] || cp -L "$path" "$root/lib/$soname"
        case "$soname" in libucp.so*) ucx_dir="$(dirname "$(readlink -f "$path")")/ucx" ;; esac
    done < <(ldd "$1")
}

strip_tool="$(command -v strip || true)"
bundled=()
paths=()
for p in "${programs[@]}"; do
    [ -x "$build/$p" ] && paths+=("$build/$p")
done
for p in "${extras[@]}"; do
    [ -x "$p" ] || die "--extra $p: not an executable file"
    paths+=("$p")
done
for p in "${paths[@]}"; do
    prog="$(basename "$p")"
    cp "$p" "$root/libexec/$prog"
    [ -n "$strip_tool" ] && "$strip_tool" --strip-debug "$root/libexec/$prog"
    bundle_libs "$root/libexec/$prog"
    cat > "$root/bin/$prog" <<'EOF'
#!/bin/sh
# runs libexec/<this name> through pdserve-env (the bundle's libraries)
case $0 in */*) here=${0%/*} ;; *) here=. ;; esac
exec "$here/pdserve-env" "${0##*/}" "$@"
EOF
    chmod 755 "$root/bin/$prog"
    bundled+=("$prog")
done

# UCX loads its transports (uct_*, ucm_*) as modules at run time: bring the
# directory and the modules' own libraries.
if [ -n "$ucx_dir" ] && [ -d "$ucx_dir" ]; then
    mkdir -p "$root/lib/ucx"
    for m in "$ucx_dir"/*.so*; do
        [ -e "$m" ] || continue
        cp -P "$m" "$root/lib/ucx/"
        [ -L "$m" ] || bundle_libs "$m"
    done
fi

# A UCX that takes CUDA memory, beside the build's: its libraries, its
# transports, and what they load that the node lacks (a vendored CUDA
# runtime; libnuma), not the driver's.
if [ -n "$ucx_cuda" ]; then
    [ -e "$ucx_cuda/libucp.so.0" ] || die "--ucx-cuda $ucx_cuda: no libucp.so.0 there"
    [ -e "$ucx_cuda/ucx/libuct_cuda.so.0" ] || die "--ucx-cuda $ucx_cuda: no CUDA transport (ucx/libuct_cuda.so.0)"
    uc="$root/lib/ucx-cuda"
    mkdir -p "$uc/ucx"
    for f in libucp libucs libuct libucm libucs_signal; do
        [ -e "$ucx_cuda/$f.so.0" ] && cp -L "$ucx_cuda/$f.so.0" "$uc/"
    done
    for f in "$ucx_cuda"/ucx/lib*.so.0; do
        case "$f" in *perftest*) continue ;; esac
        cp -L "$f" "$uc/ucx/"
    done
    for f in "$uc"/*.so.0 "$uc"/ucx/*.so.0; do
        orig="$ucx_cuda/${f#"$uc"/}" # where its RPATH finds what the wheel vendors
        while IFS= read -r line; do
            case "$line" in *" => "/*) ;; *) continue ;; esac
            soname="${line%% =>*}"; soname="${soname//[[:space:]]/}"
            path="${line#*=> }"; path="${path%% (*}"
            case "$soname" in libuc[mpst]*.so.0) continue ;; esac
            skip_lib "$soname" && continue
            [ -e "$root/lib/$soname" ] || [ -e "$uc/$soname" ] || cp -L "$path" "$uc/$soname"
        done < <(LD_LIBRARY_PATH="$ucx_cuda" ldd "$orig")
    done
fi

# compute-sanitizer: the launcher, its helper programs and libraries (the
# 64-bit ones; x86/ is for 32-bit targets), found beside it at run time
if [ -n "$sanitizer" ]; then
    sdir="$sanitizer"
    if [ -f "$sanitizer" ]; then
        tmp_san="$(mktemp -d)"
        trap 'rm -rf "$tmp_san"' EXIT
        (cd "$tmp_san" && python3 -m zipfile -e "$sanitizer" .) ||
            die "--sanitizer $sanitizer: not a wheel python3's zipfile can open"
        sdir="$(dirname "$(find "$tmp_san" -name compute-sanitizer -type f | head -1)")"
    fi
    [ -f "$sdir/compute-sanitizer" ] || die "--sanitizer $sanitizer: no compute-sanitizer there"
    mkdir -p "$root/tools/compute-sanitizer"
    for f in "$sdir"/*; do
        [ -f "$f" ] && install -m 755 "$f" "$root/tools/compute-sanitizer/"
    done
fi

cat > "$root/bin/pdserve-env" <<'EOF'
#!/bin/sh
# pdserve-env: run a program of this bundle, or any command, with the bundle's
# libraries first on the library path. Works from wherever the bundle was
# unpacked and in an empty environment (only shell built-ins are used).
#
#   bin/pdserve-env pdserve-inspect --version      # a program in libexec/
#   bin/pdserve-env ldd libexec/pdserve-generate   # any command
case $0 in */*) here=${0%/*} ;; *) here=. ;; esac
root=$(cd "$here/.." && pwd -P) || exit 1
LD_LIBRARY_PATH="$root/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
PDSERVE_BUNDLE=$root
export LD_LIBRARY_PATH PDSERVE_BUNDLE
if [ -d "$root/lib/ucx" ]; then
    UCX_MODULE_DIR="$root/lib/ucx"
    export UCX_MODULE_DIR
fi
# the bundle's UCX that takes CUDA memory, where there is a GPU (or PD_UCX=cuda)
if [ -d "$root/lib/ucx-cuda" ] && [ "${PD_UCX:-}" != host ] &&
   { [ "${PD_UCX:-}" = cuda ] || [ -e /dev/nvidiactl ]; }; then
    LD_LIBRARY_PATH="$root/lib/ucx-cuda:$LD_LIBRARY_PATH"
    UCX_MODULE_DIR="$root/lib/ucx-cuda/ucx"
    export UCX_MODULE_DIR
fi
if [ $# -eq 0 ]; then
    echo "usage: pdserve-env PROGRAM [ARGS...]   (programs: $(cd "$root/libexec" && echo *))" >&2
    exit 2
fi
case $1 in
    */*) ;;
    *) if [ -x "$root/libexec/$1" ]; then
           prog=$root/libexec/$1
           shift
           exec "$prog" "$@"
       fi ;;
esac
exec "$@"
EOF
chmod 755 "$root/bin/pdserve-env"

install -m 755 "$src_root/tests/gpu/check.sh" "$root/tests/gpu/check.sh"
# the GPU pair's end-to-end test and the KV-transfer benchmark's driver
# (stdlib Python only; check.sh runs them)
mkdir -p "$root/tests/integration" "$root/tests/bench"
install -m 644 "$src_root/tests/integration/harness.py" "$src_root/tests/integration/test_disagg_gpu.py" \
    "$src_root/tests/integration/test_disagg_checkpoint.py" "$root/tests/integration/"
# the Hugging Face test checkpoints (about 5 MiB) and their greedy goldens:
# test_engine_cuda (PD_TEST_HF_DIR) and test_disagg_checkpoint.py on the GPU
for m in llama31 qwen2 qwen3 mistral; do
    mkdir -p "$root/tests/golden/hf/$m"
    install -m 644 "$src_root/tests/golden/hf/$m"/* "$root/tests/golden/hf/$m/"
    install -m 644 "$src_root/tests/golden/greedy_hf-$m.bin" "$root/tests/golden/"
done
install -m 644 "$src_root/tests/bench/kvx_bench.py" "$src_root/tests/bench/disagg_gpu_bench.py" \
    "$root/tests/bench/"

git_rev="$(git -C "$src_root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
cuda_version="$(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
git_dirty="$(git -C "$src_root" status --porcelain 2>/dev/null | head -1)"
{
    echo "pdserve $version"
    echo "source: $git_rev${git_dirty:+ (with uncommitted changes)}"
    echo "built on: $(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-?}"), $(uname -m), glibc $(ldd --version | sed -n '1s/.* //p')"
    echo "needs: glibc >= $(find "$root/libexec" "$root/lib" -type f -exec objdump -T {} + 2>/dev/null |
        grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -Vu | tail -n 1), an NVIDIA driver for CUDA ${cuda_version:-13} or newer (GPU programs)"
    echo "cuda: $([ "$cuda" = 1 ] && echo "yes ($cuda_version, runtime linked statically)" || echo no)"
    echo "gpu archs: $(python3 -c 'import json, sys
print(next((o["value"] for o in json.load(open(sys.argv[1])) if o["name"] == "gpu_archs"), "?"))' \
        "$build/meson-info/intro-buildoptions.json" 2>/dev/null || echo '?')"
    echo "ucx: $(sed -n 's/^Version: //p' "$(pkg-config --variable=pcfiledir ucx 2>/dev/null)/ucx.pc" 2>/dev/null || echo '?')$([ -n "$ucx_cuda" ] && echo "; lib/ucx-cuda: $(sed -n 's/^Version: //p' "$ucx_cuda/pkgconfig/ucx.pc" 2>/dev/null || echo '?') (takes CUDA memory)")"
    echo "bundled: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "programs: ${bundled[*]}"
} > "$root/BUILDINFO"

cat > "$root/README" <<'EOF'
pdserve, portable bundle
========================

Unpack anywhere and run from there; nothing is installed and nothing is built.

  tar -xf pdserve-*.tar.xz && cd pdserve-*/
  bin/pdserve-inspect --version
  bin/pdserve-generate --load-format dummy --model-shape tiny --prompt-ids 5,6 -n 4

bin/pdserve-env PROGRAM runs any program of libexec/ with lib/ on the library
path; the files in bin/ do that for each program. lib/ holds the libraries the
programs need beyond glibc; CUDA is not bundled (the CUDA runtime is linked
into the programs; the node's NVIDIA driver provides libcuda.so.1).

On a GPU node, the whole check (kernel tests against the CPU reference, the
decode-attention benchmark, a short table at the end; about two minutes):

  tests/gpu/check.sh            # logs to $OUT or ./check-out/

BUILDINFO says where and from what this bundle was built; MANIFEST lists every
file with its sha256.
EOF

(cd "$root" && find . -type f ! -name MANIFEST -print0 | sort -z | xargs -0 sha256sum) > "$root/MANIFEST"

tarball="$out/$name.$ext"
XZ_OPT="${XZ_OPT:--6 -T0}" tar -C "$stage" --owner=0 --group=0 --numeric-owner -c${tflag}f "$tarball" "$name"
size="$(stat -c %s "$tarball")"
echo "bundle.sh: ${#bundled[@]} programs (${bundled[*]}), $(find "$root/lib" -maxdepth 1 -type f | wc -l) libraries$([ -d "$root/lib/ucx" ] && echo " + UCX modules")$([ -d "$root/lib/ucx-cuda" ] && echo " + a UCX that takes CUDA memory"), $((size / 1024)) KiB"
if [ "$size" -gt "$MAX_BYTES" ]; then
    die "$tarball is $size bytes, over the 32 MiB limit"
fi
echo "$tarball"
