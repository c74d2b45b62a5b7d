/* common/base/cfg: precedence, value syntax, file/env/flag errors, --help and
 * --print-config. Every parse uses an explicit environment so the tests do
 * not depend on the caller's. */
#include "cfg.h"
#include "pd_config.h"
#include "pd_test.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <unistd.h>

struct tcfg {
    bool verbose;
    int64_t kv_port;
    uint64_t kv_pool;
    double temperature;
    char *model;
    char *api_key;
    int device;
    struct pd_cfg_list peers;
};

static const char *const devices[] = {"auto", "cpu", "cuda", NULL};

static const struct pd_cfg_opt opts[] = {
    PD_CFG_BOOL("verbose", struct tcfg, verbose, "false", "more logging"),
    PD_CFG_INT("kv-port", struct tcfg, kv_port, "14579", 1, 65535, "KV listen port"),
    PD_CFG_SIZE("kv-pool", struct tcfg, kv_pool, "1GiB", 4096, INT64_C(1) << 40, "KV cache pool"),
    PD_CFG_DOUBLE("temperature", struct tcfg, temperature, "0.8", 0.0, 2.0, "sampling temperature"),
    PD_CFG_STR("model", struct tcfg, model, NULL, 64, "GGUF file"),
    {.name = "api-key", .type = PD_CFG_T_STR, .offset = offsetof(struct tcfg, api_key), .max = 256,
     .help = "bearer token", .flags = PD_CFG_SECRET},
    PD_CFG_ENUM("device", struct tcfg, device, "auto", devices, "compute device"),
    PD_CFG_LIST("peer", struct tcfg, peers, 3, "decode peers"),
    PD_CFG_END,
};

static char err[512];
static char *no_env[] = {NULL};

static int argc_of(char **argv)
{
    int n = 0;

    while (argv[n])
        n++;
    return n;
}

static int parse_full(struct tcfg *c, char **argv, char **envp, struct pd_cfg_args *a)
{
    err[0] = '\0';
    return pd_cfg_parse_env(opts, c, argc_of(argv), argv, envp, a, err, sizeof(err));
}

static int parse(struct tcfg *c, char **argv, char **envp)
{
    struct pd_cfg_args a;

    return parse_full(c, argv, envp, &a);
}

#define ARGV(...) ((char *[]){"prog", __VA_ARGS__, NULL})
#define ENVP(...) ((char *[]){__VA_ARGS__, NULL})
static char *argv_none[] = {"prog", NULL};

/* A temp config file; the caller unlinks it right after the parse. */
static void write_tmp(char path[static 32], const char *text)
{
    snprintf(path, 32, "/tmp/test_cfg.XXXXXX");
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    size_t len = strlen(text);
    CHECK(write(fd, text, len) == (ssize_t)len);
    close(fd);
}

static int parse_file(struct tcfg *c, const char *json, char **envp)
{
    char path[32], flag[64];
    int rc;

    write_tmp(path, json);
    snprintf(flag, sizeof(flag), "--config=%s", path);
    rc = parse(c, ARGV(flag), envp);
    unlink(path);
    return rc;
}

/* ---- precedence --------------------------------------------------------- */

static void cfg_defaults_apply(void)
{
    struct tcfg c;

    memset(&c, 0xa5, sizeof(c)); /* garbage in the caller's struct must not matter */
    CHECK_EQ_INT(parse(&c, argv_none, no_env), PD_CFG_OK);
    CHECK(!c.verbose);
    CHECK_EQ_INT(c.kv_port, 14579);
    CHECK_EQ_INT(c.kv_pool, 1ull << 30);
    CHECK(c.temperature == 0.8);
    CHECK(c.model == NULL);
    CHECK(c.api_key == NULL);
    CHECK_EQ_INT(c.device, 0);
    CHECK_EQ_INT(c.peers.n, 0);
    pd_cfg_done(opts, &c);
}

static void cfg_file_overrides_default(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse_file(&c, "{\"kv-port\": 2000, \"device\": \"cpu\"}", no_env), PD_CFG_OK);
    CHECK_EQ_INT(c.kv_port, 2000);
    CHECK_EQ_INT(c.device, 1);
    pd_cfg_done(opts, &c);
}

static void cfg_env_overrides_file(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse_file(&c, "{\"kv-port\": 2000}", ENVP("PDSERVE_KV_PORT=3000")), PD_CFG_OK);
    CHECK_EQ_INT(c.kv_port, 3000);
    pd_cfg_done(opts, &c);
}

static void cfg_flag_overrides_env(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--kv-port", "4000"), ENVP("PDSERVE_KV_PORT=3000")), PD_CFG_OK);
    CHECK_EQ_INT(c.kv_port, 4000);
    pd_cfg_done(opts, &c);
}

static void cfg_precedence_all_four_sources(void)
{
    char path[32], flag[64];
    struct tcfg c;
    int rc;

    /* each option is set by every source up to the one that should win */
    write_tmp(path, "{\"kv-port\": 2000, \"model\": \"file.gguf\", \"device\": \"cpu\"}");
    snprintf(flag, sizeof(flag), "--config=%s", path);
    rc = parse(&c, ARGV(flag, "--device", "cuda"),
               ENVP("PDSERVE_MODEL=env.gguf", "PDSERVE_DEVICE=auto"));
    unlink(path);
    CHECK_EQ_INT(rc, PD_CFG_OK);
    CHECK(c.temperature == 0.8); /* default */
    CHECK_EQ_INT(c.kv_port, 2000); /* file */
    CHECK_STR(c.model, "env.gguf"); /* env */
    CHECK_EQ_INT(c.device, 2); /* flag */
    pd_cfg_done(opts, &c);
}

static void cfg_config_file_from_env(void)
{
    char path[32], var[64];
    struct pd_cfg_args a;
    struct tcfg c;
    int rc;

    write_tmp(path, "{\"kv-port\": 2001}");
    snprintf(var, sizeof(var), "PDSERVE_CONFIG=%s", path);
    rc = parse_full(&c, argv_none, ENVP(var), &a);
    unlink(path);
    CHECK_EQ_INT(rc, PD_CFG_OK);
    CHECK_EQ_INT(c.kv_port, 2001);
    CHECK_STR(a.config_file, path);
    pd_cfg_done(opts, &c);
}

static void cfg_config_flag_beats_env_config(void)
{
    char path[32];
    struct tcfg c;
    int rc;

    write_tmp(path, "{\"kv-port\": 2002}");
    rc = parse(&c, ARGV("--config", path), ENVP("PDSERVE_CONFIG=/nonexistent/pdserve.json"));
    unlink(path);
    CHECK_EQ_INT(rc, PD_CFG_OK);
    CHECK_EQ_INT(c.kv_port, 2002);
    pd_cfg_done(opts, &c);
}

