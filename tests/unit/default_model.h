/* The default model's path for tests: $PDSERVE_MODEL, else
 * $PDSERVE_MODEL_DIR/<file>, else ~/.cache/pdserve/<file> (where
 * deploy/fetch-model.sh puts it; tests/run.sh exports PDSERVE_MODEL). */
#ifndef PD_TEST_DEFAULT_MODEL_H
#define PD_TEST_DEFAULT_MODEL_H

#include <stdio.h>
#include <stdlib.h>

static inline const char *pd_test_default_model_path(void)
{
    static char path[1024];
    const char *env = getenv("PDSERVE_MODEL");
    const char *dir = getenv("PDSERVE_MODEL_DIR");
    const char *home = getenv("HOME");
    if (env && *env)
        snprintf(path, sizeof(path), "%s", env);
    else if (dir && *dir)
        snprintf(path, sizeof(path), "%s/SmolLM2-135M-Instruct.Q4_1.gguf", dir);
    else
        snprintf(path, sizeof(path), "%s/.cache/pdserve/SmolLM2-135M-Instruct.Q4_1.gguf",
                 home ? home : "");
    return path;
}

#endif
