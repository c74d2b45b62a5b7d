#include "cfg.h"

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

/* ---- small helpers ------------------------------------------------------ */

static void *field(const struct pd_cfg_opt *o, void *cfg) { return (char *)cfg + o->offset; }

static const void *cfield(const struct pd_cfg_opt *o, const void *cfg)
{
    return (const char *)cfg + o->offset;
}

static bool is_secret(const struct pd_cfg_opt *o) { return o && (o->flags & PD_CFG_SECRET); }

static size_t str_cap(const struct pd_cfg_opt *o)
{
    if (o->max > 0 && o->max < PD_CFG_STR_MAX)
        return (size_t)o->max;
    return PD_CFG_STR_MAX;
}

static const struct pd_cfg_opt *find_opt(const struct pd_cfg_opt *table, const char *name, size_t len)
{
    for (const struct pd_cfg_opt *o = table; o->name; o++)
        if (strlen(o->name) == len && memcmp(o->name, name, len) == 0)
            return o;
    return NULL;
}

static bool is_name(const char *s, size_t len, const char *name)
{
    return strlen(name) == len && memcmp(s, name, len) == 0;
}

static void env_name(char *buf, size_t n, const char *name)
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
static const char *escape(char *buf, size_t n, const char *s, size_t len, bool quote)
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
    if (is_secret(o)) {
        snprintf(buf, n, "<secret>");
        return buf;
    }
    return escape(buf, n, s, strlen(s), true);
}

static void join_choices(char *buf, size_t n, const char *const *choices)
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

static void fmt_range(char *buf, size_t n, const struct pd_cfg_opt *o)
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

/* cfg's own argument order: the code first, as every call site reads it */

/* An error about one option's value, prefixed with where the value came from. */
static int fail_opt(int rc, char *err, size_t errlen, const struct src *s,
                    const struct pd_cfg_opt *o, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static int fail_opt(int rc, char *err, size_t errlen, const struct src *s,
                    const struct pd_cfg_opt *o, const char *fmt, ...)
{
    char what[256], env[ENV_NAME_MAX];
    va_list ap;
    int k = 0;

    if (!err || !errlen)
        return rc;
    switch (s->kind) {
    case SRC_DEFAULT:
        k = snprintf(err, errlen, "table default of \"%s\": ", o->name);
        break;
    case SRC_FILE:
        k = snprintf(err, errlen, "config file %s: key \"%s\": ",
                     escape(what, sizeof(what), s->what, strlen(s->what), false), o->name);
        break;
    case SRC_ENV:
        env_name(env, sizeof(env), o->name);
        k = snprintf(err, errlen, "environment %s: ", env);
        break;
    case SRC_FLAG:
        k = snprintf(err, errlen, "--%s: ", o->name);
        break;
    case SRC_API:
        k = snprintf(err, errlen, "%s: %s: ",
                     escape(what, sizeof(what), s->what, strlen(s->what), false), o->name);
        break;
    }
    if (k < 0 || (size_t)k >= errlen)
        return rc;
    va_start(ap, fmt);
    vsnprintf(err + k, errlen - (size_t)k, fmt, ap);
    va_end(ap);
    return rc;
}

static const char *errno_text(int e, char *buf, size_t n)
{
    /* GNU strerror_r: may return a static string instead of filling buf */
    return strerror_r(e, buf, n);
}

/* ---- lists -------------------------------------------------------------- */

static void list_clear(struct pd_cfg_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->items[i]);
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

static int list_push(struct pd_cfg_list *l, const char *s, size_t len)
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
    struct pd_cfg_list *cur = field(o, cfg), next = {0};
    const char *p = text;
    char shown[80];
    size_t len;
    int rc;

    /* An empty value empties the list: the only way to drop entries that a
     * lower source set. */
    if (!*text) {
        list_clear(cur);
        return 0;
    }
    if (mode == LIST_APPEND) {
        len = strlen(text);
        if (len > PD_CFG_STR_MAX)
            return fail_opt(-E2BIG, err, errlen, s, o, "value of %zu bytes is over the %d-byte limit",
                            len, PD_CFG_STR_MAX);
        if (cur->n >= (size_t)o->max)
            return fail_opt(-E2BIG, err, errlen, s, o, "more than %" PRId64 " values given (at most %" PRId64 ")",
                            o->max, o->max);
        rc = list_push(cur, text, len);
        return rc < 0 ? pd_errf(err, errlen, rc, "out of memory") : 0;
    }
    for (;;) {
        const char *comma = mode == LIST_SPLIT ? strchr(p, ',') : NULL;

        len = comma ? (size_t)(comma - p) : strlen(p);
        if (mode == LIST_SPLIT && len == 0) { /* "a,,b" or "a," is a typo, not an empty entry */
            rc = fail_opt(-EINVAL, err, errlen, s, o, "item %zu of %s is empty", next.n + 1,
                          is_secret(o) ? "<secret>" : escape(shown, sizeof(shown), text, strlen(text), true));
            goto out;
        }
        if (len > PD_CFG_STR_MAX) {
            rc = fail_opt(-E2BIG, err, errlen, s, o, "item %zu is %zu bytes, over the %d-byte limit",
                          next.n + 1, len, PD_CFG_STR_MAX);
            goto out;
        }
        if (next.n >= (size_t)o->max) {
            rc = fail_opt(-E2BIG, err, errlen, s, o, "more than %" PRId64 " values given (at most %" PRId64 ")",
                          o->max, o->max);
            goto out;
        }
        rc = list_push(&next, p, len);
        if (rc < 0) {
            rc = pd_errf(err, errlen, rc, "out of memory");
            goto out;
        }
        if (!comma)
            break;
        p = comma + 1;
    }
    list_clear(cur);
    *cur = next;
    return 0;
out:
    list_clear(&next);
    return rc;
}

