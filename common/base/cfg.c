/* common/base/cfg: the option table's sources, in order of precedence
 * from low to high: table defaults, the JSON config file, the environment,
 * the command line; and pd_cfg_set, pd_cfg_done. One value's parsing and
 * checks are cfg_value.c's. */
#include "cfg.h"

#include "cfg_internal.h"
#include "errf.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

/* ---- the config file ---------------------------------------------------- */

static int read_file(const char *path, char **out, size_t *outlen, char *err, size_t errlen)
{
    char what[256], ebuf[128], *buf = NULL, *grown;
    size_t len = 0, cap = 0;
    ssize_t n;
    int fd, e;

    cfg_escape(what, sizeof(what), path, strlen(path), false);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        e = errno;
        return pd_errf(err, errlen, -e, "config file %s: %s", what,
                       cfg_errno_text(e, ebuf, sizeof(ebuf)));
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
            pd_errf(err, errlen, -e, "config file %s: %s", what, cfg_errno_text(e, ebuf, sizeof(ebuf)));
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

    cfg_fmt_range(range, sizeof(range), o);
    /* %.17g would show 0.1 as 0.10000000000000001; big integers need all digits */
    if (cfg_is_secret(o))
        snprintf(shown, sizeof(shown), "<secret>");
    else
        snprintf(shown, sizeof(shown), fabs(d) < 1e15 ? "%.15g" : "%.17g", d);
    if (d != floor(d))
        return cfg_fail_opt(-EINVAL, err, errlen, s, o, "%s is not an integer (range %s)", shown, range);
    /* 2^53 itself is refused too: 2^53 + 1 in the file parses to it */
    if (fabs(d) >= JSON_EXACT_INT_MAX)
        return cfg_fail_opt(-EINVAL, err, errlen, s, o,
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
        *(bool *)cfg_field(o, cfg) = cJSON_IsTrue(v);
        return 0;
    case PD_CFG_T_INT:
    case PD_CFG_T_SIZE:
        if (o->type == PD_CFG_T_SIZE && cJSON_IsString(v))
            return cfg_set_text(o, cfg, v->valuestring, LIST_SPLIT, s, err, errlen);
        if (!cJSON_IsNumber(v))
            break;
        rc = json_int(o, v, &i, s, err, errlen);
        if (rc < 0)
            return rc;
        if (cfg_is_secret(o))
            snprintf(shown, sizeof(shown), "<secret>");
        else
            snprintf(shown, sizeof(shown), "%" PRId64, i);
        if (o->type == PD_CFG_T_INT)
            return cfg_check_int(o, cfg, i, shown, s, err, errlen);
        if (i < 0) /* check_size compares unsigned; a negative is out of range */
            return cfg_check_size(o, cfg, UINT64_MAX, shown, s, err, errlen);
        return cfg_check_size(o, cfg, (uint64_t)i, shown, s, err, errlen);
    case PD_CFG_T_DOUBLE:
        if (!cJSON_IsNumber(v))
            break;
        if (cfg_is_secret(o))
            snprintf(shown, sizeof(shown), "<secret>");
        else
            snprintf(shown, sizeof(shown), "%g", v->valuedouble);
        return cfg_check_double(o, cfg, v->valuedouble, shown, s, err, errlen);
    case PD_CFG_T_STR:
        if (cJSON_IsNull(v)) { /* what pd_cfg_print writes for an unset string */
            free(*(char **)cfg_field(o, cfg));
            *(char **)cfg_field(o, cfg) = NULL;
            return 0;
        }
        /* fallthrough */
    case PD_CFG_T_ENUM:
        if (!cJSON_IsString(v))
            break;
        return cfg_set_text(o, cfg, v->valuestring, LIST_SPLIT, s, err, errlen);
    case PD_CFG_T_LIST:
        if (!cJSON_IsArray(v))
            break;
        cJSON_ArrayForEach(it, v) {
            if (!cJSON_IsString(it)) {
                rc = cfg_fail_opt(-EINVAL, err, errlen, s, o, "expected an array of strings, got %s at index %zu",
                              json_type(it), idx);
                goto list_fail;
            }
            if (next.n >= (size_t)o->max) {
                rc = cfg_fail_opt(-E2BIG, err, errlen, s, o, "more than %" PRId64 " values given (at most %" PRId64 ")",
                              o->max, o->max);
                goto list_fail;
            }
            if (strlen(it->valuestring) > PD_CFG_STR_MAX) {
                rc = cfg_fail_opt(-E2BIG, err, errlen, s, o, "item at index %zu is %zu bytes, over the %d-byte limit",
                              idx, strlen(it->valuestring), PD_CFG_STR_MAX);
                goto list_fail;
            }
            rc = cfg_list_push(&next, it->valuestring, strlen(it->valuestring));
            if (rc < 0) {
                rc = pd_errf(err, errlen, rc, "out of memory");
                goto list_fail;
            }
            idx++;
        }
        cfg_list_clear(cfg_field(o, cfg));
        *(struct pd_cfg_list *)cfg_field(o, cfg) = next;
        return 0;
    list_fail:
        cfg_list_clear(&next);
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
        cfg_join_choices(choices, sizeof(choices), o->choices);
        return cfg_fail_opt(-EINVAL, err, errlen, s, o, "expected a string (one of %s), got %s", choices,
                        json_type(v));
    }
    return cfg_fail_opt(-EINVAL, err, errlen, s, o, "expected %s, got %s", expected[o->type], json_type(v));
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

    cfg_escape(what, sizeof(what), path, strlen(path), false);
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
        const struct pd_cfg_opt *o = cfg_find_opt(table, it->string, strlen(it->string));

        cfg_escape(key, sizeof(key), it->string, strlen(it->string), true);
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
        rc = cfg_set_text(o, cfg, eq + 1, LIST_SPLIT, &s, err, errlen);
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
                       PD_CFG_MAX_POSITIONAL, cfg_escape(shown, sizeof(shown), a, strlen(a), true));
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

        if (cfg_is_name(name, nlen, "help") || cfg_is_name(name, nlen, "print-config") ||
            cfg_is_name(name, nlen, "version")) {
            if (val)
                return pd_errf(err, errlen, -EINVAL, "--%.*s takes no value", (int)nlen, name);
            if (cfg_is_name(name, nlen, "help"))
                sc->help = true;
            else if (cfg_is_name(name, nlen, "version"))
                sc->version = true;
            else
                sc->print = true;
            continue;
        }
        o = cfg_find_opt(table, name, nlen);
        if (!o && nlen > 3 && strncmp(name, "no-", 3) == 0) {
            o = cfg_find_opt(table, name + 3, nlen - 3);
            if (o && o->type != PD_CFG_T_BOOL)
                o = NULL;
            negated = o != NULL;
        }
        if (!o && !cfg_is_name(name, nlen, "config"))
            return pd_errf(err, errlen, -EINVAL, "unknown option --%s",
                           cfg_escape(shown, sizeof(shown), name, nlen, false));

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
        rc = cfg_set_text(o, cfg, val, listed[o - table] ? LIST_APPEND : LIST_REPLACE, &s, err, errlen);
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
    rc = cfg_apply_defaults(table, cfg, err, errlen);
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
    const struct pd_cfg_opt *o = name ? cfg_find_opt(table, name, strlen(name)) : NULL;
    char shown[80];

    if (!o)
        return pd_errf(err, errlen, -EINVAL, "unknown option %s",
                       name ? cfg_escape(shown, sizeof(shown), name, strlen(name), true) : "(null)");
    if (!value)
        return cfg_fail_opt(-EINVAL, err, errlen, &s, o, "missing value");
    return cfg_set_text(o, cfg, value, LIST_REPLACE, &s, err, errlen);
}