static void cfg_flag_equals_and_separate_forms(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--kv-port=5", "--model", "m.gguf"), no_env), PD_CFG_OK);
    CHECK_EQ_INT(c.kv_port, 5);
    CHECK_STR(c.model, "m.gguf");
    pd_cfg_done(opts, &c);
}

static void cfg_later_flag_wins(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--kv-port=5", "--kv-port=6"), no_env), PD_CFG_OK);
    CHECK_EQ_INT(c.kv_port, 6);
    pd_cfg_done(opts, &c);
}

/* ---- flags -------------------------------------------------------------- */

static void cfg_rejects_unknown_flag(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--kv-prot=5"), no_env), -EINVAL);
    CHECK_STR(err, "unknown option --kv-prot");
    pd_cfg_done(opts, &c);
}

static void cfg_missing_value_rejected(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--kv-port"), no_env), -EINVAL);
    CHECK_CONTAINS(err, "--kv-port");
    CHECK_CONTAINS(err, "missing value");
    pd_cfg_done(opts, &c);
}

static void cfg_value_looking_like_flag_is_missing(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--model", "--verbose"), no_env), -EINVAL);
    CHECK_CONTAINS(err, "--model: missing value");
    pd_cfg_done(opts, &c);
    /* the = form still takes it */
    CHECK_EQ_INT(parse(&c, ARGV("--model=--verbose"), no_env), PD_CFG_OK);
    CHECK_STR(c.model, "--verbose");
    CHECK(!c.verbose);
    pd_cfg_done(opts, &c);
}

static void cfg_config_flag_missing_value_rejected(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--config"), no_env), -EINVAL);
    CHECK_CONTAINS(err, "--config: missing value");
    pd_cfg_done(opts, &c);
}

static void cfg_positional_collected(void)
{
    struct pd_cfg_args a;
    struct tcfg c;

    CHECK_EQ_INT(parse_full(&c, ARGV("one", "--verbose", "two", "-"), no_env, &a), PD_CFG_OK);
    CHECK(c.verbose);
    CHECK_EQ_INT(a.n_positional, 3);
    CHECK_STR(a.positional[0], "one");
    CHECK_STR(a.positional[1], "two");
    CHECK_STR(a.positional[2], "-"); /* a lone dash is stdin by convention, not a flag */
    CHECK(a.config_file == NULL);
    pd_cfg_done(opts, &c);
}

static void cfg_bare_bool_does_not_take_next_word(void)
{
    struct pd_cfg_args a;
    struct tcfg c;

    CHECK_EQ_INT(parse_full(&c, ARGV("--verbose", "false"), no_env, &a), PD_CFG_OK);
    CHECK(c.verbose);
    CHECK_EQ_INT(a.n_positional, 1);
    CHECK_STR(a.positional[0], "false");
    pd_cfg_done(opts, &c);
}

static void cfg_too_many_positionals_rejected(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("1", "2", "3", "4", "5", "6", "7", "8", "9"), no_env), -E2BIG);
    CHECK_CONTAINS(err, "at most 8");
    CHECK_CONTAINS(err, "\"9\"");
    pd_cfg_done(opts, &c);
}

static void cfg_double_dash_ends_flags(void)
{
    struct pd_cfg_args a;
    struct tcfg c;

    CHECK_EQ_INT(parse_full(&c, ARGV("--verbose", "--", "--kv-port=9", "-h", "--help"), no_env, &a), PD_CFG_OK);
    CHECK(c.verbose);
    CHECK_EQ_INT(c.kv_port, 14579);
    CHECK_EQ_INT(a.n_positional, 3);
    CHECK_STR(a.positional[0], "--kv-port=9");
    CHECK_STR(a.positional[1], "-h");
    CHECK_STR(a.positional[2], "--help");
    pd_cfg_done(opts, &c);
}

static void cfg_help_flag_returns_help(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--help"), no_env), PD_CFG_HELP);
    pd_cfg_done(opts, &c);
    CHECK_EQ_INT(parse(&c, ARGV("-h"), no_env), PD_CFG_HELP);
    pd_cfg_done(opts, &c);
}

static void cfg_help_ignores_broken_config_file(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--config=/nonexistent/pdserve.json", "--help"), ENVP("PDSERVE_KV_PORT=abc")),
                 PD_CFG_HELP);
    CHECK_EQ_INT(c.kv_port, 14579);
    pd_cfg_done(opts, &c);
}

static void cfg_version_flag_returns_version(void)
{
    struct tcfg c;
    char *buf = NULL;
    size_t len = 0;
    FILE *f;

    /* like help: a broken file or environment does not stop it */
    CHECK_EQ_INT(parse(&c, ARGV("--config=/nonexistent/pdserve.json", "--version"),
                       ENVP("PDSERVE_KV_PORT=abc")), PD_CFG_VERSION);
    pd_cfg_done(opts, &c);
    CHECK_EQ_INT(parse(&c, ARGV("--version", "--help"), no_env), PD_CFG_HELP);
    pd_cfg_done(opts, &c);
    CHECK_EQ_INT(parse(&c, ARGV("--print-config", "--version"), no_env), PD_CFG_VERSION);
    pd_cfg_done(opts, &c);
    CHECK_EQ_INT(parse(&c, ARGV("--version=1"), no_env), -EINVAL);
    pd_cfg_done(opts, &c);

    f = open_memstream(&buf, &len);
    CHECK(f);
    pd_cfg_version("/usr/bin/prefilld", f);
    fclose(f);
    CHECK_STR(buf, "prefilld " PD_VERSION "\n");
    free(buf);
}

static void cfg_print_config_returns_print(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--print-config", "--kv-port=7"), no_env), PD_CFG_PRINT);
    CHECK_EQ_INT(c.kv_port, 7); /* the merged values are there to print */
    pd_cfg_done(opts, &c);
}

static void cfg_print_config_still_reports_errors(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--print-config", "--kv-port=0"), no_env), -EINVAL);
    CHECK_CONTAINS(err, "--kv-port");
    pd_cfg_done(opts, &c);
}

static void cfg_meta_flags_take_no_value(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--help=yes"), no_env), -EINVAL);
    CHECK_STR(err, "--help takes no value");
    pd_cfg_done(opts, &c);
}

/* ---- value syntax ------------------------------------------------------- */

