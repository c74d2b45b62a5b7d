/* The default model for tests. Its path: $PDSERVE_MODEL, else
 * $PDSERVE_MODEL_DIR/<file>, else ~/.cache/pdserve/<file> (where
 * deploy/fetch-model.sh puts it; tests/run.sh exports PDSERVE_MODEL).
 * pd_test_load_model fails the test on a load error; pd_test_load_default_model
 * skips it (PD_SKIP) when the file is not there. */
#ifndef PD_TEST_DEFAULT_MODEL_H
#define PD_TEST_DEFAULT_MODEL_H

#include "model.h"
#include "pd_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

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

static inline struct pd_model *pd_test_load_model(const struct pd_model_params *p)
{
    struct pd_model *m = NULL;
    char err[512];
    if (pd_model_load(p, &m, err, sizeof(err)) < 0)
        PD_TEST_FAIL_("%s", err);
    return m;
}

static inline struct pd_model *pd_test_load_default_model(void)
{
    const char *path = pd_test_default_model_path();
    if (access(path, R_OK) != 0)
        PD_SKIP("default model not fetched (run deploy/fetch-model.sh or set PDSERVE_MODEL)");
    struct pd_model_params p = {.path = path};
    return pd_test_load_model(&p);
}

#endif
