/* common/base/cfg: one option table per program drives long flags, a JSON config
 * file, environment variables, --help and --print-config.
 *
 *   struct my_cfg { int64_t kv_port; char *model; bool verbose; int device; };
 *   static const char *const devices[] = {"auto", "cpu", "cuda", NULL};
 *   static const struct pd_cfg_opt opts[] = {
 *       PD_CFG_INT("kv-port", struct my_cfg, kv_port, "14579", 1, 65535, "KV listen port"),
 *       PD_CFG_STR("model", struct my_cfg, model, NULL, 4096, "GGUF file"),
 *       PD_CFG_BOOL("verbose", struct my_cfg, verbose, "false", "more logging"),
 *       PD_CFG_ENUM("device", struct my_cfg, device, "auto", devices, "compute device"),
 *       PD_CFG_END,
 *   };
 *   struct my_cfg c;
 *   struct pd_cfg_args a;
 *   char err[256];
 *   int rc = pd_cfg_parse(opts, &c, argc, argv, &a, err, sizeof(err));
 *   if (rc < 0) { fprintf(stderr, "%s\n", err); exit(2); }
 *   if (rc == PD_CFG_HELP) { pd_cfg_help(opts, argv[0], "usage line", stdout); exit(0); }
 *   if (rc == PD_CFG_PRINT) { pd_cfg_print(opts, &c, stdout); exit(0); }
 *   if (rc == PD_CFG_VERSION) { pd_cfg_version("prefilld", stdout); exit(0); }
 *   ...
 *   pd_cfg_done(opts, &c);   // frees strings the parser allocated
 *
 * Sources and precedence, lowest to highest:
 *   1. the table's defaults
 *   2. the JSON config file named by --config FILE (or $PDSERVE_CONFIG): one
 *      object whose keys are option names ("kv-port": 14579); unknown keys,
 *      wrong JSON types and out-of-range values are refused
 *   3. environment variables PDSERVE_<NAME> (upper case, '-' -> '_'), e.g.
 *      PDSERVE_KV_PORT=14580; variables that name no option are ignored (the
 *      environment is shared by several programs)
 *   4. command-line flags: --name value, --name=value; for booleans also
 *      --name / --no-name
 * Every value, whatever its source, is parsed and range-checked by the same
 * code; an error names the option, the source, the bad value and the allowed
 * range or choices, and leaves *cfg holding only defaults-or-better values
 * that the caller must still release with pd_cfg_done.
 *
 * Value storage (the field at `offset` in the caller's struct):
 *   PD_CFG_BOOL   bool
 *   PD_CFG_INT    int64_t, [min, max]
 *   PD_CFG_SIZE   uint64_t, bytes; text accepts suffixes K, M, G, T (powers of
 *                 1024, optional "iB"/"B"), [min, max]
 *   PD_CFG_DOUBLE double, [dmin, dmax], finite
 *   PD_CFG_STR    char *, heap-allocated and owned by cfg (freed by
 *                 pd_cfg_done); NULL when unset; at most `max` bytes
 *   PD_CFG_ENUM   int, index into `choices` (NULL-terminated)
 *   PD_CFG_LIST   struct pd_cfg_list (repeatable flag, JSON array of strings or
 *                 comma-separated in the environment); at most `max` items;
 *                 a later source replaces an earlier one wholesale
 */
#ifndef PD_CFG_H
#define PD_CFG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum pd_cfg_type {
    PD_CFG_T_BOOL,
    PD_CFG_T_INT,
    PD_CFG_T_SIZE,
    PD_CFG_T_DOUBLE,
    PD_CFG_T_STR,
    PD_CFG_T_ENUM,
    PD_CFG_T_LIST,
};

enum {
    PD_CFG_SECRET = 1u << 0, /* --print-config shows "<set>" instead of the value */
    PD_CFG_HIDDEN = 1u << 1, /* not in --help (test hooks of test builds); set and printed
                              * like any other */
    PD_CFG_RELOAD = 1u << 2, /* SIGHUP applies a new value (pd_cfg_reload); --help says so */
};

#define PD_CFG_STR_MAX 4096 /* hard cap for any string value */
#define PD_CFG_FILE_MAX (1u << 20) /* config file size cap */
#define PD_CFG_JSON_DEPTH 4 /* the file is one flat object (lists nest one level) */

struct pd_cfg_list {
    char **items; /* owned; each item heap-allocated */
    size_t n;
};

struct pd_cfg_opt {
    const char *name; /* long flag without dashes, [a-z0-9-]; NULL ends the table */
    enum pd_cfg_type type;
    size_t offset; /* of the field in the caller's struct */
    const char *def; /* default as text, parsed like any source; NULL: unset (STR/LIST) */
    int64_t min, max; /* INT, SIZE (as uint64 range, max<=INT64_MAX), STR/LIST max length/items */
    double dmin, dmax; /* DOUBLE */
    const char *const *choices; /* ENUM */
    const char *help;
    unsigned flags;
};

/* Table entries; the _F forms take flags (PD_CFG_SECRET, PD_CFG_RELOAD, ...). */
#define PD_CFG_BOOL(n, T, f, d, h) \
    { .name = (n), .type = PD_CFG_T_BOOL, .offset = offsetof(T, f), .def = (d), .help = (h) }
#define PD_CFG_INT_F(n, T, f, d, lo, hi, h, fl) \
    { .name = (n), .type = PD_CFG_T_INT, .offset = offsetof(T, f), .def = (d), .min = (lo), .max = (hi), .help = (h), .flags = (fl) }