static void cfg_rejects_out_of_range_int_naming_range(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--kv-port", "70000"), no_env), -EINVAL);
    CHECK_STR(err, "--kv-port: 70000 is out of range [1, 65535]");
    CHECK_EQ_INT(c.kv_port, 14579); /* the refused value was not stored */
    pd_cfg_done(opts, &c);
}

static void cfg_rejects_int_trailing_junk(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--kv-port=80x"), no_env), -EINVAL);
    CHECK_STR(err, "--kv-port: \"80x\" is not an integer (range [1, 65535])");
    pd_cfg_done(opts, &c);
    CHECK_EQ_INT(parse(&c, ARGV("--kv-port= 80"), no_env), -EINVAL);
    pd_cfg_done(opts, &c);
    CHECK_EQ_INT(parse(&c, ARGV("--kv-port="), no_env), -EINVAL);
    pd_cfg_done(opts, &c);
}

static void cfg_rejects_int_overflow(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--kv-port=99999999999999999999999"), no_env), -EINVAL);
    CHECK_CONTAINS(err, "out of range [1, 65535]");
    pd_cfg_done(opts, &c);
}

static void cfg_env_error_names_variable(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, argv_none, ENVP("PDSERVE_KV_PORT=abc")), -EINVAL);
    CHECK_STR(err, "environment PDSERVE_KV_PORT: \"abc\" is not an integer (range [1, 65535])");
    pd_cfg_done(opts, &c);
}

static void cfg_rejects_bad_enum_listing_choices(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--device", "gpu"), no_env), -EINVAL);
    CHECK_STR(err, "--device: \"gpu\" is not one of auto|cpu|cuda");
    pd_cfg_done(opts, &c);
}

static void cfg_enum_is_case_sensitive(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--device=CPU"), no_env), -EINVAL);
    pd_cfg_done(opts, &c);
}

static void cfg_size_suffixes(void)
{
    static const struct { const char *text; uint64_t v; } cases[] = {
        {"4096", 4096}, {"4096B", 4096}, {"8K", 8192}, {"8kib", 8192}, {"8KB", 8192},
        {"512M", 512ull << 20}, {"4GiB", 4ull << 30}, {"4g", 4ull << 30}, {"1T", 1ull << 40},
    };
    char flag[64];
    struct tcfg c;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(flag, sizeof(flag), "--kv-pool=%s", cases[i].text);
        CHECK_EQ_INT(parse(&c, ARGV(flag), no_env), PD_CFG_OK);
        CHECK_EQ_INT(c.kv_pool, cases[i].v);
        pd_cfg_done(opts, &c);
    }
}

static void cfg_size_bad_syntax_rejected(void)
{
    static const char *const bad[] = {"4Q", "4GiBx", "4 G", "-4K", "4.5G", "G", "4Gi", "", "4iB"};
    char flag[64];
    struct tcfg c;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(flag, sizeof(flag), "--kv-pool=%s", bad[i]);
        CHECK_EQ_INT(parse(&c, ARGV(flag), no_env), -EINVAL);
        CHECK_CONTAINS(err, "is not a size");
        pd_cfg_done(opts, &c);
    }
}

static void cfg_size_overflow_rejected(void)
{
    struct tcfg c;

    /* (2^24 + 1) T is 2^64 + 2^40 bytes: an unchecked shift wraps to 1 TiB, in range */
    CHECK_EQ_INT(parse(&c, ARGV("--kv-pool=16777217T"), no_env), -EINVAL);
    CHECK_CONTAINS(err, "out of range [4KiB, 1TiB]");
    pd_cfg_done(opts, &c);
    /* 2^64 + 8192: unchecked digits wrap to 8 KiB, in range */
    CHECK_EQ_INT(parse(&c, ARGV("--kv-pool=18446744073709559808"), no_env), -EINVAL);
    CHECK_CONTAINS(err, "out of range");
    pd_cfg_done(opts, &c);
}

static void cfg_size_range_checked(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--kv-pool=2T"), no_env), -EINVAL);
    CHECK_STR(err, "--kv-pool: 2T is out of range [4KiB, 1TiB]");
    pd_cfg_done(opts, &c);
    CHECK_EQ_INT(parse(&c, ARGV("--kv-pool=4095"), no_env), -EINVAL);
    pd_cfg_done(opts, &c);
}

static void cfg_double_range_and_finite(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--temperature=1.5"), no_env), PD_CFG_OK);
    CHECK(c.temperature == 1.5);
    pd_cfg_done(opts, &c);
    CHECK_EQ_INT(parse(&c, ARGV("--temperature=2.5"), no_env), -EINVAL);
    CHECK_STR(err, "--temperature: 2.5 is out of range [0, 2]");
    pd_cfg_done(opts, &c);
    CHECK_EQ_INT(parse(&c, ARGV("--temperature=nan"), no_env), -EINVAL);
    CHECK_CONTAINS(err, "not a finite number");
    pd_cfg_done(opts, &c);
    CHECK_EQ_INT(parse(&c, ARGV("--temperature=1e999"), no_env), -EINVAL);
    pd_cfg_done(opts, &c);
    CHECK_EQ_INT(parse(&c, ARGV("--temperature=0.5x"), no_env), -EINVAL);
    CHECK_CONTAINS(err, "is not a number");
    pd_cfg_done(opts, &c);
}

static void cfg_bool_no_prefix(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--no-verbose"), ENVP("PDSERVE_VERBOSE=1")), PD_CFG_OK);
    CHECK(!c.verbose);
    pd_cfg_done(opts, &c);
    CHECK_EQ_INT(parse(&c, ARGV("--verbose"), no_env), PD_CFG_OK);
    CHECK(c.verbose);
    pd_cfg_done(opts, &c);
}

static void cfg_bool_word_forms(void)
{
    static const struct { const char *text; bool v; } cases[] = {
        {"true", true}, {"false", false}, {"1", true}, {"0", false}, {"yes", true},
        {"no", false}, {"on", true}, {"off", false}, {"TRUE", true},
    };
    char flag[64];
    struct tcfg c;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(flag, sizeof(flag), "--verbose=%s", cases[i].text);
        CHECK_EQ_INT(parse(&c, ARGV(flag), ENVP(cases[i].v ? "PDSERVE_VERBOSE=0" : "PDSERVE_VERBOSE=1")),
                     PD_CFG_OK);
        CHECK_EQ_INT(c.verbose, cases[i].v);
        pd_cfg_done(opts, &c);
    }
    CHECK_EQ_INT(parse(&c, ARGV("--verbose=maybe"), no_env), -EINVAL);
    CHECK_CONTAINS(err, "\"maybe\" is not a boolean");
    pd_cfg_done(opts, &c);
}

