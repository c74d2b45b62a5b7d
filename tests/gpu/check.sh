#!/usr/bin/env bash
# The GPU check: run from an unpacked bundle (deploy/bundle.sh) on a GPU
# machine that has nothing else installed and cannot fetch anything. It builds
# nothing. Steps, in order, each logged:
#
#   start       a bundled program runs here (libraries, glibc)          no GPU needed
#   cpu-engine  pdserve-generate on a tiny dummy model (OpenBLAS)       no GPU needed
#   gpu         the device, or why there is none (attn_bench --probe)
#   kernels     every CUDA kernel against its CPU reference (test_kernels)
#   sanitize    compute-sanitizer synccheck and racecheck over the attention
#               kernels' tests (the tool from deploy/bundle.sh --sanitizer)
#   tags        the KV channel's block tags on the GPU, bit for bit against
#               libsodium and known answers (test_tag)
#   engine      the engine on CUDA against the CPU engine, dummy weights
#               (test_engine_cuda; the logits' margins are printed)
#   pair        prefilld and decoded both on the GPU serving completions
#               through the authenticated KV channel on loopback (blocks staged
#               through page-locked host memory), against decoded alone on the
#               GPU; faults, staging limits (tests/integration/test_disagg_gpu.py
#               as a script: python3, no pytest)
#   checkpoint  the Hugging Face test checkpoints (Llama-3.1, Qwen2, Qwen3,
#               Mistral) served by decoded alone and by the pair on the GPU,
#               greedy tokens against transformers' (test_disagg_checkpoint.py)
#   pair-direct the same on the direct path: the device pools to UCX (the
#               bundle's lib/ucx-cuda, deploy/bundle.sh --ucx-cuda; skips, 77,
#               where no UCX here takes CUDA memory)
#   kvx-gpu     the KV channel between two processes with the GPU's pools:
#               page-locked (staged) and device (direct), 2 MiB blocks, runs of
#               16 and 256 MiB, same host and UCX_TLS=tcp, tags on beside off
#               (kvx_bench.py --pool pinned / device --quick)
#   disagg-gpu  time to first token on dummy Llama-3-8B at 2k and 8k tokens,
#               prefilled by decoded itself and by a prefilld on this GPU through
#               the KV channel with tags on: (a) same host, direct where UCX
#               takes CUDA memory; (b) UCX_TLS=tcp, staged, prefilld chunks of
#               2048 and 512 (the second dropped when the daemons' start-up
#               would pass DISAGG_BUDGET_S, default 200 s); start-up of each
#               daemon (disagg_gpu_bench.py)
#   attn-*      decode-attention benchmark vs a device-to-device copy:
#                 default model's shape (GQA 3:1, head_dim 64), bf16 and f32 KV
#                 GQA 8:1 (Llama-3-8B shape with 4 KV heads, head_dim 128), bf16 KV
#               batch 16 and 64, context 1k to 8k, pool of real layout and size;
#               16-bit pools: the tensor-core kernel beside the CUDA-core one
#               (vs_simt)
#   prefill-*   prefill attention (tensor cores) in TFLOP/s on FlashAttention's
#               grid, causal, 16 heads x 128 (and x 64 in half), seqlen 512
#               to 16k, beside a cuBLAS bf16 GEMM; on sm_90 the wgmma kernel
#               (key tiles of 128 and 64) beside the mma.sync one (vs_mma)
#   engine-8b   the GPU engine end to end on dummy Llama-3-8B (bf16 weights
#               and KV): prefill tokens/s at 2k beside a cuBLAS GEMM, decode
#               tokens/s at batch 1, 32, 128 beside a device copy, mixed
#               steps (a 512-token chunk beside each batch) with their decode
#               tokens through the decode kernel beside as prefill runs, and
#               each step split by kernel (--kernel-times: plain launches),
#               the engine made for Llama-3's 8192 tokens (--max-model-len)
#               (gpu_engine_bench; about two minutes, half a minute loading)
#   engine-8b-was  the same with PDSERVE_FUSED_MATRICES=0
#               PDSERVE_BF16_ACTIVATIONS=0 PDSERVE_DECODE_ATTENTION=simt
#               PDSERVE_FUSED_ROPE=0: the engine as it was before issue 31's
#               items 2 and 3
#   tag-bench   the block tags' kernel alone, 2 MiB blocks (Llama-3-8B's),
#               8 / 128 / 512 per launch, beside a device copy (tag_bench)
#   kvx         the KV channel between two processes on this machine's cores
#               beside ucx_perftest (kvx_bench.py --quick; only when the
#               bundle was made with --extra "$(command -v ucx_perftest)"):
#               the 2-core build machine cannot give the crypto threads cores
#               of their own, this one can
#
# Without a usable GPU it stops at the `gpu` step with the reason and exits 2.
# Exit 0 when every step passed, 1 when one failed. The benchmark tables and,
# last, a short table of the steps are printed; the whole output also goes to
# $OUT/check.log (or ./check-out/check.log) and the tables to summary.txt.
#
#   tar -xf pdserve-*.tar.xz -C /tmp && /tmp/pdserve-*/tests/gpu/check.sh
#
# Budget: about 2 minutes on an H100 (119 s in session 5, half of it
# loading the Llama-3-8B shape) before the KV channel's GPU steps (pair-direct,
# kvx-gpu, disagg-gpu: several Llama-3-8B start-ups); each step is cut at
# STEP_TIMEOUT seconds (default 300). STEPS="pair-direct disagg-gpu" runs only
# the steps named (start and gpu always run), so one device session can take
# the new steps first.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
env="$root/bin/pdserve-env"
logdir="${OUT:-$PWD/check-out}"
step_timeout="${STEP_TIMEOUT:-300}"
mkdir -p "$logdir" || exit 1
log="$logdir/check.log"
summary="$logdir/summary.txt"
: > "$log"
: > "$summary"

