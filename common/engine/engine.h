/* common/engine: the forward pass of a Llama model over a paged KV cache.
 *
 *   struct pd_engine_params p = {.model = m, .kv_cache_bytes = 1 << 30};
 *   struct pd_engine *e;
 *   if (pd_engine_new(&p, &e, err, sizeof err) < 0) ...
 *
 *   struct pd_kvseq a, b;                       // sequences (common/engine/kvcache)
 *   pd_kvseq_init(&a); pd_kvseq_init(&b);
 *   struct pd_batch_item items[2] = {
 *       {.seq = &a, .tokens = prompt, .n_tokens = 7, .n_logits = 1, .logits = la},  // a prefill chunk
 *       {.seq = &b, .tokens = &next, .n_tokens = 1, .n_logits = 1, .logits = lb},   // a decode step
 *   };
 *   if (pd_engine_step(e, items, 2, err, sizeof err) < 0) ...   // nothing changed on error
 *   pd_engine_seq_release(e, &a);
 *
 * One step runs any mix of prefill chunks and decode steps: each item appends
 * its tokens to its sequence (positions seq->n_tokens ...), writing their K/V
 * into the pool, and attends causally over everything its sequence holds.
 * Logits come back for the last n_logits tokens of an item, in order
 * ((n_logits, n_vocab) floats). pd_engine_prefill splits a prompt into chunks
 * of at most max_batched_tokens.
 *
 * Bad input is refused before anything changes, with a message: an empty item,
 * a token id outside the vocabulary, a sequence that would pass
 * max_model_len, more tokens than max_batched_tokens, a sequence twice in one
 * batch, or a pool without room (-ENOSPC; the scheduler preempts).
 *
 * A block an item writes into that is shared (another reference) or
 * published in the prefix index is first copied to a block of its own
 * (copy-on-write; kvcache.h), so sequences that map the same cached prefix
 * never see each other's writes.
 *
 * CUDA backend (--device cuda; kernels/, cuBLAS): the same pass with every
 * buffer in device memory: bf16 (or fp32) weight matrices, fp32 activations,
 * the KV pool of --kv-cache-memory on the device, all work on the engine's
 * stream; the index arrays go up and the asked-for logits come down each
 * step through page-locked buffers, one wait per step; a decode step replays
 * the CUDA graph of its batch size (captured on first use; no_cuda_graphs:
 * plain launches); the prefill kernel takes a step whose items are all prefill chunks on a
 * 16-bit pool. The KV channel reaches its pool through page-locked host
 * staging (pd_engine_kv_stage, below).
 *
 * CPU backend: fp32 activations; KV in fp32, or bf16 / half (--kv-cache-dtype:
 * half the memory and the KV channel's bytes, K and V rounded as stored);
 * weight matrices as the model stores them, read through the mapping
 * (cpu_weights; docs/internals/quant.md), multiplied on the engine's own
 * pool of threads (cpu_threads) with OpenBLAS on one thread for large
 * batches; decode attention on the pool; RoPE and norms on the caller. One
 * engine is driven by one thread at a time (the compute thread).
 */
#ifndef PD_ENGINE_H
#define PD_ENGINE_H

#include "handshake.h"
#include "kvcache.h"
#include "model.h"
#include "sample.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PD_ENGINE_MAX_BATCH_ITEMS 1024

/* Where the engine runs. PD_DEVICE_CPU (0) is the default. */
enum pd_device { PD_DEVICE_CPU = 0, PD_DEVICE_CUDA = 1 };

/* How the CPU engine keeps and multiplies its weight matrices
 * (--cpu-weight-dtype; docs/internals/quant.md) */
enum pd_cpu_weights {
    PD_CPU_W_STORED = 0, /* as the model stores them, float activations */
    PD_CPU_W_STORED_Q8, /* as stored, activations quantized to 8 bits per block of 32 for
                         * small batches (llama.cpp's numbers: faster, further from float) */
    PD_CPU_W_F32, /* dequantized to fp32 at load (5x the memory; the golden tests' numbers) */
};

