/* decoded/api_field: the refusal and the field reader api.c and api_chat.c
 * share (api_internal.h), apart so that neither file calls into the other's. */
#include "api_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

int dec_api_fail(struct dec_api_err *e, int status, const char *param, const char *code,
                 const char *fmt, ...)
{
    va_list ap;
    e->status = status;
    e->param = param;
    e->code = code;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
    return status == 413 ? -E2BIG : -EINVAL;
}

const cJSON *dec_api_field(const cJSON *root, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    return v && !cJSON_IsNull(v) ? v : NULL;
}
