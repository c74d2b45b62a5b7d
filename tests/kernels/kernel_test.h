/* tests/kernels: what the kernel tests share: a seeded random stream
 * (PD_TEST_SEED sets rng_state in main) and the skip without a usable GPU. */
#ifndef PD_KERNEL_TEST_H
#define PD_KERNEL_TEST_H

#include "cuda_util.h"
#include "kernel_rng.h"
#include "pd_test.h"

#include <stdint.h>

/* Ends the test as skipped, with the probe's reason, without a usable GPU. */
static inline void need_gpu(void)
{
    static int rc = 1;
    static char why[256];
    if (rc == 1)
        rc = pd_cuda_probe(why, sizeof why);
    const char *reason = why;
    if (rc < 0)
        PD_SKIP(reason);
}

#endif