static void cfg_no_prefix_only_for_bools(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--no-verbose=true"), no_env), -EINVAL);
    CHECK_STR(err, "--no-verbose takes no value");
    pd_cfg_done(opts, &c);
    CHECK_EQ_INT(parse(&c, ARGV("--no-model"), no_env), -EINVAL);
    CHECK_STR(err, "unknown option --no-model");
    pd_cfg_done(opts, &c);
}

static void cfg_string_length_capped(void)
{
    char flag[128];
    struct tcfg c;

    snprintf(flag, sizeof(flag), "--model=%064d", 0); /* exactly the 64-byte cap */
    CHECK_EQ_INT(parse(&c, ARGV(flag), no_env), PD_CFG_OK);
    CHECK_EQ_INT(strlen(c.model), 64);
    pd_cfg_done(opts, &c);
    snprintf(flag, sizeof(flag), "--model=%065d", 0);
    CHECK_EQ_INT(parse(&c, ARGV(flag), no_env), -E2BIG);
    CHECK_STR(err, "--model: value of 65 bytes is over the 64-byte limit");
    CHECK(c.model == NULL);
    pd_cfg_done(opts, &c);
}

static void cfg_list_repeatable_and_capped(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--peer", "a", "--peer=b", "--peer", "c"), no_env), PD_CFG_OK);
    CHECK_EQ_INT(c.peers.n, 3);
    CHECK_STR(c.peers.items[0], "a");
    CHECK_STR(c.peers.items[1], "b");
    CHECK_STR(c.peers.items[2], "c");
    pd_cfg_done(opts, &c);
    CHECK_EQ_INT(parse(&c, ARGV("--peer=a", "--peer=b", "--peer=c", "--peer=d"), no_env), -E2BIG);
    CHECK_STR(err, "--peer: more than 3 values given (at most 3)");
    pd_cfg_done(opts, &c);
}

static void cfg_list_first_flag_replaces_lower_sources(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse_file(&c, "{\"peer\": [\"f1\", \"f2\"]}", no_env), PD_CFG_OK);
    CHECK_EQ_INT(c.peers.n, 2);
    pd_cfg_done(opts, &c);
    CHECK_EQ_INT(parse(&c, ARGV("--peer=x", "--peer=y"), ENVP("PDSERVE_PEER=e1,e2,e3")), PD_CFG_OK);
    CHECK_EQ_INT(c.peers.n, 2);
    CHECK_STR(c.peers.items[0], "x");
    CHECK_STR(c.peers.items[1], "y");
    pd_cfg_done(opts, &c);
}

static void cfg_list_env_comma_separated(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, argv_none, ENVP("PDSERVE_PEER=h1:1,h2:2")), PD_CFG_OK);
    CHECK_EQ_INT(c.peers.n, 2);
    CHECK_STR(c.peers.items[0], "h1:1");
    CHECK_STR(c.peers.items[1], "h2:2");
    pd_cfg_done(opts, &c);
    CHECK_EQ_INT(parse(&c, argv_none, ENVP("PDSERVE_PEER=a,,b")), -EINVAL);
    CHECK_CONTAINS(err, "environment PDSERVE_PEER: item 2");
    pd_cfg_done(opts, &c);
    CHECK_EQ_INT(parse(&c, argv_none, ENVP("PDSERVE_PEER=a,b,c,d")), -E2BIG);
    pd_cfg_done(opts, &c);
}

static void cfg_list_empty_value_clears(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--peer="), ENVP("PDSERVE_PEER=a,b")), PD_CFG_OK);
    CHECK_EQ_INT(c.peers.n, 0);
    pd_cfg_done(opts, &c);
}

static void cfg_env_unknown_ignored(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, argv_none,
                       ENVP("PDSERVE_NOT_AN_OPTION=1", "PDSERVE_kv_port=9", "PDSERVE_KV_PORTX=9",
                            "PDSERVE_VERBOSE", "KV_PORT=9", "PDSERVE_KV_PORT=10")),
                 PD_CFG_OK);
    CHECK_EQ_INT(c.kv_port, 10);
    CHECK(!c.verbose);
    pd_cfg_done(opts, &c);
}

static void cfg_empty_config_env_means_no_file(void)
{
    struct pd_cfg_args a;
    struct tcfg c;

    CHECK_EQ_INT(parse_full(&c, argv_none, ENVP("PDSERVE_CONFIG="), &a), PD_CFG_OK);
    CHECK(a.config_file == NULL);
    pd_cfg_done(opts, &c);
}

static void cfg_error_escapes_control_characters(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--device=a\nb\"c"), no_env), -EINVAL);
    CHECK_STR(err, "--device: \"a\\x0ab\\\"c\" is not one of auto|cpu|cuda");
    pd_cfg_done(opts, &c);
}

static void cfg_error_keeps_earlier_values_releasable(void)
{
    struct tcfg c;

    /* model is allocated from the file, then the flag fails: pd_cfg_done
     * must still free model (LeakSanitizer checks) and it must be intact */
    CHECK_EQ_INT(parse_file(&c, "{\"model\": \"m.gguf\", \"peer\": [\"a\"]}", ENVP("PDSERVE_KV_PORT=0")), -EINVAL);
    CHECK_STR(c.model, "m.gguf");
    CHECK_EQ_INT(c.peers.n, 1);
    pd_cfg_done(opts, &c);
    CHECK(c.model == NULL);
    CHECK(c.peers.items == NULL && c.peers.n == 0);
}

static void cfg_args_untouched_on_error(void)
{
    struct pd_cfg_args a;
    struct tcfg c;

    memset(&a, 0x5a, sizeof(a));
    CHECK_EQ_INT(parse_full(&c, ARGV("pos", "--bogus"), no_env, &a), -EINVAL);
    CHECK_EQ_INT(a.n_positional, 0x5a5a5a5a);
    pd_cfg_done(opts, &c);
}

static void cfg_set_applies_like_flag(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, argv_none, no_env), PD_CFG_OK);
    CHECK_EQ_INT(pd_cfg_set(opts, &c, "kv-port", "81", "admin", err, sizeof(err)), 0);
    CHECK_EQ_INT(c.kv_port, 81);
    CHECK_EQ_INT(pd_cfg_set(opts, &c, "kv-port", "0", "admin", err, sizeof(err)), -EINVAL);
    CHECK_STR(err, "admin: kv-port: 0 is out of range [1, 65535]");
    CHECK_EQ_INT(c.kv_port, 81);
    CHECK_EQ_INT(pd_cfg_set(opts, &c, "nope", "1", "admin", err, sizeof(err)), -EINVAL);
    CHECK_CONTAINS(err, "unknown option \"nope\"");
    CHECK_EQ_INT(pd_cfg_set(opts, &c, "model", "x", NULL, err, sizeof(err)), 0);
    CHECK_STR(c.model, "x");
    pd_cfg_done(opts, &c);
}

