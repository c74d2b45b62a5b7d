/* common/base/cfg_help: the option table's output (--help, --version,
 * --print-config) and pd_cfg_main, which parses and answers those three.
 * Above cfg.c (the parsing). */
#include "cfg.h"

#include "cfg_internal.h"
#include "log.h"
#include "pd_config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

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
        cfg_env_name(env, sizeof(env), o->name);

        k += (size_t)snprintf(text + k, sizeof(text) - k, "%s (%s", o->help ? o->help : "", type_name(o));
        if (o->def && !cfg_is_secret(o) && k < sizeof(text))
            k += (size_t)snprintf(text + k, sizeof(text) - k, "; default %s", o->def);
        cfg_fmt_range(range, sizeof(range), o);
        if (range[0] && k < sizeof(text))
            k += (size_t)snprintf(text + k, sizeof(text) - k, "; range %s", range);
        if (o->type == PD_CFG_T_ENUM && k < sizeof(text)) {
            cfg_join_choices(choices, sizeof(choices), o->choices);
            k += (size_t)snprintf(text + k, sizeof(text) - k, "; one of %s", choices);
        }
        if (o->type == PD_CFG_T_STR && k < sizeof(text))
            k += (size_t)snprintf(text + k, sizeof(text) - k, "; at most %zu bytes", cfg_str_cap(o));
        if (o->type == PD_CFG_T_LIST && k < sizeof(text))
            k += (size_t)snprintf(text + k, sizeof(text) - k, "; repeatable, at most %" PRId64, o->max);
        if ((o->flags & PD_CFG_RELOAD) && k < sizeof(text))
            k += (size_t)snprintf(text + k, sizeof(text) - k, "; SIGHUP applies a change");
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
    const void *f = cfg_cfield(o, cfg);
    char num[32];
    cJSON *arr;

    if (cfg_is_secret(o)) {
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

int pd_cfg_main(const struct pd_cfg_opt *table, void *cfg, int argc, char *const argv[],
                const char *prog, const char *usage, int max_positional,
                struct pd_cfg_args *args, int *exit_code)
{
    char err[512];
    pd_log_init(prog);
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
        const struct pd_cfg_opt *o = pd_cfg_find(table, "log-level");
        if (o && o->type == PD_CFG_T_ENUM)
            pd_log_set_level(PD_LOG_ERR + *(const int *)cfg_cfield(o, cfg));
        return 0;
    }
    pd_cfg_done(table, cfg);
    return 1;
}
