/* kernels/tag: the KV channel's block tags on the GPU -- Poly1305
 * (libsodium's crypto_onetimeauth, RFC 8439 section 2.5) of
 * (prefix || block), one tag per job, bit-identical to libsodium so a GPU
 * peer and a CPU peer check each other's tags (DESIGN.md, "Integrity tags
 * per block").
 *
 *   struct pd_tag_job *jobs;              // device memory, n of them
 *   // host: one-time key (32 bytes: r || s) from libsodium, the 24-byte
 *   // prefix (request, epoch, block, length), the block's device address
 *   pd_tag_cuda(jobs, n, tags, stream);   // tags: n * 16 bytes, device memory
 *   pd_tag_verify_cuda(jobs, n, want, ok, stream); // ok[i] = 1 where tags match
 *
 * The host derives the keys and uploads them with the jobs; it never reads a
 * block. The CPU reference is libsodium itself (common/kvchan/auth_session.c,
 * pd_auth_tag_block); tests/kernels/test_tag.c holds the two to each other
 * and to known answers from an independent implementation.
 *
 * How (tag.cu): Poly1305 is h = sum m_i r^(n-i+1) mod 2^130-5 over the n
 * 16-byte chunks m_i of the message, each with 2^128 added (a final partial
 * chunk gets a 0x01 byte after it instead), then tag = (h + s) mod 2^128. A
 * polynomial evaluates in any grouping: with L lanes, lane j runs Horner's
 * rule with r^L over chunks j, j + L, j + 2L, ...; its sum is then scaled by
 * r^(n - its last chunk), and the lanes are added. One thread block of
 * PD_TAG_LANES threads per job: the powers r^1..r^L are built in shared
 * memory by doubling, the lanes' sums added by a tree. 130-bit values are
 * five 26-bit limbs in 32-bit words (32x32->64 multiplies). Comparisons of
 * tags are constant-time.
 */
#ifndef PD_TAG_H
#define PD_TAG_H

#include "pd_kernel.h"

#define PD_TAG_LEN 16
#define PD_TAG_KEY_LEN 32
#define PD_TAG_PREFIX_MAX 32
#define PD_TAG_LANES 512

/* One message: prefix (in the job, up to PD_TAG_PREFIX_MAX bytes) then len
 * bytes at data (device memory; any alignment, 8-byte aligned reads fastest). */
struct pd_tag_job {
    const void *data;
    uint64_t len;
    uint8_t key[PD_TAG_KEY_LEN]; /* one-time key: r (clamped here) || s */
    uint8_t prefix[PD_TAG_PREFIX_MAX];
    uint32_t prefix_len;
    uint32_t pad_;
};

PD_BEGIN_DECLS

/* tags[16 * i] = Poly1305(jobs[i].key, prefix || data). jobs and tags in
 * device memory. -EINVAL for n == 0 or NULL pointers. */
int pd_tag_cuda(const struct pd_tag_job *jobs, uint32_t n, uint8_t *tags,
                pd_stream_t stream); /* PD_HAVE_CUDA */
/* ok[i] = 1 where the computed tag equals want[16 * i], else 0; all device
 * memory. The comparison is constant-time. */
int pd_tag_verify_cuda(const struct pd_tag_job *jobs, uint32_t n, const uint8_t *want,
                       uint8_t *ok, pd_stream_t stream); /* PD_HAVE_CUDA */

PD_END_DECLS

#endif