/* ---- the config file ---------------------------------------------------- */

static void cfg_file_all_types_accepted(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse_file(&c,
                            "{\"verbose\": true, \"kv-port\": 80, \"kv-pool\": \"2GiB\", \"temperature\": 0.25,"
                            " \"model\": \"m\", \"api-key\": \"k\", \"device\": \"cuda\", \"peer\": [\"p\"]}",
                            no_env),
                 PD_CFG_OK);
    CHECK(c.verbose);
    CHECK_EQ_INT(c.kv_port, 80);
    CHECK_EQ_INT(c.kv_pool, 2ull << 30);
    CHECK(c.temperature == 0.25);
    CHECK_STR(c.model, "m");
    CHECK_STR(c.api_key, "k");
    CHECK_EQ_INT(c.device, 2);
    CHECK_EQ_INT(c.peers.n, 1);
    pd_cfg_done(opts, &c);
}

static void cfg_file_error_names_file_and_key(void)
{
    char path[32], want[160];
    struct tcfg c;
    int rc;

    write_tmp(path, "{\"kv-port\": 70000}");
    rc = parse(&c, ARGV("--config", path), no_env);
    unlink(path);
    CHECK_EQ_INT(rc, -EINVAL);
    snprintf(want, sizeof(want), "config file %s: key \"kv-port\": 70000 is out of range [1, 65535]", path);
    CHECK_STR(err, want);
    pd_cfg_done(opts, &c);
}

static void cfg_file_unknown_key_rejected(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse_file(&c, "{\"kv-prot\": 1}", no_env), -EINVAL);
    CHECK_CONTAINS(err, "unknown key \"kv-prot\"");
    CHECK_CONTAINS(err, "config file /tmp/test_cfg.");
    pd_cfg_done(opts, &c);
}

static void cfg_file_wrong_type_rejected(void)
{
    static const struct { const char *json, *msg; } cases[] = {
        {"{\"kv-port\": \"80\"}", "key \"kv-port\": expected an integer, got a string"},
        {"{\"verbose\": 1}", "key \"verbose\": expected true or false, got a number"},
        {"{\"model\": 5}", "key \"model\": expected a string or null, got a number"},
        {"{\"device\": null}", "key \"device\": expected a string (one of auto|cpu|cuda), got null"},
        {"{\"peer\": \"a\"}", "key \"peer\": expected an array of strings, got a string"},
        {"{\"peer\": [\"a\", 2]}", "key \"peer\": expected an array of strings, got a number at index 1"},
        {"{\"temperature\": [1]}", "key \"temperature\": expected a number, got an array"},
        {"{\"kv-pool\": true}", "key \"kv-pool\": expected a number of bytes"},
    };
    struct tcfg c;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        CHECK_EQ_INT(parse_file(&c, cases[i].json, no_env), -EINVAL);
        CHECK_CONTAINS(err, cases[i].msg);
        pd_cfg_done(opts, &c);
    }
}

static void cfg_file_int_must_be_integral(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse_file(&c, "{\"kv-port\": 80.5}", no_env), -EINVAL);
    CHECK_CONTAINS(err, "80.5 is not an integer (range [1, 65535])");
    pd_cfg_done(opts, &c);
    CHECK_EQ_INT(parse_file(&c, "{\"kv-port\": 8e1}", no_env), PD_CFG_OK);
    CHECK_EQ_INT(c.kv_port, 80);
    pd_cfg_done(opts, &c);
}

static void cfg_file_inexact_number_rejected(void)
{
    struct tcfg c;

    /* 2^53 + 1 parses to 2^53 in a double: refused, not rounded */
    CHECK_EQ_INT(parse_file(&c, "{\"kv-pool\": 9007199254740993}", no_env), -EINVAL);
    CHECK_CONTAINS(err, "write it as a string");
    pd_cfg_done(opts, &c);
}

static void cfg_file_negative_size_rejected(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse_file(&c, "{\"kv-pool\": -4096}", no_env), -EINVAL);
    CHECK_CONTAINS(err, "-4096 is out of range [4KiB, 1TiB]");
    pd_cfg_done(opts, &c);
}

static void cfg_file_too_deep_rejected(void)
{
    struct tcfg c;

    /* object, array, array, array, array: five levels */
    CHECK_EQ_INT(parse_file(&c, "{\"peer\": [[[[\"x\"]]]]}", no_env), -E2BIG);
    CHECK_CONTAINS(err, "nested deeper than 4 levels");
    pd_cfg_done(opts, &c);
}

static void cfg_file_not_object_rejected(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse_file(&c, "[{\"kv-port\": 1}]", no_env), -EINVAL);
    CHECK_CONTAINS(err, "must be one JSON object, not an array");
    pd_cfg_done(opts, &c);
}

static void cfg_file_invalid_json_reports_line(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse_file(&c, "{\n  \"kv-port\": 1,\n  oops\n}", no_env), -EINVAL);
    CHECK_CONTAINS(err, "invalid JSON at line 3");
    pd_cfg_done(opts, &c);
    CHECK_EQ_INT(parse_file(&c, "", no_env), -EINVAL);
    CHECK_CONTAINS(err, "invalid JSON");
    pd_cfg_done(opts, &c);
}

static void cfg_file_trailing_data_rejected(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse_file(&c, "{\"kv-port\": 1} {\"kv-port\": 2}", no_env), -EINVAL);
    CHECK_CONTAINS(err, "trailing data at line 1, column 16");
    pd_cfg_done(opts, &c);
    CHECK_EQ_INT(parse_file(&c, "\n{\"kv-port\": 1}\n\n", no_env), PD_CFG_OK);
    pd_cfg_done(opts, &c);
}

static void cfg_file_missing_is_enoent(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse(&c, ARGV("--config", "/nonexistent/pdserve.json"), no_env), -ENOENT);
    CHECK_CONTAINS(err, "config file /nonexistent/pdserve.json: ");
    pd_cfg_done(opts, &c);
}

