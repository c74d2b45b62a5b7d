/* common/base/errf.h: how a library function reports an error (STYLE.md: fill an
 * error buffer and return a code; the caller decides what to log).
 *
 *   return pd_errf(err, errlen, -EINVAL, "model: tensor %s is missing", name);
 *
 * Formats into err (when err is not NULL and errlen > 0; cut to fit) and
 * returns rc, so a failure is one statement. Header-only, so the codec in
 * proto/ can use it without linking the common library.
 */
#ifndef PD_ERRF_H
#define PD_ERRF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

__attribute__((format(printf, 4, 5))) static inline int pd_errf(char *err, size_t errlen, int rc,
                                                                const char *fmt, ...)
{
    va_list ap;
    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

#endif
