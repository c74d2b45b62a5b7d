/* common/model/model_load: the loader. Picks the source (a GGUF file or
 * image, or dummy weights), then binds the tensors to their roles and
 * fingerprints the model (model.c) whatever the source. */
#include "model_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const pd_model_load_formats[] = {"auto", "gguf", "dummy", "safetensors", NULL};


/* The common tail of every loader: bind tensors, fingerprint, hand over or free. */
static int finish_load(struct pd_model *m, int rc, struct pd_model **out, char *err,
                       size_t errlen)
{
    if (rc == 0 && (rc = pd_model_bind(m, err, errlen)) < 0 && m->name && err) {
        /* name the file or directory: binding's messages cannot */
        char inner[512];
        snprintf(inner, sizeof(inner), "%s", err);
        pd_errf(err, errlen, rc, "%s: %s", m->name, inner);
    }
    if (rc < 0) {
        pd_model_free(m);
        return rc;
    }
    pd_model_compute_fingerprint(m);
    *out = m;
    return 0;
}

int pd_model_load(const struct pd_model_params *p, struct pd_model **out, char *err,
                  size_t errlen)
{
    struct pd_model *m = calloc(1, sizeof(*m));

    if (!m)
        return pd_errf(err, errlen, -ENOMEM, "model: out of memory");
    int rc;
    if (p->load_format == PD_LOAD_DUMMY)
        rc = pd_model_load_dummy(m, p, err, errlen);
    else if (p->load_format == PD_LOAD_SAFETENSORS ||
             (p->load_format == PD_LOAD_AUTO && pd_model_path_is_dir(p->path)))
        rc = pd_model_load_hf(m, p->path, err, errlen);
    else
        rc = pd_model_load_gguf(m, p->path, err, errlen);
    return finish_load(m, rc, out, err, errlen);
}

int pd_model_load_image(const void *buf, size_t len, const char *name, struct pd_model **out,
                        char *err, size_t errlen)
{
    struct pd_model *m = calloc(1, sizeof(*m));
    int rc;

    if (!m)
        return pd_errf(err, errlen, -ENOMEM, "model: out of memory");
    rc = pd_model_load_gguf_image(m, buf, len, err, errlen);
    if (rc == 0 && !(m->name = strdup(name ? name : "(memory)")))
        rc = pd_errf(err, errlen, -ENOMEM, "model: out of memory");
    return finish_load(m, rc, out, err, errlen);
}