static void cfg_file_too_large_rejected(void)
{
    size_t n = PD_CFG_FILE_MAX + 1;
    char *big = malloc(n + 1);
    struct tcfg c;
    int rc;

    CHECK(big);
    /* valid JSON padded with whitespace: only the size is wrong */
    memset(big, ' ', n);
    memcpy(big, "{}", 2);
    big[n] = '\0';
    rc = parse_file(&c, big, no_env);
    free(big);
    CHECK_EQ_INT(rc, -E2BIG);
    CHECK_CONTAINS(err, "larger than 1048576 bytes");
    pd_cfg_done(opts, &c);
}

static void cfg_file_at_size_cap_accepted(void)
{
    size_t n = PD_CFG_FILE_MAX;
    char *big = malloc(n + 1);
    struct tcfg c;
    int rc;

    CHECK(big);
    memset(big, ' ', n);
    memcpy(big, "{\"kv-port\": 9}", 14);
    big[n] = '\0';
    rc = parse_file(&c, big, no_env);
    free(big);
    CHECK_EQ_INT(rc, PD_CFG_OK);
    CHECK_EQ_INT(c.kv_port, 9);
    pd_cfg_done(opts, &c);
}

static void cfg_file_config_key_rejected(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse_file(&c, "{\"config\": \"/etc/other.json\"}", no_env), -EINVAL);
    CHECK_CONTAINS(err, "key \"config\" is not allowed");
    pd_cfg_done(opts, &c);
}

static void cfg_file_duplicate_key_rejected(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse_file(&c, "{\"kv-port\": 1, \"kv-port\": 2}", no_env), -EINVAL);
    CHECK_CONTAINS(err, "key \"kv-port\" appears more than once");
    pd_cfg_done(opts, &c);
}

static void cfg_file_null_unsets_string(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse_file(&c, "{\"model\": null}", ENVP("PDSERVE_MODEL=env.gguf")), PD_CFG_OK);
    CHECK_STR(c.model, "env.gguf"); /* sanity: env still beats the file */
    pd_cfg_done(opts, &c);
    CHECK_EQ_INT(parse_file(&c, "{\"model\": null}", no_env), PD_CFG_OK);
    CHECK(c.model == NULL);
    pd_cfg_done(opts, &c);
}

static void cfg_file_list_capped(void)
{
    struct tcfg c;

    CHECK_EQ_INT(parse_file(&c, "{\"peer\": [\"a\", \"b\", \"c\", \"d\"]}", no_env), -E2BIG);
    CHECK_CONTAINS(err, "key \"peer\": more than 3 values");
    CHECK_EQ_INT(c.peers.n, 0);
    pd_cfg_done(opts, &c);
}

/* ---- --help and --print-config ----------------------------------------- */

static char *capture_help(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    CHECK(f);
    pd_cfg_help(opts, "/usr/bin/prefilld", "[options] MODEL", f);
    fclose(f);
    return buf;
}

static void cfg_help_lists_every_option(void)
{
    char *h = capture_help();
    char want[64];

    for (const struct pd_cfg_opt *o = opts; o->name; o++) {
        snprintf(want, sizeof(want), o->type == PD_CFG_T_BOOL ? "--[no-]%s " : "--%s ", o->name);
        if (!strstr(h, want)) {
            free(h);
            CHECK(!"an option is missing from --help");
        }
    }
    CHECK_CONTAINS(h, "usage: prefilld [options] MODEL\n");
    CHECK_CONTAINS(h, "--config FILE");
    CHECK_CONTAINS(h, "--print-config");
    CHECK_CONTAINS(h, "--help");
    CHECK_CONTAINS(h, "--version");
    CHECK_CONTAINS(h, "--[no-]verbose");
    CHECK_CONTAINS(h, "KV listen port (integer; default 14579; range [1, 65535]; env PDSERVE_KV_PORT)");
    CHECK_CONTAINS(h, "one of auto|cpu|cuda");
    CHECK_CONTAINS(h, "range [4KiB, 1TiB]");
    CHECK_CONTAINS(h, "env PDSERVE_PEER, comma-separated");
    free(h);
}

static void cfg_hidden_option_parses_but_is_not_in_help(void)
{
    static const struct pd_cfg_opt hopts[] = {
        PD_CFG_BOOL("verbose", struct tcfg, verbose, "false", "more logging"),
        {.name = "test-hook", .type = PD_CFG_T_INT, .offset = offsetof(struct tcfg, kv_port),
         .def = "0", .min = 0, .max = 9, .help = "test only", .flags = PD_CFG_HIDDEN},
        PD_CFG_END,
    };
    struct tcfg c;
    struct pd_cfg_args a;
    char *argv[] = {"prog", "--test-hook", "3", NULL};
    char *buf = NULL;
    size_t len = 0;

    CHECK_EQ_INT(pd_cfg_parse_env(hopts, &c, 3, argv, no_env, &a, err, sizeof(err)), PD_CFG_OK);
    CHECK_EQ_INT(c.kv_port, 3);
    pd_cfg_done(hopts, &c);
    FILE *f = open_memstream(&buf, &len);
    CHECK(f);
    pd_cfg_help(hopts, "prog", NULL, f);
    fclose(f);
    CHECK_CONTAINS(buf, "--[no-]verbose");
    CHECK(!strstr(buf, "test-hook"));
    free(buf);
}

static void cfg_help_columns_aligned(void)
{
    char *h = capture_help(), *line, *save = NULL;
    long col = -1;

    /* every option line's help text starts in the same column */
    for (line = strtok_r(h, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *dash = strstr(line, "--"), *gap;

        if (strncmp(line, "  -", 3) != 0 || !dash || !(gap = strstr(dash, "  ")))
            continue;
        while (*gap == ' ')
            gap++;
        if (col < 0)
            col = gap - line;
        if (gap - line != col) {
            free(h);
            CHECK(!"help columns are not aligned");
        }
    }
    free(h);
    CHECK(col > 0);
}

static char *capture_print(const struct tcfg *c)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    CHECK(f);
    CHECK_EQ_INT(pd_cfg_print(opts, c, f), 0);
    fclose(f);
    return buf;
}

static void cfg_print_uses_natural_json_types(void)
{
    struct tcfg c;
    char *p;

    CHECK_EQ_INT(parse(&c, ARGV("--kv-pool=2G", "--peer=a", "--device=cpu"), no_env), PD_CFG_OK);
    p = capture_print(&c);
    pd_cfg_done(opts, &c);
    CHECK_CONTAINS(p, "\"verbose\":\tfalse");
    CHECK_CONTAINS(p, "\"kv-port\":\t14579");
    CHECK_CONTAINS(p, "\"kv-pool\":\t2147483648");
    CHECK_CONTAINS(p, "\"temperature\":\t0.8");
    CHECK_CONTAINS(p, "\"model\":\tnull");
    CHECK_CONTAINS(p, "\"device\":\t\"cpu\"");
    CHECK_CONTAINS(p, "\"peer\":\t[\"a\"]");
    free(p);
}