#define PD_CFG_INT(n, T, f, d, lo, hi, h) PD_CFG_INT_F(n, T, f, d, lo, hi, h, 0)
#define PD_CFG_SIZE(n, T, f, d, lo, hi, h) \
    { .name = (n), .type = PD_CFG_T_SIZE, .offset = offsetof(T, f), .def = (d), .min = (lo), .max = (hi), .help = (h) }
#define PD_CFG_DOUBLE(n, T, f, d, lo, hi, h) \
    { .name = (n), .type = PD_CFG_T_DOUBLE, .offset = offsetof(T, f), .def = (d), .dmin = (lo), .dmax = (hi), .help = (h) }
#define PD_CFG_STR_F(n, T, f, d, maxlen, h, fl) \
    { .name = (n), .type = PD_CFG_T_STR, .offset = offsetof(T, f), .def = (d), .max = (maxlen), .help = (h), .flags = (fl) }
#define PD_CFG_STR(n, T, f, d, maxlen, h) PD_CFG_STR_F(n, T, f, d, maxlen, h, 0)
#define PD_CFG_ENUM_F(n, T, f, d, ch, h, fl) \
    { .name = (n), .type = PD_CFG_T_ENUM, .offset = offsetof(T, f), .def = (d), .choices = (ch), .help = (h), .flags = (fl) }
#define PD_CFG_ENUM(n, T, f, d, ch, h) PD_CFG_ENUM_F(n, T, f, d, ch, h, 0)
#define PD_CFG_LIST_F(n, T, f, maxn, h, fl) \
    { .name = (n), .type = PD_CFG_T_LIST, .offset = offsetof(T, f), .max = (maxn), .help = (h), .flags = (fl) }
#define PD_CFG_LIST(n, T, f, maxn, h) PD_CFG_LIST_F(n, T, f, maxn, h, 0)
#define PD_CFG_END { .name = NULL }

/* Positional arguments left after the flags, in order (pointers into argv). */
#define PD_CFG_MAX_POSITIONAL 8
struct pd_cfg_args {
    const char *positional[PD_CFG_MAX_POSITIONAL];
    int n_positional;
    const char *config_file; /* the file read, or NULL (pointer into argv/environ) */
};

enum {
    PD_CFG_OK = 0,
    PD_CFG_HELP = 1, /* --help or -h was given: print help, exit 0 */
    PD_CFG_PRINT = 2, /* --print-config was given: print the merged config, exit 0 */
    PD_CFG_VERSION = 3, /* --version was given: pd_cfg_version, exit 0 */
};

/* Fill *cfg from the sources above. Returns PD_CFG_OK/HELP/PRINT/VERSION (help
 * wins over version, version over print; help and version need neither the
 * file nor the environment to be valid), or a negative
 * errno (-EINVAL bad value/unknown option, -ENOENT/-EACCES config file, -E2BIG
 * over a cap) with a one-line message in err. "--" ends the flags. More than
 * PD_CFG_MAX_POSITIONAL positionals is an error. On any return *cfg is fully
 * initialised and must be released with pd_cfg_done. */
int pd_cfg_parse(const struct pd_cfg_opt *table, void *cfg, int argc, char *const argv[],
                 struct pd_cfg_args *args, char *err, size_t errlen);

/* Same, with an explicit environment (NULL-terminated "K=V" array) for tests. */
int pd_cfg_parse_env(const struct pd_cfg_opt *table, void *cfg, int argc, char *const argv[],
                     char *const envp[], struct pd_cfg_args *args, char *err, size_t errlen);

/* Set one option from text, as a flag would (source names it in errors). */
int pd_cfg_set(const struct pd_cfg_opt *table, void *cfg, const char *name, const char *value,
               const char *source, char *err, size_t errlen);

/* --help text: usage line, then each option with type, default, range or
 * choices, env variable, and help. Always lists --config, --help, --print-config,
 * --version. */
void pd_cfg_help(const struct pd_cfg_opt *table, const char *prog, const char *usage, FILE *out);

/* "prog 0.1.0" (PD_VERSION, the build's project version) and a newline. */
void pd_cfg_version(const char *prog, FILE *out);

/* The merged configuration as a JSON object that --config accepts back
 * (secrets masked). Returns 0 or -ENOMEM. */
int pd_cfg_print(const struct pd_cfg_opt *table, const void *cfg, FILE *out);

/* A reload, table-driven: next is the configuration read again. Every
 * PD_CFG_RELOAD option whose value differs moves into cur (next keeps the
 * old value, for pd_cfg_done); every other option that differs keeps cur's
 * value and is named in restart ("--max-num-seqs, --port"; "" when none).
 * Returns how many reloadable options changed. */
int pd_cfg_reload(const struct pd_cfg_opt *table, void *cur, void *next, char *restart,
                  size_t restart_len);

/* The table's entry for an option name (without dashes), or NULL. */
const struct pd_cfg_opt *pd_cfg_find(const struct pd_cfg_opt *table, const char *name);

/* Free strings and lists the parser allocated; fields are left NULL/empty. */
void pd_cfg_done(const struct pd_cfg_opt *table, void *cfg);

/* The opening of a program's main: logging named for prog (pd_log_init),
 * pd_cfg_parse, then what every program does with the outcome. Returns 1
 * when main should return *exit_code at once (2 after printing "prog: error"
 * or "prog: more than max_positional arguments" to stderr; 0 after printing
 * --help, --print-config or --version), with the configuration already
 * released; 0 to go on with cfg and *args filled, and the log level set
 * from the table's "log-level" option (PD_LOG_CFG) when it has one. */
int pd_cfg_main(const struct pd_cfg_opt *table, void *cfg, int argc, char *const argv[],
                const char *prog, const char *usage, int max_positional,
                struct pd_cfg_args *args, int *exit_code);

#endif
