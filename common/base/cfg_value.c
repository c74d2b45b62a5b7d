/* common/base/cfg_value: one option's value from text (the environment,
 * the command line) or a default, with the range checks the JSON file
 * shares; lists; error messages naming where a value came from. Below cfg.c
 * (the sources) and cfg_help.c. */
#include "cfg.h"

#include "cfg_internal.h"
#include "errf.h"

#include "pd_config.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <cjson/cJSON.h>

/* ---- small helpers ------------------------------------------------------ */

size_t cfg_str_cap(const struct pd_cfg_opt *o)
{
    if (o->max > 0 && o->max < PD_CFG_STR_MAX)
        return (size_t)o->max;
    return PD_CFG_STR_MAX;
}

const struct pd_cfg_opt *cfg_find_opt(const struct pd_cfg_opt *table, const char *name, size_t len)
{
    for (const struct pd_cfg_opt *o = table; o->name; o++)
        if (strlen(o->name) == len && memcmp(o->name, name, len) == 0)
            return o;
    return NULL;
}

const struct pd_cfg_opt *pd_cfg_find(const struct pd_cfg_opt *table, const char *name)
{
    return cfg_find_opt(table, name, strlen(name));
}

bool cfg_is_name(const char *s, size_t len, const char *name)
{
    return strlen(name) == len && memcmp(s, name, len) == 0;
}

void cfg_env_name(char *buf, size_t n, const char *name)
{
    size_t j = 0;

    for (const char *p = ENV_PREFIX; *p && j + 1 < n; p++)
        buf[j++] = *p;
    for (const char *p = name; *p && j + 1 < n; p++)
        buf[j++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    buf[j] = '\0';
}

/* Text quoted in an error is user input: escape control bytes and quotes so
 * the message stays one line, and cut long values. */
const char *cfg_escape(char *buf, size_t n, const char *s, size_t len, bool quote)
{
    static const size_t reserve = 4 + 3 + 1 + 1; /* widest escape, "...", quote, NUL */
    size_t i = 0, j = 0;

    assert(n > reserve);
    if (quote)
        buf[j++] = '"';
    for (; i < len && j + reserve < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c < 0x20 || c == 0x7f)
            j += (size_t)snprintf(buf + j, n - j, "\\x%02x", c);
        else if (c == '"' || c == '\\')
            j += (size_t)snprintf(buf + j, n - j, "\\%c", c);
        else
            buf[j++] = (char)c;
    }
    if (i < len) {
        memcpy(buf + j, "...", 3);
        j += 3;
    }
    if (quote)
        buf[j++] = '"';
    buf[j] = '\0';
    return buf;
}

/* A value as an error shows it: quoted text, or "<secret>". */
static const char *show(char *buf, size_t n, const struct pd_cfg_opt *o, const char *s)
{
    if (cfg_is_secret(o)) {
        snprintf(buf, n, "<secret>");
        return buf;
    }
    return cfg_escape(buf, n, s, strlen(s), true);
}

void cfg_join_choices(char *buf, size_t n, const char *const *choices)
{
    size_t j = 0;

    buf[0] = '\0';
    for (size_t i = 0; choices[i] && j < n; i++)
        j += (size_t)snprintf(buf + j, n - j, "%s%s", i ? "|" : "", choices[i]);
}

/* Sizes read best as the largest exact binary unit; the text parses back. */
static void fmt_size(char *buf, size_t n, uint64_t v)
{
    static const struct { unsigned shift; const char *unit; } units[] = {
        {40, "TiB"}, {30, "GiB"}, {20, "MiB"}, {10, "KiB"},
    };

    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (v && v % (UINT64_C(1) << units[i].shift) == 0) {
            snprintf(buf, n, "%" PRIu64 "%s", v >> units[i].shift, units[i].unit);
            return;
        }
    }
    snprintf(buf, n, "%" PRIu64, v);
}