static void cfg_print_round_trips_through_config(void)
{
    struct tcfg c, back;
    char path[32], *p;
    int rc;

    CHECK_EQ_INT(parse(&c, ARGV("--verbose", "--kv-port=81", "--kv-pool=3M", "--temperature=0.1", "--model=m \"q\"",
                                "--device=cuda", "--peer=a,b", "--peer=c"),
                       no_env),
                 PD_CFG_OK);
    p = capture_print(&c);
    write_tmp(path, p);
    free(p);
    rc = parse(&back, ARGV("--config", path), no_env);
    unlink(path);
    CHECK_EQ_INT(rc, PD_CFG_OK);
    CHECK_EQ_INT(back.verbose, c.verbose);
    CHECK_EQ_INT(back.kv_port, c.kv_port);
    CHECK_EQ_INT(back.kv_pool, c.kv_pool);
    CHECK(back.temperature == c.temperature);
    CHECK_STR(back.model, c.model);
    CHECK_EQ_INT(back.device, c.device);
    CHECK_EQ_INT(back.peers.n, 2);
    CHECK_STR(back.peers.items[0], "a,b");
    CHECK_STR(back.peers.items[1], "c");
    pd_cfg_done(opts, &back);
    pd_cfg_done(opts, &c);
}

static void cfg_secret_not_printed(void)
{
    struct tcfg c;
    char *p;

    CHECK_EQ_INT(parse(&c, argv_none, ENVP("PDSERVE_API_KEY=hunter2")), PD_CFG_OK);
    CHECK_STR(c.api_key, "hunter2");
    p = capture_print(&c);
    pd_cfg_done(opts, &c);
    CHECK(!strstr(p, "hunter2"));
    CHECK_CONTAINS(p, "\"api-key\":\t\"<set>\"");
    free(p);
    CHECK_EQ_INT(parse(&c, argv_none, no_env), PD_CFG_OK);
    p = capture_print(&c);
    pd_cfg_done(opts, &c);
    CHECK_CONTAINS(p, "\"api-key\":\tnull");
    free(p);
}

static void cfg_secret_not_in_errors(void)
{
    struct pin { int64_t pin; int mode; };
    static const char *const modes[] = {"a", "b", NULL};
    static const struct pd_cfg_opt secret_opts[] = {
        {.name = "pin", .type = PD_CFG_T_INT, .offset = offsetof(struct pin, pin), .def = "1", .min = 0,
         .max = 9999, .flags = PD_CFG_SECRET},
        {.name = "mode", .type = PD_CFG_T_ENUM, .offset = offsetof(struct pin, mode), .def = "a",
         .choices = modes, .flags = PD_CFG_SECRET},
        PD_CFG_END,
    };
    char *argv1[] = {"prog", "--pin=123456", NULL}, *argv2[] = {"prog", "--mode=hunter2", NULL};
    char *envp[] = {"PDSERVE_PIN=12x45", NULL};
    struct pin p;

    CHECK_EQ_INT(pd_cfg_parse_env(secret_opts, &p, 2, argv1, no_env, NULL, err, sizeof(err)), -EINVAL);
    CHECK_STR(err, "--pin: <secret> is out of range [0, 9999]");
    pd_cfg_done(secret_opts, &p);
    CHECK_EQ_INT(pd_cfg_parse_env(secret_opts, &p, 1, argv1, envp, NULL, err, sizeof(err)), -EINVAL);
    CHECK_STR(err, "environment PDSERVE_PIN: <secret> is not an integer (range [0, 9999])");
    pd_cfg_done(secret_opts, &p);
    CHECK_EQ_INT(pd_cfg_parse_env(secret_opts, &p, 2, argv2, no_env, NULL, err, sizeof(err)), -EINVAL);
    CHECK(!strstr(err, "hunter2"));
    CHECK_CONTAINS(err, "<secret>");
    pd_cfg_done(secret_opts, &p);
}

/* pd_cfg_main: what a program's main does with the parse's outcome. */
static void cfg_main_exits_for_errors_help_version_and_extra_arguments(void)
{
    struct tcfg c;
    struct pd_cfg_args a;
    int code = -1;
    char *bad[] = {"prog", "--no-such-option", NULL};
    CHECK_EQ_INT(pd_cfg_main(opts, &c, 2, bad, "prog", "[X]", 1, &a, &code), 1);
    CHECK_EQ_INT(code, 2);
    char *ver[] = {"prog", "--version", NULL};
    CHECK_EQ_INT(pd_cfg_main(opts, &c, 2, ver, "prog", "[X]", 1, &a, &code), 1);
    CHECK_EQ_INT(code, 0);
    char *extra[] = {"prog", "one", "two", NULL};
    CHECK_EQ_INT(pd_cfg_main(opts, &c, 3, extra, "prog", "[X]", 1, &a, &code), 1);
    CHECK_EQ_INT(code, 2);
    char *ok[] = {"prog", "--kv-port", "1234", "one", NULL};
    code = -1;
    CHECK_EQ_INT(pd_cfg_main(opts, &c, 4, ok, "prog", "[X]", 1, &a, &code), 0);
    CHECK_EQ_INT(code, -1); /* untouched: go on */
    CHECK_EQ_INT(c.kv_port, 1234);
    CHECK_EQ_INT(a.n_positional, 1);
    CHECK_STR(a.positional[0], "one");
    pd_cfg_done(opts, &c);
}

/* A table for reloads: kv-port and model reload, the rest does not. */
static const struct pd_cfg_opt ropts[] = {
    PD_CFG_BOOL("verbose", struct tcfg, verbose, "false", "more logging"),
    PD_CFG_INT_F("kv-port", struct tcfg, kv_port, "14579", 1, 65535, "port", PD_CFG_RELOAD),
    PD_CFG_SIZE("kv-pool", struct tcfg, kv_pool, "1GiB", 4096, INT64_C(1) << 40, "pool"),
    PD_CFG_STR_F("model", struct tcfg, model, NULL, 64, "file", PD_CFG_RELOAD),
    PD_CFG_LIST_F("peer", struct tcfg, peers, 3, "peers", PD_CFG_RELOAD),
    PD_CFG_STR("api-key", struct tcfg, api_key, NULL, 256, "token"),
    PD_CFG_END,
};