struct pd_engine_params {
    const struct pd_model *model; /* must outlive the engine */
    enum pd_device device; /* CUDA: weights, activations and the KV pool in device memory */
    uint32_t gpu_weight_dtype; /* CUDA: the matrices' elements, PD_DT_F32 (0) or PD_DT_BF16;
                                * the CPU's are fp32 whatever this says */
    double gpu_memory_utilization; /* CUDA: (0, 1) the share of the device's memory the
                                    * process may use, the KV pool taking what is left after
                                    * the weights and scratch (vLLM's meaning); 0: the pool is
                                    * kv_cache_bytes */
    uint64_t kv_cache_bytes; /* --kv-cache-memory */
    uint32_t block_size; /* --block-size; 0 = 16 */
    uint32_t max_batched_tokens; /* --max-num-batched-tokens; 0 = 2048 */
    uint32_t max_model_len; /* --max-model-len; 0 = the model's trained context */
    uint32_t max_batch_items; /* sequences per step; 0 = 256 */
    uint32_t kv_dtype; /* --kv-cache-dtype: PD_DT_F32 (0), PD_DT_BF16 or PD_DT_F16 */
    bool prefix_cache; /* --enable-prefix-caching: the pool keeps published blocks
                        * (kvcache.h); a step copies a shared block before writing it */
    bool kv_staging; /* CUDA: page-locked host blocks for the KV channel (pd_engine_kv_staging) */
    bool kv_direct; /* CUDA, instead: the KV channel takes the device pool itself (the UCX
                     * in use moves CUDA memory: kvchan's pd_kvx_device_path) */
    uint64_t kv_staging_bytes; /* their size (--kv-staging-memory); 0: room for two prompts
                                * of max_model_len, at least 1 GiB */
    bool no_cuda_graphs; /* CUDA: decode steps as plain launches, not graph replays
                          * (--no-cuda-graphs; vLLM's --enforce-eager) */
    enum pd_cpu_weights cpu_weights; /* CPU: --cpu-weight-dtype */
    uint32_t cpu_threads; /* CPU: the kernels' threads (--threads); 0: the CPUs this process
                           * may run on, at most 16 */
};

/* --kv-cache-dtype's choices (PD_CFG_ENUM, NULL-terminated) and the type of
 * choice i: every program that makes an engine offers the same option. */
extern const char *const pd_engine_kv_dtypes[];
uint32_t pd_engine_kv_dtype(int choice);

/* --device's choices (PD_CFG_ENUM: auto, cpu, cuda) and what choice i means
 * here: auto is CUDA when a usable GPU is present (this build has CUDA and
 * pd_cuda_probe finds a device), else the CPU with the reason in why (for
 * one log line). -ENODEV with the reason when cuda is asked for and there is
 * none; *out untouched then. */
extern const char *const pd_engine_devices[];
/* --cpu-weight-dtype's choices (stored, stored-q8, f32: enum pd_cpu_weights) */
extern const char *const pd_engine_cpu_weight_dtypes[];
/* --gpu-weight-dtype's choices (bf16, f32) and the type of choice i */
extern const char *const pd_engine_gpu_weight_dtypes[];
uint32_t pd_engine_gpu_weight_dtype(int choice);

/* The KV pool's element type and block size, the same in every program that
 * makes an engine (and both ends of the KV channel must agree on them):
 * entries of a common/base/cfg option table for a config struct T with int
 * kv_cache_dtype and int64_t block_size. */
#define PD_ENGINE_KV_CFG(T)                                                                        \
    PD_CFG_ENUM("kv-cache-dtype", T, kv_cache_dtype, "f32", pd_engine_kv_dtypes,                   \
                "KV cache elements: f32, or bf16 / f16 (half the memory and KV channel bytes; K "  \
                "and V rounded as stored; both ends of the KV channel must agree)"),               \
    PD_CFG_INT("block-size", T, block_size, "16", 1, 1024, "tokens per KV block")