void cfg_fmt_range(char *buf, size_t n, const struct pd_cfg_opt *o)
{
    char lo[32], hi[32];

    switch (o->type) {
    case PD_CFG_T_INT:
        snprintf(buf, n, "[%" PRId64 ", %" PRId64 "]", o->min, o->max);
        break;
    case PD_CFG_T_SIZE:
        fmt_size(lo, sizeof(lo), (uint64_t)o->min);
        fmt_size(hi, sizeof(hi), (uint64_t)o->max);
        snprintf(buf, n, "[%s, %s]", lo, hi);
        break;
    case PD_CFG_T_DOUBLE:
        snprintf(buf, n, "[%g, %g]", o->dmin, o->dmax);
        break;
    default:
        buf[0] = '\0';
    }
}

/* ---- errors ------------------------------------------------------------- */

/* An error about one option's value, prefixed with where the value came from. */
int cfg_fail_opt(int rc, char *err, size_t errlen, const struct src *s,
                 const struct pd_cfg_opt *o, const char *fmt, ...)
{
    char what[256], env[ENV_NAME_MAX];
    va_list ap;
    int k = 0;

    if (!err || !errlen)
        return rc;
    /* SRC_FILE's path, SRC_API's source name: user input, so escaped */
    const char *origin =
        s->what ? cfg_escape(what, sizeof(what), s->what, strlen(s->what), false) : "";
    switch (s->kind) {
    case SRC_DEFAULT:
        k = snprintf(err, errlen, "table default of \"%s\": ", o->name);
        break;
    case SRC_ENV:
        cfg_env_name(env, sizeof(env), o->name);
        k = snprintf(err, errlen, "environment %s: ", env);
        break;
    case SRC_FLAG:
        k = snprintf(err, errlen, "--%s: ", o->name);
        break;
    case SRC_FILE:
        k = snprintf(err, errlen, "config file %s: key \"%s\": ", origin, o->name);
        break;
    case SRC_API:
        k = snprintf(err, errlen, "%s: %s: ", origin, o->name);
        break;
    }
    if (k < 0 || (size_t)k >= errlen)
        return rc;
    va_start(ap, fmt);
    vsnprintf(err + k, errlen - (size_t)k, fmt, ap);
    va_end(ap);
    return rc;
}

const char *cfg_errno_text(int e, char *buf, size_t n)
{
    /* GNU strerror_r: may return a static string instead of filling buf */
    return strerror_r(e, buf, n);
}

/* ---- lists -------------------------------------------------------------- */

void cfg_list_clear(struct pd_cfg_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->items[i]);
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

int cfg_list_push(struct pd_cfg_list *l, const char *s, size_t len)
{
    char **items = realloc(l->items, (l->n + 1) * sizeof(*items));
    char *copy;

    if (!items)
        return -ENOMEM;
    l->items = items;
    copy = strndup(s, len);
    if (!copy)
        return -ENOMEM;
    l->items[l->n++] = copy;
    return 0;
}

/* Builds the new list aside and swaps it in, so a refused value leaves the
 * old list whole. */