say() { echo "$@" | tee -a "$log"; }

# STEPS (space-separated names): run only those; empty: every step
want() { [ -z "${STEPS:-}" ] || case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

steps=()
failed=0
t_all=$SECONDS

# run STEP DESCRIPTION CMD...: output to the log (and the screen), one row in
# the table; returns the command's status (78, no row: a step STEPS leaves out)
run() {
    local name="$1" what="$2" rc t0=$SECONDS
    shift 2
    case "$name" in start|gpu) ;; *) want "$name" || return 78 ;; esac  # not asked for
    say ""
    say "== $name: $what"
    say "\$ $*"
    if command -v timeout >/dev/null; then
        timeout "$step_timeout" "$@" 2>&1 | tee -a "$log"
    else
        "$@" 2>&1 | tee -a "$log"
    fi
    rc=${PIPESTATUS[0]}
    local result=ok
    case $rc in
        0) ;;
        77) result="SKIPPED (exit 77: nothing ran)" ;;
        124) result="TIMEOUT after ${step_timeout}s" ;;
        *) result="FAIL (exit $rc)" ;;
    esac
    [ $rc -eq 0 ] || failed=1
    steps+=("$(printf '%-12s %-34s %5ss' "$name" "$result" $((SECONDS - t0)))")
    return $rc
}

table() {
    {
        echo ""
        echo "== pdserve GPU check: $(sed -n 1p "$root/BUILDINFO" 2>/dev/null), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        [ -n "${gpu_line:-}" ] && echo "gpu: $gpu_line"
        [ -n "${smi_line:-}" ] && echo "nvidia-smi: $smi_line"
        if [ -s "$summary" ]; then
            cat "$summary"
        fi
        printf '%-12s %-34s %6s\n' step result time
        printf '%s\n' "${steps[@]}"
        echo "total $((SECONDS - t_all))s; log: $log"
    } | tee -a "$log"
}

