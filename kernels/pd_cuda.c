/* The C side of the CUDA kernels: the log bridge (cuda_util.cu reports a
 * failed CUDA call through it). */
#include "pd_config.h"

#include "pd_cuda.h"

#include "log.h"

void pd_cuda_log_error(const char *line)
{
    pd_log(PD_LOG_ERR, "%s", line);
}