static int set_list(const struct pd_cfg_opt *o, void *cfg, const char *text, enum list_mode mode,
                    const struct src *s, char *err, size_t errlen)
{
    struct pd_cfg_list *cur = cfg_field(o, cfg), next = {0};
    const char *p = text;
    char shown[80];
    size_t len;
    int rc;

    /* An empty value empties the list: the only way to drop entries that a
     * lower source set. */
    if (!*text) {
        cfg_list_clear(cur);
        return 0;
    }
    if (mode == LIST_APPEND) {
        len = strlen(text);
        if (len > PD_CFG_STR_MAX)
            return cfg_fail_opt(-E2BIG, err, errlen, s, o, "value of %zu bytes is over the %d-byte limit",
                            len, PD_CFG_STR_MAX);
        if (cur->n >= (size_t)o->max)
            return cfg_fail_opt(-E2BIG, err, errlen, s, o, "more than %" PRId64 " values given (at most %" PRId64 ")",
                            o->max, o->max);
        rc = cfg_list_push(cur, text, len);
        return rc < 0 ? pd_errf(err, errlen, rc, "out of memory") : 0;
    }
    for (;;) {
        const char *comma = mode == LIST_SPLIT ? strchr(p, ',') : NULL;

        len = comma ? (size_t)(comma - p) : strlen(p);
        if (mode == LIST_SPLIT && len == 0) { /* "a,,b" or "a," is a typo, not an empty entry */
            rc = cfg_fail_opt(-EINVAL, err, errlen, s, o, "item %zu of %s is empty", next.n + 1,
                          cfg_is_secret(o) ? "<secret>" : cfg_escape(shown, sizeof(shown), text, strlen(text), true));
            goto out;
        }
        if (len > PD_CFG_STR_MAX) {
            rc = cfg_fail_opt(-E2BIG, err, errlen, s, o, "item %zu is %zu bytes, over the %d-byte limit",
                          next.n + 1, len, PD_CFG_STR_MAX);
            goto out;
        }
        if (next.n >= (size_t)o->max) {
            rc = cfg_fail_opt(-E2BIG, err, errlen, s, o, "more than %" PRId64 " values given (at most %" PRId64 ")",
                          o->max, o->max);
            goto out;
        }
        rc = cfg_list_push(&next, p, len);
        if (rc < 0) {
            rc = pd_errf(err, errlen, rc, "out of memory");
            goto out;
        }
        if (!comma)
            break;
        p = comma + 1;
    }
    cfg_list_clear(cur);
    *cur = next;
    return 0;
out:
    cfg_list_clear(&next);
    return rc;
}

/* ---- scalar parsing: text and JSON share the range checks --------------- */

/* The refusal of a value (as shown) outside o's range. */
static int fail_range(const struct pd_cfg_opt *o, const char *shown, const struct src *s, char *err,
                      size_t errlen)
{
    char range[96];

    cfg_fmt_range(range, sizeof(range), o);
    return cfg_fail_opt(-EINVAL, err, errlen, s, o, "%s is out of range %s", shown, range);
}

int cfg_check_int(const struct pd_cfg_opt *o, void *cfg, int64_t v, const char *shown,
                  const struct src *s, char *err, size_t errlen)
{
    if (v < o->min || v > o->max)
        return fail_range(o, shown, s, err, errlen);
    *(int64_t *)cfg_field(o, cfg) = v;
    return 0;
}

int cfg_check_size(const struct pd_cfg_opt *o, void *cfg, uint64_t v, const char *shown,
                      const struct src *s, char *err, size_t errlen)
{
    if (v < (uint64_t)o->min || v > (uint64_t)o->max)
        return fail_range(o, shown, s, err, errlen);
    *(uint64_t *)cfg_field(o, cfg) = v;
    return 0;
}

int cfg_check_double(const struct pd_cfg_opt *o, void *cfg, double v, const char *shown,
                        const struct src *s, char *err, size_t errlen)
{
    if (!isfinite(v)) {
        char range[96];

        cfg_fmt_range(range, sizeof(range), o);
        return cfg_fail_opt(-EINVAL, err, errlen, s, o, "%s is not a finite number (range %s)",
                            shown, range);
    }
    if (v < o->dmin || v > o->dmax)
        return fail_range(o, shown, s, err, errlen);
    *(double *)cfg_field(o, cfg) = v;
    return 0;
}

static int set_str(const struct pd_cfg_opt *o, void *cfg, const char *text, const struct src *s,
                   char *err, size_t errlen)
{
    char **dst = cfg_field(o, cfg), *copy;
    size_t len = strlen(text);

    if (len > cfg_str_cap(o))
        return cfg_fail_opt(-E2BIG, err, errlen, s, o, "value of %zu bytes is over the %zu-byte limit",
                        len, cfg_str_cap(o));
    copy = strdup(text);
    if (!copy)
        return pd_errf(err, errlen, -ENOMEM, "out of memory");
    free(*dst);
    *dst = copy;
    return 0;
}

