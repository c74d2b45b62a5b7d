/* common/base/cfg internals: what cfg_value.c (one value), cfg.c (the
 * sources) and cfg_help.c (help, --print-config) share. Not a public
 * header. */
#ifndef PD_CFG_INTERNAL_H
#define PD_CFG_INTERNAL_H

#include "cfg.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ENV_PREFIX "PDSERVE_"
#define ENV_NAME_MAX 128

/* JSON numbers are doubles: integers beyond 2^53 are rounded by the parser,
 * so the file refuses them rather than silently storing another value. */
#define JSON_EXACT_INT_MAX 9007199254740992.0

/* Where a value came from; it decides the prefix of an error message. */
enum src_kind { SRC_DEFAULT, SRC_FILE, SRC_ENV, SRC_FLAG, SRC_API };
struct src {
    enum src_kind kind;
    const char *what; /* SRC_FILE: the path; SRC_API: the caller's source name */
};

/* How a text value lands in a LIST. */
enum list_mode {
    LIST_SPLIT, /* comma-separated, replaces (environment, table default) */
    LIST_REPLACE, /* one item, replaces (first --flag on the command line) */
    LIST_APPEND, /* one item, appended (later --flag occurrences) */
};

static inline void *cfg_field(const struct pd_cfg_opt *o, void *cfg)
{
    return (char *)cfg + o->offset;
}

static inline const void *cfg_cfield(const struct pd_cfg_opt *o, const void *cfg)
{
    return (const char *)cfg + o->offset;
}

static inline bool cfg_is_secret(const struct pd_cfg_opt *o)
{
    return o && (o->flags & PD_CFG_SECRET);
}

/* ---- cfg_value.c ---- */
/* PDSERVE_<NAME> for an option's name (dashes to underscores, upper case) */
void cfg_env_name(char *buf, size_t n, const char *name);
/* "a|b|c" */
void cfg_join_choices(char *buf, size_t n, const char *const *choices);
/* an option's range as its messages show it ("[1, 64]", "[4KiB, 1GiB]") */
void cfg_fmt_range(char *buf, size_t n, const struct pd_cfg_opt *o);

const struct pd_cfg_opt *cfg_find_opt(const struct pd_cfg_opt *table, const char *name, size_t len);
bool cfg_is_name(const char *s, size_t len, const char *name);
const char *cfg_escape(char *buf, size_t n, const char *s, size_t len, bool quote);
int cfg_fail_opt(int rc, char *err, size_t errlen, const struct src *s, const struct pd_cfg_opt *o,
                 const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
const char *cfg_errno_text(int e, char *buf, size_t n);
void cfg_list_clear(struct pd_cfg_list *l);
int cfg_list_push(struct pd_cfg_list *l, const char *s, size_t len);
int cfg_check_int(const struct pd_cfg_opt *o, void *cfg, int64_t v, const char *shown,
                  const struct src *s, char *err, size_t errlen);
int cfg_check_size(const struct pd_cfg_opt *o, void *cfg, uint64_t v, const char *shown,
                   const struct src *s, char *err, size_t errlen);
int cfg_check_double(const struct pd_cfg_opt *o, void *cfg, double v, const char *shown,
                     const struct src *s, char *err, size_t errlen);
int cfg_set_text(const struct pd_cfg_opt *o, void *cfg, const char *text, enum list_mode mode,
                 const struct src *s, char *err, size_t errlen);
int cfg_apply_defaults(const struct pd_cfg_opt *table, void *cfg, char *err, size_t errlen);
size_t cfg_str_cap(const struct pd_cfg_opt *o);

#endif