static void cfg_reload_moves_reloadable_and_names_the_rest(void)
{
    struct tcfg cur, next;
    struct pd_cfg_args a;
    char restart[256];
    CHECK_EQ_INT(pd_cfg_parse_env(ropts, &cur, 7, ARGV("--model", "a.gguf", "--peer", "p1",
                                                        "--kv-pool", "1MiB"),
                                  no_env, &a, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_cfg_parse_env(ropts, &next, 11, ARGV("--model", "b.gguf", "--peer", "p2",
                                                         "--peer", "p3", "--kv-pool", "2MiB",
                                                         "--kv-port", "9"),
                                  no_env, &a, err, sizeof(err)), 0);
    /* kv-port, model and peer reload; kv-pool does not; verbose and api-key did not change */
    CHECK_EQ_INT(pd_cfg_reload(ropts, &cur, &next, restart, sizeof(restart)), 3);
    CHECK_STR(restart, "--kv-pool");
    CHECK_EQ_INT(cur.kv_port, 9);
    CHECK_STR(cur.model, "b.gguf");
    CHECK_EQ_INT(cur.peers.n, 2);
    CHECK_STR(cur.peers.items[1], "p3");
    CHECK_EQ_INT(cur.kv_pool, 1u << 20); /* kept until a restart */
    /* next holds what cur had, for pd_cfg_done (no leak, no double free) */
    CHECK_STR(next.model, "a.gguf");
    CHECK_EQ_INT(next.peers.n, 1);
    /* the same again: nothing changes, nothing to name */
    struct tcfg same;
    CHECK_EQ_INT(pd_cfg_parse_env(ropts, &same, 11, ARGV("--model", "b.gguf", "--peer", "p2",
                                                         "--peer", "p3", "--kv-pool", "1MiB",
                                                         "--kv-port", "9"),
                                  no_env, &a, err, sizeof(err)), 0);
    CHECK_EQ_INT(pd_cfg_reload(ropts, &cur, &same, restart, sizeof(restart)), 0);
    CHECK_STR(restart, "");
    pd_cfg_done(ropts, &same);
    pd_cfg_done(ropts, &next);
    pd_cfg_done(ropts, &cur);
}

static const struct pd_test tests[] = {
    PD_TEST(cfg_defaults_apply),
    PD_TEST(cfg_file_overrides_default),
    PD_TEST(cfg_env_overrides_file),
    PD_TEST(cfg_flag_overrides_env),
    PD_TEST(cfg_precedence_all_four_sources),
    PD_TEST(cfg_config_file_from_env),
    PD_TEST(cfg_config_flag_beats_env_config),
    PD_TEST(cfg_flag_equals_and_separate_forms),
    PD_TEST(cfg_later_flag_wins),
    PD_TEST(cfg_rejects_unknown_flag),
    PD_TEST(cfg_missing_value_rejected),
    PD_TEST(cfg_value_looking_like_flag_is_missing),
    PD_TEST(cfg_config_flag_missing_value_rejected),
    PD_TEST(cfg_positional_collected),
    PD_TEST(cfg_bare_bool_does_not_take_next_word),
    PD_TEST(cfg_too_many_positionals_rejected),
    PD_TEST(cfg_double_dash_ends_flags),
    PD_TEST(cfg_help_flag_returns_help),
    PD_TEST(cfg_help_ignores_broken_config_file),
    PD_TEST(cfg_version_flag_returns_version),
    PD_TEST(cfg_print_config_returns_print),
    PD_TEST(cfg_print_config_still_reports_errors),
    PD_TEST(cfg_meta_flags_take_no_value),
    PD_TEST(cfg_rejects_out_of_range_int_naming_range),
    PD_TEST(cfg_rejects_int_trailing_junk),
    PD_TEST(cfg_rejects_int_overflow),
    PD_TEST(cfg_env_error_names_variable),
    PD_TEST(cfg_rejects_bad_enum_listing_choices),
    PD_TEST(cfg_enum_is_case_sensitive),
    PD_TEST(cfg_size_suffixes),
    PD_TEST(cfg_size_bad_syntax_rejected),
    PD_TEST(cfg_size_overflow_rejected),
    PD_TEST(cfg_size_range_checked),
    PD_TEST(cfg_double_range_and_finite),
    PD_TEST(cfg_bool_no_prefix),
    PD_TEST(cfg_bool_word_forms),
    PD_TEST(cfg_no_prefix_only_for_bools),
    PD_TEST(cfg_string_length_capped),
    PD_TEST(cfg_list_repeatable_and_capped),
    PD_TEST(cfg_list_first_flag_replaces_lower_sources),
    PD_TEST(cfg_list_env_comma_separated),
    PD_TEST(cfg_list_empty_value_clears),
    PD_TEST(cfg_env_unknown_ignored),
    PD_TEST(cfg_empty_config_env_means_no_file),
    PD_TEST(cfg_error_escapes_control_characters),
    PD_TEST(cfg_error_keeps_earlier_values_releasable),
    PD_TEST(cfg_args_untouched_on_error),
    PD_TEST(cfg_set_applies_like_flag),
    PD_TEST(cfg_file_all_types_accepted),
    PD_TEST(cfg_file_error_names_file_and_key),
    PD_TEST(cfg_file_unknown_key_rejected),
    PD_TEST(cfg_file_wrong_type_rejected),
    PD_TEST(cfg_file_int_must_be_integral),
    PD_TEST(cfg_file_inexact_number_rejected),
    PD_TEST(cfg_file_negative_size_rejected),
    PD_TEST(cfg_file_too_deep_rejected),
    PD_TEST(cfg_file_not_object_rejected),
    PD_TEST(cfg_file_invalid_json_reports_line),
    PD_TEST(cfg_file_trailing_data_rejected),
    PD_TEST(cfg_file_missing_is_enoent),
    PD_TEST(cfg_file_too_large_rejected),
    PD_TEST(cfg_file_at_size_cap_accepted),
    PD_TEST(cfg_file_config_key_rejected),
    PD_TEST(cfg_file_duplicate_key_rejected),
    PD_TEST(cfg_file_null_unsets_string),
    PD_TEST(cfg_file_list_capped),
    PD_TEST(cfg_help_lists_every_option),
    PD_TEST(cfg_help_columns_aligned),
    PD_TEST(cfg_hidden_option_parses_but_is_not_in_help),
    PD_TEST(cfg_print_uses_natural_json_types),
    PD_TEST(cfg_print_round_trips_through_config),
    PD_TEST(cfg_secret_not_printed),
    PD_TEST(cfg_secret_not_in_errors),
    PD_TEST(cfg_main_exits_for_errors_help_version_and_extra_arguments),
    PD_TEST(cfg_reload_moves_reloadable_and_names_the_rest),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