/* Prefix caching (vLLM's spelling: --enable-prefix-caching, on by default;
 * --no-enable-prefix-caching turns it off): an entry of a common/base/cfg
 * option table for a config struct T with bool enable_prefix_caching. */
#define PD_ENGINE_PREFIX_CFG(T)                                                                    \
    PD_CFG_BOOL("enable-prefix-caching", T, enable_prefix_caching, "true",                         \
                "keep the KV blocks of prompts after their requests and reuse them for prompts "   \
                "that start alike (requests share them only within one cache_salt; "              \
                "docs/security.md)")

/* The device options of a program that runs an engine where it likes
 * (decoded, prefilld, pdserve-generate): entries of a common/base/cfg option table
 * for a config struct T with int device, int gpu_weight_dtype, double
 * gpu_memory_utilization, bool cuda_graphs, int cpu_weight_dtype and int64_t
 * threads. */
#define PD_ENGINE_DEVICE_CFG(T)                                                                    \
    PD_CFG_ENUM("device", T, device, "auto", pd_engine_devices,                                    \
                "where the engine runs (auto: CUDA when usable, else the CPU)"),                   \
    PD_CFG_ENUM("gpu-weight-dtype", T, gpu_weight_dtype, "bf16", pd_engine_gpu_weight_dtypes,      \
                "on the GPU, the weight matrices' elements: bf16 (half the memory, bf16 GEMMs "    \
                "with fp32 accumulation) or f32 (the CPU engine's numbers)"),                      \
    PD_CFG_DOUBLE("gpu-memory-utilization", T, gpu_memory_utilization, "0", 0, 0.99,               \
                  "on the GPU, the share of its memory this process may use, the KV pool taking "  \
                  "what the weights leave (0: the pool is --kv-cache-memory)"),                   \
    PD_CFG_BOOL("cuda-graphs", T, cuda_graphs, "true",                                             \
                "on the GPU, replay decode steps as CUDA graphs (one per batch size, captured "    \
                "on first use); false: plain launches (vLLM's --enforce-eager)"),                 \
    PD_CFG_ENUM("cpu-weight-dtype", T, cpu_weight_dtype, "stored", pd_engine_cpu_weight_dtypes,    \
                "on the CPU, the weight matrices: stored (as the model file keeps them), "         \
                "stored-q8 (and 8-bit activations in small batches: faster, further from the "     \
                "float model) or f32 (dequantized at load: 5x the memory)"),                       \
    PD_CFG_INT("threads", T, threads, "0", 0, 16,                                                  \
               "on the CPU, the engine's threads (0: the CPUs this process may run on)")
int pd_engine_pick_device(int choice, enum pd_device *out, char *why, size_t n);

/* The engine parameters those options set, from a config value c of such a
 * struct (the device itself comes from pd_engine_pick_device):
 *   struct pd_engine_params p = {.model = m, .device = d, PD_ENGINE_KV_PARAMS(c),
 *                                PD_ENGINE_DEVICE_PARAMS(c), ...}; */
#define PD_ENGINE_KV_PARAMS(c)                                                                     \
    .kv_dtype = pd_engine_kv_dtype((c).kv_cache_dtype), .block_size = (uint32_t)(c).block_size
#define PD_ENGINE_DEVICE_PARAMS(c)                                                                 \
    .gpu_weight_dtype = pd_engine_gpu_weight_dtype((c).gpu_weight_dtype),                          \
    .gpu_memory_utilization = (c).gpu_memory_utilization, .no_cuda_graphs = !(c).cuda_graphs,      \
    .cpu_weights = (enum pd_cpu_weights)(c).cpu_weight_dtype, .cpu_threads = (uint32_t)(c).threads