static int set_enum(const struct pd_cfg_opt *o, void *cfg, const char *text, const struct src *s,
                    char *err, size_t errlen)
{
    char shown[80], choices[256];

    for (int i = 0; o->choices[i]; i++) {
        if (strcmp(o->choices[i], text) == 0) {
            *(int *)cfg_field(o, cfg) = i;
            return 0;
        }
    }
    cfg_join_choices(choices, sizeof(choices), o->choices);
    return cfg_fail_opt(-EINVAL, err, errlen, s, o, "%s is not one of %s",
                    show(shown, sizeof(shown), o, text), choices);
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "1", "yes", "on"}, *const no[] = {"false", "0", "no", "off"};

    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -EINVAL;
}

/* strtoll alone accepts leading blanks, trailing junk and an empty string. */
static int parse_int(const char *s, int64_t *out)
{
    char *end;
    long long v;

    if (!*s || isspace((unsigned char)*s))
        return -EINVAL;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (*end)
        return -EINVAL;
    if (errno == ERANGE)
        return -ERANGE;
    *out = v;
    return 0;
}

/* digits, then K/M/G/T optionally followed by "iB" or "B" (any case), or a
 * bare "B"; units are powers of 1024. */
static int parse_size(const char *s, uint64_t *out)
{
    static const char units[] = "kmgt";
    uint64_t v = 0;
    unsigned shift = 0;
    const char *p = s, *u;

    if (!isdigit((unsigned char)*p))
        return -EINVAL;
    for (; isdigit((unsigned char)*p); p++) {
        unsigned d = (unsigned)(*p - '0');

        if (v > (UINT64_MAX - d) / 10)
            return -ERANGE;
        v = v * 10 + d;
    }
    if (*p && (u = strchr(units, tolower((unsigned char)*p))) != NULL) {
        shift = 10 * (unsigned)(u - units + 1);
        p++;
        if (strcasecmp(p, "ib") == 0 || strcasecmp(p, "b") == 0)
            p += strlen(p);
    } else if (strcasecmp(p, "b") == 0) {
        p++;
    }
    if (*p)
        return -EINVAL;
    if (shift && v > UINT64_MAX >> shift)
        return -ERANGE;
    *out = v << shift;
    return 0;
}

static int parse_double(const char *s, double *out)
{
    char *end;

    if (!*s || isspace((unsigned char)*s))
        return -EINVAL;
    /* ERANGE is not checked: overflow gives inf, which the caller refuses as
     * not finite, and an underflow to ~0 is a fine value */
    *out = strtod(s, &end);
    return *end ? -EINVAL : 0;
}

/* Every text source (defaults, environment, flags, pd_cfg_set) ends here. */
int cfg_set_text(const struct pd_cfg_opt *o, void *cfg, const char *text, enum list_mode mode,
                    const struct src *s, char *err, size_t errlen)
{
    char shown[80], plain[80], range[96];
    int64_t i;
    uint64_t u;
    double d;
    bool b;
    int rc;

    /* text that failed to parse is quoted; a number that parsed but is out
     * of range reads better bare ("70000 is out of range") */
    show(shown, sizeof(shown), o, text);
    if (cfg_is_secret(o))
        snprintf(plain, sizeof(plain), "<secret>");
    else
        cfg_escape(plain, sizeof(plain), text, strlen(text), false);
    cfg_fmt_range(range, sizeof(range), o);
    switch (o->type) {
    case PD_CFG_T_BOOL:
        if (parse_bool(text, &b) < 0)
            return cfg_fail_opt(-EINVAL, err, errlen, s, o,
                            "%s is not a boolean (true|false, 1|0, yes|no, on|off)", shown);
        *(bool *)cfg_field(o, cfg) = b;
        return 0;
    case PD_CFG_T_INT:
        rc = parse_int(text, &i);
        if (rc == -ERANGE)
            return cfg_fail_opt(-EINVAL, err, errlen, s, o, "%s is out of range %s", plain, range);
        if (rc < 0)
            return cfg_fail_opt(-EINVAL, err, errlen, s, o, "%s is not an integer (range %s)", shown, range);
        return cfg_check_int(o, cfg, i, plain, s, err, errlen);
    case PD_CFG_T_SIZE:
        rc = parse_size(text, &u);
        if (rc == -ERANGE)
            return cfg_fail_opt(-EINVAL, err, errlen, s, o, "%s is out of range %s", plain, range);
        if (rc < 0)
            return cfg_fail_opt(-EINVAL, err, errlen, s, o,
                            "%s is not a size (digits with optional K, M, G, T suffix; range %s)",
                            shown, range);
        return cfg_check_size(o, cfg, u, plain, s, err, errlen);
    case PD_CFG_T_DOUBLE:
        if (parse_double(text, &d) < 0)
            return cfg_fail_opt(-EINVAL, err, errlen, s, o, "%s is not a number (range %s)", shown, range);
        return cfg_check_double(o, cfg, d, plain, s, err, errlen);
    case PD_CFG_T_STR:
        return set_str(o, cfg, text, s, err, errlen);
    case PD_CFG_T_ENUM:
        return set_enum(o, cfg, text, s, err, errlen);
    case PD_CFG_T_LIST:
        return set_list(o, cfg, text, mode, s, err, errlen);
    }
    assert(!"unknown option type");
    return -EINVAL;
}

