/* The C side of the CUDA kernels: the device table and the log bridge. */
#include "pd_config.h"

#include "pd_cuda.h"

#include "log.h"

const struct pd_cuda_kernels pd_cuda_kernels = {
    .embed = pd_embed_cuda,
    .rmsnorm = pd_rmsnorm_cuda,
    .rope = pd_rope_cuda,
    .kv_write = pd_kv_write_cuda,
    .attention = pd_attention_cuda,
    .attention_prefill = pd_attention_prefill_cuda,
    .swiglu = pd_swiglu_cuda,
    .matmul = pd_matmul_cuda,
};

void pd_cuda_log_error(const char *line)
{
    pd_log(PD_LOG_ERR, "%s", line);
}