say "pdserve GPU check from $root"
say "$(cat "$root/BUILDINFO" 2>/dev/null || echo 'no BUILDINFO: is this an unpacked bundle?')"
say "host: $(uname -srm)"
if command -v nvidia-smi >/dev/null; then
    smi_line="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
    say "nvidia-smi: $smi_line"
else
    say "nvidia-smi: not on PATH"
fi
# The driver's library directory, where a container mounts it off the default path.
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/wsl/lib; do
    if [ -e "$d/libcuda.so.1" ]; then
        case ":${LD_LIBRARY_PATH:-}:" in *":$d:"*) ;; *) export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d" ;; esac
    fi
done

# cuBLAS (the one CUDA toolkit library the GPU programs load, left out of the
# bundle): where the loader does not find it, the usual places a node keeps
# it, including a Python environment's nvidia-cublas wheel.
cublas_missing() {
    [ -x "$root/libexec/test_kernels" ] &&
        "$env" ldd "$root/libexec/test_kernels" 2>/dev/null | grep -q 'libcublas.*not found'
}
if cublas_missing; then
    want="$("$env" ldd "$root/libexec/test_kernels" | sed -n 's/^[[:space:]]*\(libcublas\(Lt\)\{0,1\}\.so\.[0-9]*\) => not found.*/\1/p' | head -1)"
    pydir="$(python3 -c 'import nvidia.cublas, os; print(os.path.join(os.path.dirname(nvidia.cublas.__file__), "lib"))' 2>/dev/null || true)"
    for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/*/lib \
             /usr/local/cuda-*/lib64 /usr/local/cuda-*/lib /usr/local/cuda-*/targets/*/lib \
             /usr/lib/x86_64-linux-gnu "$pydir"; do
        if [ -n "$want" ] && [ -n "$d" ] && [ -e "$d/$want" ]; then
            export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
            say "cublas: $want from $d"
            break
        fi
    done
    cublas_missing && say "cublas: $want not found on this node (the GPU programs will not start)"
fi

if ! run start "a bundled program runs here" "$env" pdserve-inspect --version; then
    say "check.sh: the bundle's programs do not start on this machine (see above); nothing else was run"
    table
    exit 1
fi
run cpu-engine "CPU engine on a tiny dummy model" \
    "$env" pdserve-generate --load-format dummy --model-shape tiny --prompt-ids 5,6 --prompt-ids 7 -n 4

if [ ! -x "$root/libexec/attn_bench" ] || [ ! -x "$root/libexec/test_kernels" ]; then
    say "check.sh: this bundle was built without CUDA (no test_kernels/attn_bench in libexec/):"
    say "          rebuild with meson setup -Dcuda=enabled, then deploy/bundle.sh"
    steps+=("$(printf '%-12s %-34s %5ss' gpu 'NOT BUILT (CUDA off)' 0)")
    table
    exit 2
fi
if ! run gpu "a usable CUDA device" "$env" attn_bench --probe; then
    say "check.sh: no usable GPU here (the reason is above); the GPU steps were not run"
    steps[${#steps[@]} - 1]="$(printf '%-12s %-34s %5ss' gpu 'NO GPU: nothing below was run' 0)"
    table
    exit 2
fi
gpu_line="$(grep -m1 '^device: ' "$log" | sed 's/^device: //')"

run kernels "CUDA kernels against the CPU reference" "$env" test_kernels
# compute-sanitizer's synccheck (barriers every thread of a block must reach)
# and racecheck (shared-memory hazards) over the attention kernels' tests,
# the kernels with __syncthreads() (issue 31): each must report 0 errors. The
# tool travels in the bundle (deploy/bundle.sh --sanitizer); without it the
# step says so and fails, since a skip is not a pass.
sanitizer="$root/tools/compute-sanitizer/compute-sanitizer"
san_tests=(attention_cuda_decode_matches_cpu attention_prefill_cuda_matches_cpu
           attention_prefill_cuda_matches_cpu_on_model_shapes attention_prefill_sm90_matches_cpu
           sample_cuda_matches_cpu)
sanitize() {
    if [ ! -x "$sanitizer" ]; then
        echo "no compute-sanitizer in this bundle (deploy/bundle.sh --sanitizer WHEEL)"
        return 1
    fi
    local tool rc=0
    for tool in synccheck racecheck; do
        echo "-- compute-sanitizer --tool $tool (${san_tests[*]})"
        "$env" "$sanitizer" --tool "$tool" --error-exitcode 9 --print-limit 20 \
            "$root/libexec/test_kernels" "${san_tests[@]}" || rc=1
    done
    return $rc
}
run sanitize "synccheck and racecheck: the attention kernels" sanitize
run tags "block tags on the GPU = libsodium's" "$env" test_tag
# Two engine tests cannot run here and are left out by name, so that a skip
# among the rest still fails the step: the default model does not travel (64
# MiB), and a failing capture can be forced on the emulator only.
engine_off=(engine_cuda_default_model_agrees_with_cpu
            engine_cuda_failed_capture_falls_back_to_plain_launches)
engine_tests="$("$env" test_engine_cuda --list | grep -vxF -f <(printf '%s\n' "${engine_off[@]}"))"
if [ -z "$engine_tests" ]; then
    say "engine: test_engine_cuda --list named no test (see above)"
    steps+=("$(printf '%-12s %-34s %5ss' engine 'FAIL (no test listed)' 0)")
    failed=1
else
    say "engine: not run here (emulated in CI instead): ${engine_off[*]}"
    # shellcheck disable=SC2086 # one word per test name
    run engine "the engine on CUDA against the CPU engine" env PD_TEST_VERBOSE=1 \
        PD_TEST_HF_DIR="$root/tests/golden/hf" "$env" test_engine_cuda $engine_tests
fi
if command -v python3 >/dev/null; then
    run pair "prefilld + decoded on the GPU, KV channel" env DECODED="$root/bin/decoded" \
        PREFILLD="$root/bin/prefilld" PYTHONDONTWRITEBYTECODE=1 PDSERVE_KV_PATH=staged \
        python3 "$root/tests/integration/test_disagg_gpu.py"
    run pair-direct "the same, device pools to UCX" env DECODED="$root/bin/decoded" \
        PREFILLD="$root/bin/prefilld" PYTHONDONTWRITEBYTECODE=1 PDSERVE_KV_PATH=direct \
        python3 "$root/tests/integration/test_disagg_gpu.py"
    run checkpoint "HF checkpoints served on the GPU" env DECODED="$root/bin/decoded" \
        PREFILLD="$root/bin/prefilld" PYTHONDONTWRITEBYTECODE=1 PDSERVE_CHECKPOINT_DEVICE=cuda \
        python3 "$root/tests/integration/test_disagg_checkpoint.py"
    for pool in pinned device; do
        if run kvx-gpu "KV channel, GPU pools ($pool)" env PATH="$root/bin:$PATH" \
            python3 "$root/tests/bench/kvx_bench.py" "$root/bin/kvx_bench" --pool "$pool" --quick; then
            { echo "-- kvx-gpu: kvx_bench.py --pool $pool --quick"
              sed -n "/^# KV transfer, GPU pools (--pool $pool)/,/^\$/p" "$log" | grep '^[#|]'; } >> "$summary"
        fi
    done
    # its own limit: the daemons' start-up is most of it (the bench prints
    # each row's figures as it goes, so a cut still leaves them in the log)
    keep_timeout=$step_timeout
    step_timeout="${DISAGG_STEP_TIMEOUT:-420}"
    if run disagg-gpu "TTFT, disaggregated / local, Llama-3-8B" env DECODED="$root/bin/decoded" \
        PREFILLD="$root/bin/prefilld" PYTHONDONTWRITEBYTECODE=1 \
        python3 "$root/tests/bench/disagg_gpu_bench.py" --budget-s "${DISAGG_BUDGET_S:-200}"; then
        { echo "-- disagg-gpu: disagg_gpu_bench.py"
          sed -n '/^# disagg_gpu_bench/,/^disagg_gpu_bench: /p' "$log"; } >> "$summary"
    fi
    step_timeout=$keep_timeout
else
    steps+=("$(printf '%-12s %-34s %5ss' pair 'NOT RUN (no python3)' 0)")
fi

# a benchmark step; its table (from the line starting with FIRST to the
# program's summary line, of its last run in the log) goes to the summary
bench_step() {
    local name="$1" what="$2" prog="$3" first="$4"
    shift 4
    if run "$name" "$what" "$env" "$prog" "$@"; then
        {
            echo "-- $name: $prog $*"
            sed -n "/^$first/,/^$prog: /p" "$log" |
                awk -v f="^$first" '$0 ~ f {buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}'
        } >> "$summary"
    fi
}
bench() {
    local name="$1"
    shift
    bench_step "$name" "decode attention vs device copy" attn_bench "shape " "$@"
}
bench attn-3:1-bf16 --model-shape default --kv-dtype bf16
bench attn-8:1-bf16 --model-shape '{"preset":"llama3-8b","n_head_kv":4}' --kv-dtype bf16
bench attn-3:1-f32 --model-shape default --kv-dtype f32

# Prefill attention on FlashAttention's grid (causal, 16 heads x 128, 16k
# tokens per figure) beside a cuBLAS bf16 GEMM.
prefill() {
    local name="$1"
    shift
    bench_step "$name" "prefill attention vs cuBLAS GEMM" prefill_bench "gemm: " "$@"
}
prefill prefill-bf16 --kv-dtype bf16 --wgmma-keys 128,64
prefill prefill-f16-64 --kv-dtype f16 --head-dim 64 --seqlen 512,2048,8192 --wgmma-keys 128,64

# --max-model-len: Llama-3-8B's own, as a server runs it (decode attention
# plans its splits for it, above the run's contexts)
bench_step engine-8b "GPU engine, dummy Llama-3-8B" gpu_engine_bench "gemm: " \
    --model-shape llama3-8b --kv-cache-dtype bf16 --max-model-len 8192 --kernel-times
# the same engine with issue 31's variants off -- q/k/v and gate/up as
# separate GEMMs, float GEMM inputs rounded by a kernel, decode attention on
# CUDA cores, RoPE's angles computed and the KV written by its own kernel --
# the way before, beside the way now
PDSERVE_FUSED_MATRICES=0 PDSERVE_BF16_ACTIVATIONS=0 PDSERVE_DECODE_ATTENTION=simt \
    PDSERVE_FUSED_ROPE=0 \
    bench_step engine-8b-was "GPU engine, 8B, issue 31 variants off" gpu_engine_bench "gemm: " \
    --model-shape llama3-8b --kv-cache-dtype bf16 --max-model-len 8192 --kernel-times
# Llama-3-8B's blocks (2 MiB): 8, a 2k-token prompt's 128, an 8k-token one's 512
bench_step tag-bench "block tags on the GPU vs device copy" tag_bench "blocks of "

if [ -x "$root/bin/ucx_perftest" ] && [ -x "$root/bin/kvx_bench" ] && command -v python3 >/dev/null; then
    if run kvx "KV transfer beside ucx_perftest, $(nproc) cores" env PATH="$root/bin:$PATH" \
        python3 "$root/tests/bench/kvx_bench.py" "$root/bin/kvx_bench" --quick; then
        { echo "-- kvx: kvx_bench.py --quick"; sed -n '/^# KV transfer/,$p' "$log" | grep -v '^\$'; } \
            >> "$summary"
    fi
else
    steps+=("$(printf '%-12s %-34s %5ss' kvx 'NOT RUN (no ucx_perftest bundled)' 0)")
fi

table
exit $failed