/* ---- defaults ----------------------------------------------------------- */

static void check_table(const struct pd_cfg_opt *table)
{
    for (const struct pd_cfg_opt *o = table; o->name; o++) {
        assert(*o->name && strspn(o->name, "abcdefghijklmnopqrstuvwxyz0123456789-") == strlen(o->name));
        assert(strcmp(o->name, "config") && strcmp(o->name, "help") && strcmp(o->name, "print-config") &&
               strcmp(o->name, "version"));
        assert(cfg_find_opt(table, o->name, strlen(o->name)) == o);
        assert(strlen(o->name) + sizeof(ENV_PREFIX) < ENV_NAME_MAX);
        switch (o->type) {
        case PD_CFG_T_INT:
            assert(o->def && o->min <= o->max);
            break;
        case PD_CFG_T_SIZE:
            assert(o->def && o->min >= 0 && o->min <= o->max);
            break;
        case PD_CFG_T_DOUBLE:
            assert(o->def && o->dmin <= o->dmax);
            break;
        case PD_CFG_T_ENUM:
            assert(o->def && o->choices && o->choices[0]);
            break;
        case PD_CFG_T_LIST:
            assert(o->max > 0);
            break;
        default:
            break;
        }
    }
}

static void reset_field(const struct pd_cfg_opt *o, void *cfg)
{
    switch (o->type) {
    case PD_CFG_T_BOOL: *(bool *)cfg_field(o, cfg) = false; break;
    case PD_CFG_T_INT: *(int64_t *)cfg_field(o, cfg) = 0; break;
    case PD_CFG_T_SIZE: *(uint64_t *)cfg_field(o, cfg) = 0; break;
    case PD_CFG_T_DOUBLE: *(double *)cfg_field(o, cfg) = 0.0; break;
    case PD_CFG_T_STR: *(char **)cfg_field(o, cfg) = NULL; break;
    case PD_CFG_T_ENUM: *(int *)cfg_field(o, cfg) = 0; break;
    case PD_CFG_T_LIST: *(struct pd_cfg_list *)cfg_field(o, cfg) = (struct pd_cfg_list){0}; break;
    }
}

/* The caller's struct may hold garbage: every field is written before any
 * source is read, so pd_cfg_done is safe whatever happens next. */
int cfg_apply_defaults(const struct pd_cfg_opt *table, void *cfg, char *err, size_t errlen)
{
    const struct src s = {SRC_DEFAULT, NULL};
    int rc;

    check_table(table);
    for (const struct pd_cfg_opt *o = table; o->name; o++)
        reset_field(o, cfg);
    for (const struct pd_cfg_opt *o = table; o->name; o++) {
        if (!o->def)
            continue;
        rc = cfg_set_text(o, cfg, o->def, LIST_SPLIT, &s, err, errlen);
        if (rc == -ENOMEM)
            return rc;
        if (rc < 0) {
            /* a broken table is the programmer's bug; say which entry before dying */
            fprintf(stderr, "pd_cfg: %s\n", err && errlen ? err : o->name);
            assert(!"option table default does not parse");
            return rc;
        }
    }
    return 0;
}