/* ---- scalar parsing: text and JSON share the range checks --------------- */

static int check_int(const struct pd_cfg_opt *o, void *cfg, int64_t v, const char *shown,
                     const struct src *s, char *err, size_t errlen)
{
    char range[96];

    if (v < o->min || v > o->max) {
        fmt_range(range, sizeof(range), o);
        return fail_opt(-EINVAL, err, errlen, s, o, "%s is out of range %s", shown, range);
    }
    *(int64_t *)field(o, cfg) = v;
    return 0;
}

static int check_size(const struct pd_cfg_opt *o, void *cfg, uint64_t v, const char *shown,
                      const struct src *s, char *err, size_t errlen)
{
    char range[96];

    if (v < (uint64_t)o->min || v > (uint64_t)o->max) {
        fmt_range(range, sizeof(range), o);
        return fail_opt(-EINVAL, err, errlen, s, o, "%s is out of range %s", shown, range);
    }
    *(uint64_t *)field(o, cfg) = v;
    return 0;
}

static int check_double(const struct pd_cfg_opt *o, void *cfg, double v, const char *shown,
                        const struct src *s, char *err, size_t errlen)
{
    char range[96];

    fmt_range(range, sizeof(range), o);
    if (!isfinite(v))
        return fail_opt(-EINVAL, err, errlen, s, o, "%s is not a finite number (range %s)", shown, range);
    if (v < o->dmin || v > o->dmax)
        return fail_opt(-EINVAL, err, errlen, s, o, "%s is out of range %s", shown, range);
    *(double *)field(o, cfg) = v;
    return 0;
}