struct pd_batch_item {
    struct pd_kvseq *seq;
    const int32_t *tokens; /* (n_tokens) appended at seq->n_tokens */
    uint32_t n_tokens; /* >= 1 */
    uint32_t n_logits; /* logits for the last n_logits tokens (0..n_tokens) */
    float *logits; /* (n_logits, n_vocab), caller's */
    /* Or, with n_logits 1: the row is sampled in the step, as pd_sample
     * (kernels/sample.h) would -- on a GPU by kernels/sample.cu, so that the
     * logits never leave the device -- with these parameters (checked by the
     * step) over the sequence so far, history[0, n_history) of which the
     * first n_prompt are the prompt; the token and its log-probabilities in
     * *result, `logits` unused. In one step either every item that asks for
     * a row samples, or none does.
     * Scoring (echo's prompt log-probabilities): with sampling, the first
     * n_forced of the n_logits rows are scored, as pd_sample_score: row j
     * reports forced[j] (the token that follows its position) with its raw
     * log-probability and the sampling's n_logprobs most probable, into
     * result[j]; n_forced is n_logits (nothing drawn) or n_logits - 1 (the
     * last row drawn as above, into result[n_logits - 1]). The logits never
     * exist for more rows at once than the head computes (LOGIT_ROWS). */
    const struct pd_sampling *sampling;
    const int32_t *history;
    uint32_t n_history, n_prompt; /* n_prompt <= n_history <= the model length */
    struct pd_sample_result *result; /* (n_logits) */
    const int32_t *forced; /* (n_forced) tokens in [0, n_vocab) */
    uint32_t n_forced;
};

struct pd_engine;

int pd_engine_new(const struct pd_engine_params *p, struct pd_engine **out, char *err,
                  size_t errlen);
/* Accepts NULL; returns NULL. Sequences must have been released. */
struct pd_engine *pd_engine_free(struct pd_engine *e);

int pd_engine_step(struct pd_engine *e, const struct pd_batch_item *items, uint32_t n_items,
                   char *err, size_t errlen);

/* Prompt tokens [0, n) appended to seq in chunks of max_batched_tokens; the
 * last token's logits into last_logits (n_vocab floats) when not NULL. On
 * error the sequence is back where it started. */
int pd_engine_prefill(struct pd_engine *e, struct pd_kvseq *seq, const int32_t *tokens,
                      uint32_t n, float *last_logits, char *err, size_t errlen);

void pd_engine_seq_release(struct pd_engine *e, struct pd_kvseq *seq);
/* Room for seq to grow to n_tokens positions: the blocks it lacks, and a
 * copy of each block of the write range [seq->n_tokens, n_tokens) it holds
 * but may not write (shared, as after pd_kvseq_fork, or published). What a
 * step would do itself, done ahead so that a scheduler can preempt on
 * -ENOSPC (nothing changed then) instead of failing the step. */
int pd_engine_seq_prepare(struct pd_engine *e, struct pd_kvseq *seq, uint32_t n_tokens);
/* The free blocks pd_engine_seq_prepare would take. */
uint32_t pd_engine_seq_blocks_needed(const struct pd_engine *e, const struct pd_kvseq *seq,
                                     uint32_t n_tokens);

const struct pd_model *pd_engine_model(const struct pd_engine *e);
/* 1 when the engine runs on a GPU (its KV pool is device memory) */
int pd_engine_on_device(const struct pd_engine *e);
/* 1 when the engine's pool is on a GPU and the KV channel takes it as it is
 * (made with kv_direct): kvx's pool_on_device. */
int pd_engine_kv_direct(const struct pd_engine *e);
/* CUDA graphs captured so far (one per decode batch size that came; 0 on
 * the CPU, with no_cuda_graphs, or after a capture failed and turned them off) */
uint32_t pd_engine_cuda_graphs(const struct pd_engine *e);

/* A step's time split by kernel, without a profiler (issue 31's breakdown):
 * with the timer on, each step records where its stream has got to after
 * each kernel (events on a GPU, the clock on the CPU), and the spans add up
 * by kind. On a GPU every step then runs as plain launches (events between
 * a graph's kernels cannot be recorded): graphs' speed is not what is
 * measured, the kernels' is. */