static size_t field_size(enum pd_cfg_type t)
{
    switch (t) {
    case PD_CFG_T_BOOL: return sizeof(bool);
    case PD_CFG_T_INT: return sizeof(int64_t);
    case PD_CFG_T_SIZE: return sizeof(uint64_t);
    case PD_CFG_T_DOUBLE: return sizeof(double);
    case PD_CFG_T_STR: return sizeof(char *);
    case PD_CFG_T_ENUM: return sizeof(int);
    case PD_CFG_T_LIST: return sizeof(struct pd_cfg_list);
    }
    return 0;
}

static bool same_value(const struct pd_cfg_opt *o, const void *a, const void *b)
{
    const void *fa = cfg_cfield(o, a), *fb = cfg_cfield(o, b);
    if (o->type == PD_CFG_T_STR) {
        const char *sa = *(char *const *)fa, *sb = *(char *const *)fb;
        return (!sa && !sb) || (sa && sb && strcmp(sa, sb) == 0);
    }
    if (o->type == PD_CFG_T_LIST) {
        const struct pd_cfg_list *la = fa, *lb = fb;
        if (la->n != lb->n)
            return false;
        for (size_t i = 0; i < la->n; i++)
            if (strcmp(la->items[i], lb->items[i]) != 0)
                return false;
        return true;
    }
    return memcmp(fa, fb, field_size(o->type)) == 0;
}

int pd_cfg_reload(const struct pd_cfg_opt *table, void *cur, void *next, char *restart,
                  size_t restart_len)
{
    int n = 0;
    size_t k = 0;
    if (restart_len)
        restart[0] = '\0';
    for (const struct pd_cfg_opt *o = table; o->name; o++) {
        if (same_value(o, cur, next))
            continue;
        if (o->flags & PD_CFG_RELOAD) {
            uint8_t tmp[sizeof(struct pd_cfg_list)];
            size_t sz = field_size(o->type);
            memcpy(tmp, cfg_field(o, cur), sz);
            memcpy(cfg_field(o, cur), cfg_field(o, next), sz);
            memcpy(cfg_field(o, next), tmp, sz);
            n++;
        } else if (k < restart_len) {
            int w = snprintf(restart + k, restart_len - k, "%s--%s", k ? ", " : "", o->name);
            k = w < 0 ? k : k + (size_t)w;
        }
    }
    return n;
}

void pd_cfg_done(const struct pd_cfg_opt *table, void *cfg)
{
    for (const struct pd_cfg_opt *o = table; o->name; o++) {
        if (o->type == PD_CFG_T_STR) {
            free(*(char **)cfg_field(o, cfg));
            *(char **)cfg_field(o, cfg) = NULL;
        } else if (o->type == PD_CFG_T_LIST) {
            cfg_list_clear(cfg_field(o, cfg));
        }
    }
}