static int set_str(const struct pd_cfg_opt *o, void *cfg, const char *text, const struct src *s,
                   char *err, size_t errlen)
{
    char **dst = field(o, cfg), *copy;
    size_t len = strlen(text);

    if (len > str_cap(o))
        return fail_opt(-E2BIG, err, errlen, s, o, "value of %zu bytes is over the %zu-byte limit",
                        len, str_cap(o));
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
            *(int *)field(o, cfg) = i;
            return 0;
        }
    }
    join_choices(choices, sizeof(choices), o->choices);
    return fail_opt(-EINVAL, err, errlen, s, o, "%s is not one of %s",
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
static int set_text(const struct pd_cfg_opt *o, void *cfg, const char *text, enum list_mode mode,
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
    if (is_secret(o))
        snprintf(plain, sizeof(plain), "<secret>");
    else
        escape(plain, sizeof(plain), text, strlen(text), false);
    fmt_range(range, sizeof(range), o);
    switch (o->type) {
    case PD_CFG_T_BOOL:
        if (parse_bool(text, &b) < 0)
            return fail_opt(-EINVAL, err, errlen, s, o,
                            "%s is not a boolean (true|false, 1|0, yes|no, on|off)", shown);
        *(bool *)field(o, cfg) = b;
        return 0;
    case PD_CFG_T_INT:
        rc = parse_int(text, &i);
        if (rc == -ERANGE)
            return fail_opt(-EINVAL, err, errlen, s, o, "%s is out of range %s", plain, range);
        if (rc < 0)
            return fail_opt(-EINVAL, err, errlen, s, o, "%s is not an integer (range %s)", shown, range);
        return check_int(o, cfg, i, plain, s, err, errlen);
    case PD_CFG_T_SIZE:
        rc = parse_size(text, &u);
        if (rc == -ERANGE)
            return fail_opt(-EINVAL, err, errlen, s, o, "%s is out of range %s", plain, range);
        if (rc < 0)
            return fail_opt(-EINVAL, err, errlen, s, o,
                            "%s is not a size (digits with optional K, M, G, T suffix; range %s)",
                            shown, range);
        return check_size(o, cfg, u, plain, s, err, errlen);
    case PD_CFG_T_DOUBLE:
        if (parse_double(text, &d) < 0)
            return fail_opt(-EINVAL, err, errlen, s, o, "%s is not a number (range %s)", shown, range);
        return check_double(o, cfg, d, plain, s, err, errlen);
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
        assert(find_opt(table, o->name, strlen(o->name)) == o);
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
    case PD_CFG_T_BOOL: *(bool *)field(o, cfg) = false; break;
    case PD_CFG_T_INT: *(int64_t *)field(o, cfg) = 0; break;
    case PD_CFG_T_SIZE: *(uint64_t *)field(o, cfg) = 0; break;
    case PD_CFG_T_DOUBLE: *(double *)field(o, cfg) = 0.0; break;
    case PD_CFG_T_STR: *(char **)field(o, cfg) = NULL; break;
    case PD_CFG_T_ENUM: *(int *)field(o, cfg) = 0; break;
    case PD_CFG_T_LIST: *(struct pd_cfg_list *)field(o, cfg) = (struct pd_cfg_list){0}; break;
    }
}

/* The caller's struct may hold garbage: every field is written before any
 * source is read, so pd_cfg_done is safe whatever happens next. */
static int apply_defaults(const struct pd_cfg_opt *table, void *cfg, char *err, size_t errlen)
{
    const struct src s = {SRC_DEFAULT, NULL};
    int rc;

    check_table(table);
    for (const struct pd_cfg_opt *o = table; o->name; o++)
        reset_field(o, cfg);
    for (const struct pd_cfg_opt *o = table; o->name; o++) {
        if (!o->def)
            continue;
        rc = set_text(o, cfg, o->def, LIST_SPLIT, &s, err, errlen);
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

/* ---- the config file ---------------------------------------------------- */

static int read_file(const char *path, char **out, size_t *outlen, char *err, size_t errlen)
{
    char what[256], ebuf[128], *buf = NULL, *grown;
    size_t len = 0, cap = 0;
    ssize_t n;
    int fd, e;

    escape(what, sizeof(what), path, strlen(path), false);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        e = errno;
        return pd_errf(err, errlen, -e, "config file %s: %s", what,
                       errno_text(e, ebuf, sizeof(ebuf)));
    }
    /* read one byte past the cap so that "exactly at the cap" and "over it" differ */
    for (;;) {
        if (len == cap) {
            if (cap > PD_CFG_FILE_MAX) {
                e = E2BIG;
                pd_errf(err, errlen, -e, "config file %s: larger than %u bytes", what,
                        PD_CFG_FILE_MAX);
                goto out_err;
            }
            cap = cap ? cap * 2 : 4096;
            if (cap > PD_CFG_FILE_MAX + 1u)
                cap = PD_CFG_FILE_MAX + 1u;
            grown = realloc(buf, cap + 1);
            if (!grown) {
                e = ENOMEM;
                pd_errf(err, errlen, -e, "out of memory");
                goto out_err;
            }
            buf = grown;
        }
        n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            e = errno;
            pd_errf(err, errlen, -e, "config file %s: %s", what, errno_text(e, ebuf, sizeof(ebuf)));
            goto out_err;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    *out = buf;
    *outlen = len;
    return 0;
out_err:
    close(fd);
    free(buf);
    return -e;
}

static void line_col(const char *buf, const char *at, int *line, int *col)
{
    *line = 1;
    *col = 1;
    for (const char *p = buf; p < at; p++) {
        if (*p == '\n') {
            ++*line;
            *col = 1;
        } else {
            ++*col;
        }
    }
}

/* The depth is checked by hand because cJSON's own limit (1000) is far above
 * what a flat option file needs; containers past PD_CFG_JSON_DEPTH fail. */
static bool depth_ok(const cJSON *item, int depth)
{
    if (!cJSON_IsObject(item) && !cJSON_IsArray(item))
        return true;
    if (depth > PD_CFG_JSON_DEPTH)
        return false;
    for (const cJSON *c = item->child; c; c = c->next)
        if (!depth_ok(c, depth + 1))
            return false;
    return true;
}

static const char *json_type(const cJSON *v)
{
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "an unknown JSON type";
}

/* A JSON number as an int64, refusing fractions and values a double cannot
 * carry exactly. */
static int json_int(const struct pd_cfg_opt *o, const cJSON *v, int64_t *out, const struct src *s,
                    char *err, size_t errlen)
{
    double d = v->valuedouble;
    char range[96], shown[48];

    fmt_range(range, sizeof(range), o);
    /* %.17g would show 0.1 as 0.10000000000000001; big integers need all digits */
    if (is_secret(o))
        snprintf(shown, sizeof(shown), "<secret>");
    else
        snprintf(shown, sizeof(shown), fabs(d) < 1e15 ? "%.15g" : "%.17g", d);
    if (d != floor(d))
        return fail_opt(-EINVAL, err, errlen, s, o, "%s is not an integer (range %s)", shown, range);
    /* 2^53 itself is refused too: 2^53 + 1 in the file parses to it */
    if (fabs(d) >= JSON_EXACT_INT_MAX)
        return fail_opt(-EINVAL, err, errlen, s, o,
                        "%s is 2^53 or more, which a JSON number cannot carry exactly (range %s)%s",
                        shown, range, o->type == PD_CFG_T_SIZE ? "; write it as a string" : "");
    *out = (int64_t)d;
    return 0;
}

static int set_json(const struct pd_cfg_opt *o, void *cfg, const cJSON *v, const struct src *s,
                    char *err, size_t errlen)
{
    char shown[80], choices[256];
    struct pd_cfg_list next = {0};
    const cJSON *it;
    int64_t i = 0;
    size_t idx = 0;
    int rc;

    switch (o->type) {
    case PD_CFG_T_BOOL:
        if (!cJSON_IsBool(v))
            break;
        *(bool *)field(o, cfg) = cJSON_IsTrue(v);
        return 0;
    case PD_CFG_T_INT:
    case PD_CFG_T_SIZE:
        if (o->type == PD_CFG_T_SIZE && cJSON_IsString(v))
            return set_text(o, cfg, v->valuestring, LIST_SPLIT, s, err, errlen);
        if (!cJSON_IsNumber(v))
            break;
        rc = json_int(o, v, &i, s, err, errlen);
        if (rc < 0)
            return rc;
        if (is_secret(o))
            snprintf(shown, sizeof(shown), "<secret>");
        else
            snprintf(shown, sizeof(shown), "%" PRId64, i);
        if (o->type == PD_CFG_T_INT)
            return check_int(o, cfg, i, shown, s, err, errlen);
        if (i < 0) /* check_size compares unsigned; a negative is out of range */
            return check_size(o, cfg, UINT64_MAX, shown, s, err, errlen);
        return check_size(o, cfg, (uint64_t)i, shown, s, err, errlen);
    case PD_CFG_T_DOUBLE:
        if (!cJSON_IsNumber(v))
            break;
        if (is_secret(o))
            snprintf(shown, sizeof(shown), "<secret>");
        else
            snprintf(shown, sizeof(shown), "%g", v->valuedouble);
        return check_double(o, cfg, v->valuedouble, shown, s, err, errlen);
    case PD_CFG_T_STR:
        if (cJSON_IsNull(v)) { /* what pd_cfg_print writes for an unset string */
            free(*(char **)field(o, cfg));
            *(char **)field(o, cfg) = NULL;
            return 0;
        }
        /* fallthrough */
    case PD_CFG_T_ENUM:
        if (!cJSON_IsString(v))
            break;
        return set_text(o, cfg, v->valuestring, LIST_SPLIT, s, err, errlen);
    case PD_CFG_T_LIST:
        if (!cJSON_IsArray(v))
            break;
        cJSON_ArrayForEach(it, v) {
            if (!cJSON_IsString(it)) {
                rc = fail_opt(-EINVAL, err, errlen, s, o, "expected an array of strings, got %s at index %zu",
                              json_type(it), idx);
                goto list_fail;
            }
            if (next.n >= (size_t)o->max) {
                rc = fail_opt(-E2BIG, err, errlen, s, o, "more than %" PRId64 " values given (at most %" PRId64 ")",
                              o->max, o->max);
                goto list_fail;
            }
            if (strlen(it->valuestring) > PD_CFG_STR_MAX) {
                rc = fail_opt(-E2BIG, err, errlen, s, o, "item at index %zu is %zu bytes, over the %d-byte limit",
                              idx, strlen(it->valuestring), PD_CFG_STR_MAX);
                goto list_fail;
            }
            rc = list_push(&next, it->valuestring, strlen(it->valuestring));
            if (rc < 0) {
                rc = pd_errf(err, errlen, rc, "out of memory");
                goto list_fail;
            }
            idx++;
        }
        list_clear(field(o, cfg));
        *(struct pd_cfg_list *)field(o, cfg) = next;
        return 0;
    list_fail:
        list_clear(&next);
        return rc;
    }

    static const char *const expected[] = {
        [PD_CFG_T_BOOL] = "true or false",
        [PD_CFG_T_INT] = "an integer",
        [PD_CFG_T_SIZE] = "a number of bytes or a size string like \"4GiB\"",
        [PD_CFG_T_DOUBLE] = "a number",
        [PD_CFG_T_STR] = "a string or null",
        [PD_CFG_T_ENUM] = "a string",
        [PD_CFG_T_LIST] = "an array of strings",
    };
    if (o->type == PD_CFG_T_ENUM) {
        join_choices(choices, sizeof(choices), o->choices);
        return fail_opt(-EINVAL, err, errlen, s, o, "expected a string (one of %s), got %s", choices,
                        json_type(v));
    }
    return fail_opt(-EINVAL, err, errlen, s, o, "expected %s, got %s", expected[o->type], json_type(v));
}

static int load_file(const struct pd_cfg_opt *table, void *cfg, const char *path, size_t n_opts,
                     char *err, size_t errlen)
{
    const struct src s = {SRC_FILE, path};
    char what[256], key[80], *text = NULL;
    const char *end = NULL;
    bool *seen = NULL;
    cJSON *root = NULL;
    size_t len = 0;
    int rc, line, col;

    escape(what, sizeof(what), path, strlen(path), false);
    rc = read_file(path, &text, &len, err, errlen);
    if (rc < 0)
        return rc;
    root = cJSON_ParseWithLengthOpts(text, len, &end, false);
    if (!root) {
        line_col(text, end ? end : text, &line, &col);
        rc = pd_errf(err, errlen, -EINVAL, "config file %s: invalid JSON at line %d, column %d",
                     what, line, col);
        goto out;
    }
    /* without require_null_terminated cJSON stops after the first value */
    while (end < text + len && isspace((unsigned char)*end))
        end++;
    if (end != text + len) {
        line_col(text, end, &line, &col);
        rc = pd_errf(err, errlen, -EINVAL, "config file %s: trailing data at line %d, column %d",
                     what, line, col);
        goto out;
    }
    if (!cJSON_IsObject(root)) {
        rc = pd_errf(err, errlen, -EINVAL, "config file %s: must be one JSON object, not %s", what,
                     json_type(root));
        goto out;
    }
    if (!depth_ok(root, 1)) {
        rc = pd_errf(err, errlen, -E2BIG, "config file %s: nested deeper than %d levels", what,
                     PD_CFG_JSON_DEPTH);
        goto out;
    }
    seen = calloc(n_opts + 1, sizeof(*seen));
    if (!seen) {
        rc = pd_errf(err, errlen, -ENOMEM, "out of memory");
        goto out;
    }
    for (const cJSON *it = root->child; it; it = it->next) {
        const struct pd_cfg_opt *o = find_opt(table, it->string, strlen(it->string));

        escape(key, sizeof(key), it->string, strlen(it->string), true);
        if (strcmp(it->string, "config") == 0) {
            rc =
                pd_errf(err, errlen, -EINVAL,
                        "config file %s: key %s is not allowed (a config file cannot name another)",
                        what, key);
            goto out;
        }
        if (!o) {
            rc = pd_errf(err, errlen, -EINVAL, "config file %s: unknown key %s", what, key);
            goto out;
        }
        /* cJSON keeps both copies of a repeated key; refuse rather than guess which one counts */
        if (seen[o - table]) {
            rc = pd_errf(err, errlen, -EINVAL, "config file %s: key %s appears more than once",
                         what, key);
            goto out;
        }
        seen[o - table] = true;
        rc = set_json(o, cfg, it, &s, err, errlen);
        if (rc < 0)
            goto out;
    }
    rc = 0;
out:
    free(seen);
    cJSON_Delete(root);
    free(text);
    return rc;
}

/* ---- the environment ---------------------------------------------------- */

static const struct pd_cfg_opt *find_env_opt(const struct pd_cfg_opt *table, const char *key, size_t len)
{
    for (const struct pd_cfg_opt *o = table; o->name; o++) {
        size_t j = 0;

        if (strlen(o->name) != len)
            continue;
        for (; j < len; j++) {
            char c = o->name[j] == '-' ? '_' : (char)toupper((unsigned char)o->name[j]);

            if (key[j] != c)
                break;
        }
        if (j == len)
            return o;
    }
    return NULL;
}

static const char *env_get(char *const envp[], const char *name)
{
    size_t len = strlen(name);

    for (size_t i = 0; envp && envp[i]; i++)
        if (strncmp(envp[i], name, len) == 0 && envp[i][len] == '=')
            return envp[i] + len + 1;
    return NULL;
}

static int apply_env(const struct pd_cfg_opt *table, void *cfg, char *const envp[], char *err, size_t errlen)
{
    const struct src s = {SRC_ENV, NULL};
    const size_t plen = strlen(ENV_PREFIX);

    for (size_t i = 0; envp && envp[i]; i++) {
        const char *key = envp[i], *eq;
        const struct pd_cfg_opt *o;
        int rc;

        if (strncmp(key, ENV_PREFIX, plen) != 0 || !(eq = strchr(key, '=')))
            continue;
        key += plen;
        o = find_env_opt(table, key, (size_t)(eq - key));
        if (!o)
            continue; /* the environment is shared with other programs */
        rc = set_text(o, cfg, eq + 1, LIST_SPLIT, &s, err, errlen);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* ---- the command line --------------------------------------------------- */

struct argv_scan {
    bool help, print, version;
    const char *config; /* --config value, the last one counts */
    const char *positional[PD_CFG_MAX_POSITIONAL];
    int n_positional;
};

static int add_positional(struct argv_scan *sc, const char *a, char *err, size_t errlen)
{
    char shown[80];

    if (sc->n_positional >= PD_CFG_MAX_POSITIONAL)
        return pd_errf(err, errlen, -E2BIG, "too many positional arguments (at most %d): %s",
                       PD_CFG_MAX_POSITIONAL, escape(shown, sizeof(shown), a, strlen(a), true));
    sc->positional[sc->n_positional++] = a;
    return 0;
}

/* One walk over argv, done twice. Without cfg it checks the syntax and
 * collects --help, --print-config, --config and the positionals, so that
 * the file and the environment can be read before any flag is applied;
 * with cfg it applies the option values, which are the only thing left
 * that can fail. listed[i] marks LIST options already seen on this line. */
static int walk_argv(const struct pd_cfg_opt *table, int argc, char *const argv[], struct argv_scan *sc,
                     void *cfg, bool *listed, char *err, size_t errlen)
{
    const struct src s = {SRC_FLAG, NULL};
    char shown[80];
    int rc;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *name, *eq, *val;
        const struct pd_cfg_opt *o;
        size_t nlen;
        bool negated = false;

        if (strcmp(a, "--") == 0) {
            for (i++; !cfg && i < argc; i++)
                if ((rc = add_positional(sc, argv[i], err, errlen)) < 0)
                    return rc;
            break;
        }
        if (strncmp(a, "--", 2) != 0) {
            if (strcmp(a, "-h") == 0)
                sc->help = true;
            else if (!cfg && (rc = add_positional(sc, a, err, errlen)) < 0)
                return rc;
            continue;
        }
        name = a + 2;
        eq = strchr(name, '=');
        nlen = eq ? (size_t)(eq - name) : strlen(name);
        val = eq ? eq + 1 : NULL;

        if (is_name(name, nlen, "help") || is_name(name, nlen, "print-config") ||
            is_name(name, nlen, "version")) {
            if (val)
                return pd_errf(err, errlen, -EINVAL, "--%.*s takes no value", (int)nlen, name);
            if (is_name(name, nlen, "help"))
                sc->help = true;
            else if (is_name(name, nlen, "version"))
                sc->version = true;
            else
                sc->print = true;
            continue;
        }
        o = find_opt(table, name, nlen);
        if (!o && nlen > 3 && strncmp(name, "no-", 3) == 0) {
            o = find_opt(table, name + 3, nlen - 3);
            if (o && o->type != PD_CFG_T_BOOL)
                o = NULL;
            negated = o != NULL;
        }
        if (!o && !is_name(name, nlen, "config"))
            return pd_errf(err, errlen, -EINVAL, "unknown option --%s",
                           escape(shown, sizeof(shown), name, nlen, false));

        if (o && o->type == PD_CFG_T_BOOL) {
            /* a bare boolean never takes the next word: "--verbose file" keeps "file" positional */
            if (negated && val)
                return pd_errf(err, errlen, -EINVAL, "--no-%s takes no value", o->name);
            if (!val)
                val = negated ? "false" : "true";
        } else if (!val) {
            /* "--model --verbose" is a forgotten value, not a model named "--verbose";
             * a value that starts with "--" can still be given as --name=VALUE */
            if (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0)
                return pd_errf(err, errlen, -EINVAL, "--%.*s: missing value", (int)nlen, name);
            val = argv[++i];
        }

        if (!o) {
            if (!*val)
                return pd_errf(err, errlen, -EINVAL, "--config: empty file name");
            sc->config = val;
            continue;
        }
        if (!cfg)
            continue;
        rc = set_text(o, cfg, val, listed[o - table] ? LIST_APPEND : LIST_REPLACE, &s, err, errlen);
        if (rc < 0)
            return rc;
        listed[o - table] = true;
    }
    return 0;
}

/* ---- public ------------------------------------------------------------- */

int pd_cfg_parse_env(const struct pd_cfg_opt *table, void *cfg, int argc, char *const argv[],
                     char *const envp[], struct pd_cfg_args *args, char *err, size_t errlen)
{
    struct argv_scan sc = {0};
    const char *path;
    bool *listed;
    size_t n_opts = 0;
    int rc;

    if (err && errlen)
        err[0] = '\0';
    rc = apply_defaults(table, cfg, err, errlen);
    if (rc < 0)
        return rc;
    while (table[n_opts].name)
        n_opts++;
    if (!argv)
        argc = 0;

    rc = walk_argv(table, argc, argv, &sc, NULL, NULL, err, errlen);
    if (rc < 0)
        return rc;
    /* help and version must work when the file or the environment is what is broken */
    if (sc.help || sc.version) {
        path = NULL;
        goto done;
    }
    path = sc.config;
    if (!path) {
        path = env_get(envp, ENV_PREFIX "CONFIG");
        if (path && !*path) /* an empty variable is how a unit file unsets it */
            path = NULL;
    }
    if (path && (rc = load_file(table, cfg, path, n_opts, err, errlen)) < 0)
        return rc;
    rc = apply_env(table, cfg, envp, err, errlen);
    if (rc < 0)
        return rc;
    listed = calloc(n_opts + 1, sizeof(*listed));
    if (!listed)
        return pd_errf(err, errlen, -ENOMEM, "out of memory");
    rc = walk_argv(table, argc, argv, &sc, cfg, listed, err, errlen);
    free(listed);
    if (rc < 0)
        return rc;
done:
    if (args) {
        memset(args, 0, sizeof(*args));
        memcpy(args->positional, sc.positional, sizeof(sc.positional));
        args->n_positional = sc.n_positional;
        args->config_file = path;
    }
    return sc.help ? PD_CFG_HELP : sc.version ? PD_CFG_VERSION : sc.print ? PD_CFG_PRINT : PD_CFG_OK;
}

int pd_cfg_parse(const struct pd_cfg_opt *table, void *cfg, int argc, char *const argv[],
                 struct pd_cfg_args *args, char *err, size_t errlen)
{
    return pd_cfg_parse_env(table, cfg, argc, argv, environ, args, err, errlen);
}

int pd_cfg_set(const struct pd_cfg_opt *table, void *cfg, const char *name, const char *value,
               const char *source, char *err, size_t errlen)
{
    const struct src s = {source ? SRC_API : SRC_FLAG, source};
    const struct pd_cfg_opt *o = name ? find_opt(table, name, strlen(name)) : NULL;
    char shown[80];

    if (!o)
        return pd_errf(err, errlen, -EINVAL, "unknown option %s",
                       name ? escape(shown, sizeof(shown), name, strlen(name), true) : "(null)");
    if (!value)
        return fail_opt(-EINVAL, err, errlen, &s, o, "missing value");
    return set_text(o, cfg, value, LIST_REPLACE, &s, err, errlen);
}

static const char *metavar(const struct pd_cfg_opt *o)
{
    switch (o->type) {
    case PD_CFG_T_INT: return "N";
    case PD_CFG_T_SIZE: return "SIZE";
    case PD_CFG_T_DOUBLE: return "X";
    case PD_CFG_T_STR: return "TEXT";
    case PD_CFG_T_ENUM: return "NAME";
    case PD_CFG_T_LIST: return "ITEM";
    default: return "";
    }
}

static const char *type_name(const struct pd_cfg_opt *o)
{
    static const char *const names[] = {
        [PD_CFG_T_BOOL] = "boolean", [PD_CFG_T_INT] = "integer", [PD_CFG_T_SIZE] = "size",
        [PD_CFG_T_DOUBLE] = "number", [PD_CFG_T_STR] = "string", [PD_CFG_T_ENUM] = "choice",
        [PD_CFG_T_LIST] = "list",
    };
    return names[o->type];
}

#define HELP_COL_MAX 32

static void help_line(FILE *out, int width, const char *left, const char *text)
{
    if ((int)strlen(left) > width)
        fprintf(out, "%s\n%*s  %s\n", left, width, "", text);
    else
        fprintf(out, "%-*s  %s\n", width, left, text);
}

void pd_cfg_help(const struct pd_cfg_opt *table, const char *prog, const char *usage, FILE *out)
{
    char left[128], text[1024], range[96], choices[256], env[ENV_NAME_MAX];
    const char *slash = prog ? strrchr(prog, '/') : NULL;
    int width = (int)strlen("  --print-config");

    for (const struct pd_cfg_opt *o = table; o->name; o++) {
        if (o->flags & PD_CFG_HIDDEN)
            continue;
        int w = o->type == PD_CFG_T_BOOL ? snprintf(left, sizeof(left), "  --[no-]%s", o->name)
                                          : snprintf(left, sizeof(left), "  --%s %s", o->name, metavar(o));
        if (w > width && w <= HELP_COL_MAX)
            width = w;
    }

    fprintf(out, "usage: %s %s\n\noptions:\n", slash ? slash + 1 : prog ? prog : "",
            usage ? usage : "[options]");
    for (const struct pd_cfg_opt *o = table; o->name; o++) {
        size_t k = 0;

        if (o->flags & PD_CFG_HIDDEN)
            continue;
        if (o->type == PD_CFG_T_BOOL)
            snprintf(left, sizeof(left), "  --[no-]%s", o->name);
        else
            snprintf(left, sizeof(left), "  --%s %s", o->name, metavar(o));
        env_name(env, sizeof(env), o->name);

        k += (size_t)snprintf(text + k, sizeof(text) - k, "%s (%s", o->help ? o->help : "", type_name(o));
        if (o->def && !is_secret(o) && k < sizeof(text))
            k += (size_t)snprintf(text + k, sizeof(text) - k, "; default %s", o->def);
        fmt_range(range, sizeof(range), o);
        if (range[0] && k < sizeof(text))
            k += (size_t)snprintf(text + k, sizeof(text) - k, "; range %s", range);
        if (o->type == PD_CFG_T_ENUM && k < sizeof(text)) {
            join_choices(choices, sizeof(choices), o->choices);
            k += (size_t)snprintf(text + k, sizeof(text) - k, "; one of %s", choices);
        }
        if (o->type == PD_CFG_T_STR && k < sizeof(text))
            k += (size_t)snprintf(text + k, sizeof(text) - k, "; at most %zu bytes", str_cap(o));
        if (o->type == PD_CFG_T_LIST && k < sizeof(text))
            k += (size_t)snprintf(text + k, sizeof(text) - k, "; repeatable, at most %" PRId64, o->max);
        if (k < sizeof(text))
            k += (size_t)snprintf(text + k, sizeof(text) - k, "; env %s%s)", env,
                                  o->type == PD_CFG_T_LIST ? ", comma-separated" : "");
        help_line(out, width, left, text);
    }
    help_line(out, width, "  --config FILE", "JSON config file, one object keyed by option name (env PDSERVE_CONFIG)");
    help_line(out, width, "  --print-config", "print the merged configuration as JSON and exit");
    help_line(out, width, "  -h, --help", "show this help and exit");
    help_line(out, width, "  --version", "print the version and exit");
}

void pd_cfg_version(const char *prog, FILE *out)
{
    const char *slash = prog ? strrchr(prog, '/') : NULL;
    fprintf(out, "%s %s\n", slash ? slash + 1 : prog ? prog : "pdserve", PD_VERSION);
}

static cJSON *json_value(const struct pd_cfg_opt *o, const void *cfg)
{
    const void *f = cfield(o, cfg);
    char num[32];
    cJSON *arr;

    if (is_secret(o)) {
        bool set = o->type == PD_CFG_T_STR ? *(char *const *)f != NULL
                   : o->type == PD_CFG_T_LIST ? ((const struct pd_cfg_list *)f)->n > 0
                                              : true;
        return set ? cJSON_CreateString("<set>") : cJSON_CreateNull();
    }
    switch (o->type) {
    case PD_CFG_T_BOOL:
        return cJSON_CreateBool(*(const bool *)f);
    case PD_CFG_T_INT:
        /* raw text keeps all 64 bits; cJSON would go through a double */
        snprintf(num, sizeof(num), "%" PRId64, *(const int64_t *)f);
        return cJSON_CreateRaw(num);
    case PD_CFG_T_SIZE:
        snprintf(num, sizeof(num), "%" PRIu64, *(const uint64_t *)f);
        /* the reader refuses numbers past 2^53 but takes size strings */
        if (*(const uint64_t *)f >= (uint64_t)JSON_EXACT_INT_MAX)
            return cJSON_CreateString(num);
        return cJSON_CreateRaw(num);
    case PD_CFG_T_DOUBLE:
        return cJSON_CreateNumber(*(const double *)f);
    case PD_CFG_T_STR:
        return *(char *const *)f ? cJSON_CreateString(*(char *const *)f) : cJSON_CreateNull();
    case PD_CFG_T_ENUM:
        return cJSON_CreateString(o->choices[*(const int *)f]);
    case PD_CFG_T_LIST:
        arr = cJSON_CreateArray();
        for (size_t i = 0; arr && i < ((const struct pd_cfg_list *)f)->n; i++) {
            cJSON *s = cJSON_CreateString(((const struct pd_cfg_list *)f)->items[i]);

            if (!s || !cJSON_AddItemToArray(arr, s)) {
                cJSON_Delete(s);
                cJSON_Delete(arr);
                return NULL;
            }
        }
        return arr;
    }
    return NULL;
}

int pd_cfg_print(const struct pd_cfg_opt *table, const void *cfg, FILE *out)
{
    cJSON *root = cJSON_CreateObject();
    char *text;

    if (!root)
        return -ENOMEM;
    for (const struct pd_cfg_opt *o = table; o->name; o++) {
        cJSON *v = json_value(o, cfg);

        if (!v || !cJSON_AddItemToObject(root, o->name, v)) {
            cJSON_Delete(v);
            cJSON_Delete(root);
            return -ENOMEM;
        }
    }
    text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text)
        return -ENOMEM;
    fputs(text, out);
    fputc('\n', out);
    cJSON_free(text);
    return 0;
}

void pd_cfg_done(const struct pd_cfg_opt *table, void *cfg)
{
    for (const struct pd_cfg_opt *o = table; o->name; o++) {
        if (o->type == PD_CFG_T_STR) {
            free(*(char **)field(o, cfg));
            *(char **)field(o, cfg) = NULL;
        } else if (o->type == PD_CFG_T_LIST) {
            list_clear(field(o, cfg));
        }
    }
}

int pd_cfg_main(const struct pd_cfg_opt *table, void *cfg, int argc, char *const argv[],
                const char *prog, const char *usage, int max_positional,
                struct pd_cfg_args *args, int *exit_code)
{
    char err[512];
    int rc = pd_cfg_parse(table, cfg, argc, argv, args, err, sizeof(err));
    if (rc >= 0 && args->n_positional > max_positional) {
        snprintf(err, sizeof(err), "at most %d positional argument%s (%s)", max_positional,
                 max_positional == 1 ? "" : "s", usage);
        rc = -EINVAL;
    }
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", prog, err);
        *exit_code = 2;
    } else if (rc == PD_CFG_HELP) {
        pd_cfg_help(table, prog, usage, stdout);
        *exit_code = 0;
    } else if (rc == PD_CFG_VERSION) {
        pd_cfg_version(prog, stdout);
        *exit_code = 0;
    } else if (rc == PD_CFG_PRINT) {
        *exit_code = pd_cfg_print(table, cfg, stdout) < 0 ? 1 : 0;
    } else {
        return 0;
    }
    pd_cfg_done(table, cfg);
    return 1;
}