enum pd_kernel_kind {
    PD_K_EMBED,
    PD_K_NORM, /* every rmsnorm: the layers', Qwen3's q/k norms, the output norm */
    PD_K_QKV, /* the q, k and v projections */
    PD_K_BIAS,
    PD_K_ROPE, /* on a GPU, with the KV write in the same launch (PDSERVE_FUSED_ROPE=0: apart) */
    PD_K_KV_WRITE,
    PD_K_ATTENTION,
    PD_K_O_PROJ,
    PD_K_GATE_UP,
    PD_K_SWIGLU,
    PD_K_DOWN,
    PD_K_LM_HEAD, /* the output projection of the rows asked for */
    PD_K_COPY, /* rows gathered for the head, logits down */
    PD_K_SAMPLE, /* sampling on the device */
    PD_K_KINDS,
};
const char *pd_kernel_kind_name(enum pd_kernel_kind k);
/* On (0, or -ENOMEM, or the device's error) or off (always 0); off frees
 * what on made. Times start from zero when it goes on. */
int pd_engine_kernel_timer(struct pd_engine *e, bool on);
/* Milliseconds by kind over the steps timed since the timer went on or
 * since the last call (which starts again from zero), and how many steps;
 * all zero with the timer off. */
void pd_engine_kernel_times(struct pd_engine *e, double ms[PD_K_KINDS], uint32_t *steps);
struct pd_kvcache *pd_engine_kvcache(struct pd_engine *e);
/* The KV channel with a GPU pool (DESIGN.md: staged through pinned host
 * buffers). A CUDA engine made with kv_staging has a second block
 * allocator over that many bytes of page-locked host memory, of the pool's
 * geometry and element type: the KV channel moves these blocks (register
 * pd_engine_kv_channel_pool's memory with kvx), and pd_engine_kv_stage
 * copies blocks between them and the device pool. Like the pool, the
 * compute thread's alone. pd_engine_kv_staging is NULL without one;
 * pd_engine_kv_channel_pool is the staging when there is one, else the pool
 * itself (a CPU engine's blocks go out as they are; a GPU engine's, made
 * with kv_direct, in device memory). */
struct pd_kvcache *pd_engine_kv_staging(struct pd_engine *e);
struct pd_kvcache *pd_engine_kv_channel_pool(struct pd_engine *e);
/* One line naming the path KV blocks take between the KV channel and the
 * pool (for the daemons' log): in place on the CPU, and on a GPU straight
 * from the device pool (kv_direct) or through the staging. */
void pd_engine_kv_path(struct pd_engine *e, char *buf, size_t n);
/* Copy n blocks: pool_blocks[i] -> stage_blocks[i] (to_host), or back.
 * Ordered after every step so far; returns when the copies are complete.
 * Runs of blocks consecutive on both sides go as one copy each. -EINVAL
 * (nothing copied) for an id outside either, or without staging. */
int pd_engine_kv_stage(struct pd_engine *e, bool to_host, const uint32_t *pool_blocks,
                       const uint32_t *stage_blocks, uint32_t n, char *err, size_t errlen);
/* A line the engine has for its caller's log (it logs nothing itself): a
 * KV staging too small for --max-model-len (after pd_engine_new), CUDA
 * graphs turned off after a failure (after a step). 1 with the line in buf
 * (then cleared), 0 when there is none. The engine's thread. */
int pd_engine_take_note(struct pd_engine *e, char *buf, size_t len);
/* One line on how the engine runs, for the caller's info log ("engine: CPU,
 * matrices as stored, float activations (Q4_1 x210, Q8_0 x1), 2 threads,
 * avx512vnni dots"); "" when the backend says nothing */
const char *pd_engine_describe(const struct pd_engine *e);
uint32_t pd_engine_n_vocab(const struct pd_engine *e);
uint32_t pd_engine_max_model_len(const struct pd_engine *e);
uint32_t pd_engine_max_batched_tokens(const struct pd_engine *e);
/* What one KV block of this engine is, as the KV channel's handshake names it
 * (proto/handshake.h): geometry, dtype, bytes and the model's fingerprint.
 * Both daemons send it; a peer with another one is refused. */
void pd_engine_kv_layout(const struct pd_engine *e, struct pd_kv_layout *out);

#endif
