/* The C side of the CUDA kernels: this thread's last CUDA error line
 * (cuda_util.cu and matmul.cu set it on a failed call; the engine reads it
 * into its error message). */
#include "pd_config.h"

#include "pd_cuda.h"

#include <stdio.h>

static _Thread_local char last_error[512];

void pd_cuda_set_error(const char *line) { snprintf(last_error, sizeof(last_error), "%s", line); }

const char *pd_cuda_last_error(void) { return last_error; }
