#include "metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum kind { K_COUNTER, K_GAUGE, K_HISTOGRAM };

struct pd_metric {
    struct pd_metrics *reg;
    enum kind kind;
    char *name, *labels, *help; /* labels: "" when none */
    double value; /* counter, gauge */
    double bounds[PD_METRICS_MAX_BUCKETS];
    uint64_t buckets[PD_METRICS_MAX_BUCKETS]; /* non-cumulative; rendered cumulative */
    size_t n_bounds;
    uint64_t count; /* histogram: observations, sum */
    double sum;
};

struct pd_metrics {
    pthread_mutex_t mu;
    char *common; /* "model_name=\"x\"" or "" */
    struct pd_metric *m[PD_METRICS_MAX];
    size_t n;
};

int pd_metrics_escape(const char *value, char *out, size_t cap)
{
    size_t k = 0;
    for (const char *p = value; *p; p++) {
        const char *rep = *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : *p == '\n' ? "\\n" : NULL;
        size_t n = rep ? 2 : 1;
        if (k + n >= cap)
            return -E2BIG;
        memcpy(out + k, rep ? rep : p, n);
        k += n;
    }
    if (k >= cap)
        return -E2BIG;
    out[k] = '\0';
    return (int)k;
}

static void metric_free(struct pd_metric *x)
{
    free(x->name);
    free(x->labels);
    free(x->help);
    free(x);
}

struct pd_metrics *pd_metrics_new(const char *label_name, const char *label_value)
{
    struct pd_metrics *m = calloc(1, sizeof(*m));
    char esc[512];
    if (!m)
        return NULL;
    pthread_mutex_init(&m->mu, NULL);
    if (label_name && label_value && pd_metrics_escape(label_value, esc, sizeof(esc)) >= 0) {
        size_t n = strlen(label_name) + strlen(esc) + 4;
        if ((m->common = malloc(n)))
            snprintf(m->common, n, "%s=\"%s\"", label_name, esc);
    } else {
        m->common = strdup("");
    }
    if (!m->common)
        return pd_metrics_free(m);
    return m;
}

struct pd_metrics *pd_metrics_free(struct pd_metrics *m)
{
    if (!m)
        return NULL;
    for (size_t i = 0; i < m->n; i++)
        metric_free(m->m[i]);
    free(m->common);
    pthread_mutex_destroy(&m->mu);
    free(m);
    return NULL;
}

/* Prometheus metric names: [a-zA-Z_:][a-zA-Z0-9_:]* */
static int name_ok(const char *s)
{
    if (!s || !*s || (*s >= '0' && *s <= '9'))
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == ':'))
            return 0;
    return 1;
}

static struct pd_metric *add(struct pd_metrics *m, enum kind kind, const char *name,
                             const char *labels, const char *help)
{
    if (!m || !name_ok(name))
        return NULL;
    struct pd_metric *x = calloc(1, sizeof(*x));
    if (!x)
        return NULL;
    x->reg = m;
    x->kind = kind;
    x->name = strdup(name);
    x->labels = strdup(labels ? labels : "");
    x->help = strdup(help ? help : "");
    if (!x->name || !x->labels || !x->help) {
        metric_free(x);
        return NULL;
    }
    /* a series may come while another thread renders (decoded's reload adds
     * a peer's) */
    pthread_mutex_lock(&m->mu);
    bool room = m->n < PD_METRICS_MAX;
    if (room)
        m->m[m->n++] = x;
    pthread_mutex_unlock(&m->mu);
    if (!room) {
        metric_free(x);
        return NULL;
    }
    return x;
}

struct pd_metric *pd_metrics_counter(struct pd_metrics *m, const char *name, const char *labels,
                                     const char *help)
{
    return add(m, K_COUNTER, name, labels, help);
}

struct pd_metric *pd_metrics_gauge(struct pd_metrics *m, const char *name, const char *labels,
                                   const char *help)
{
    return add(m, K_GAUGE, name, labels, help);
}

struct pd_metric *pd_metrics_histogram(struct pd_metrics *m, const char *name, const char *help,
                                       const double *bounds, size_t n)
{
    if (n > PD_METRICS_MAX_BUCKETS)
        return NULL;
    for (size_t i = 1; i < n; i++)
        if (!(bounds[i] > bounds[i - 1]))
            return NULL;
    struct pd_metric *x = add(m, K_HISTOGRAM, name, NULL, help);
    if (x) {
        memcpy(x->bounds, bounds, n * sizeof(*bounds));
        x->n_bounds = n;
    }
    return x;
}

void pd_metrics_register(struct pd_metrics *m, const struct pd_metric_def *defs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const struct pd_metric_def *d = &defs[i];
        if (d->kind == PD_METRIC_HISTOGRAM)
            *d->out = pd_metrics_histogram(m, d->name, d->help, d->bounds, d->n_bounds);
        else
            *d->out = add(m, d->kind == PD_METRIC_GAUGE ? K_GAUGE : K_COUNTER, d->name, d->labels,
                          d->help);
    }
}

void pd_metric_add(struct pd_metric *c, double v)
{
    if (!c || c->kind == K_HISTOGRAM || (c->kind == K_COUNTER && !(v >= 0)))
        return;
    pthread_mutex_lock(&c->reg->mu);
    c->value += v;
    pthread_mutex_unlock(&c->reg->mu);
}

void pd_metric_set(struct pd_metric *g, double v)
{
    if (!g || g->kind != K_GAUGE)
        return;
    pthread_mutex_lock(&g->reg->mu);
    g->value = v;
    pthread_mutex_unlock(&g->reg->mu);
}

void pd_metric_observe(struct pd_metric *h, double v)
{
    if (!h || h->kind != K_HISTOGRAM || isnan(v))
        return;
    pthread_mutex_lock(&h->reg->mu);
    size_t i = 0;
    while (i < h->n_bounds && v > h->bounds[i])
        i++;
    if (i < h->n_bounds)
        h->buckets[i]++;
    h->count++;
    h->sum += v;
    pthread_mutex_unlock(&h->reg->mu);
}

double pd_metric_value(struct pd_metric *c)
{
    if (!c)
        return 0;
    pthread_mutex_lock(&c->reg->mu);
    double v = c->value;
    pthread_mutex_unlock(&c->reg->mu);
    return v;
}

/* A growable output buffer; every append is checked. */
struct out {
    char *p;
    size_t len, cap;
    int failed;
};

static void outf(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void outf(struct out *o, const char *fmt, ...)
{
    va_list ap;
    for (int tries = 0; tries < 2 && !o->failed; tries++) {
        va_start(ap, fmt);
        int n = vsnprintf(o->p ? o->p + o->len : NULL, o->p ? o->cap - o->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->failed = 1;
            return;
        }
        if (o->p && o->len + (size_t)n < o->cap) {
            o->len += (size_t)n;
            return;
        }
        size_t cap = o->cap ? o->cap : 4096;
        while (cap <= o->len + (size_t)n)
            cap *= 2;
        char *p = realloc(o->p, cap);
        if (!p) {
            o->failed = 1;
            return;
        }
        o->p = p;
        o->cap = cap;
    }
}

/* Prometheus floats: integers plainly, others with full precision, +Inf. */
static void fmt_num(double v, char *buf, size_t n)
{
    if (isinf(v))
        snprintf(buf, n, v > 0 ? "+Inf" : "-Inf");
    else if (v == (double)(int64_t)v && fabs(v) < 1e15)
        snprintf(buf, n, "%" PRId64, (int64_t)v);
    else
        snprintf(buf, n, "%.17g", v);
}

/* "{a,b}" from the registry's common label, the series' labels and an extra
 * one ("le=..."), or "" when all are empty. */
static void fmt_labels(char *buf, size_t n, const char *common, const char *own, const char *extra)
{
    const char *parts[3] = {common, own, extra};
    size_t k = 0;
    buf[0] = '\0';
    for (int i = 0; i < 3; i++) {
        if (!parts[i] || !*parts[i])
            continue;
        int w = snprintf(buf + k, n - k, "%s%s", k ? "," : "{", parts[i]);
        if (w < 0 || (size_t)w >= n - k)
            return;
        k += (size_t)w;
    }
    if (k && k + 1 < n)
        snprintf(buf + k, n - k, "}");
}

int pd_metrics_render(struct pd_metrics *m, char **out, size_t *len)
{
    static const char *const types[] = {"counter", "gauge", "histogram"};
    struct out o = {0};
    char lab[1024], num[64], le[80];

    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < m->n; i++) {
        const struct pd_metric *x = m->m[i];
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j++)
            seen = strcmp(m->m[j]->name, x->name) == 0;
        if (!seen)
            outf(&o, "# HELP %s %s\n# TYPE %s %s\n", x->name, x->help, x->name, types[x->kind]);
        if (x->kind != K_HISTOGRAM) {
            fmt_labels(lab, sizeof(lab), m->common, x->labels, NULL);
            fmt_num(x->value, num, sizeof(num));
            outf(&o, "%s%s %s\n", x->name, lab, num);
            continue;
        }
        uint64_t cum = 0;
        for (size_t b = 0; b <= x->n_bounds; b++) {
            cum += b < x->n_bounds ? x->buckets[b] : 0;
            fmt_num(b < x->n_bounds ? x->bounds[b] : INFINITY, num, sizeof(num));
            snprintf(le, sizeof(le), "le=\"%s\"", num);
            fmt_labels(lab, sizeof(lab), m->common, x->labels, le);
            outf(&o, "%s_bucket%s %" PRIu64 "\n", x->name, lab, b < x->n_bounds ? cum : x->count);
        }
        fmt_labels(lab, sizeof(lab), m->common, x->labels, NULL);
        fmt_num(x->sum, num, sizeof(num));
        outf(&o, "%s_sum%s %s\n%s_count%s %" PRIu64 "\n", x->name, lab, num, x->name, lab,
             x->count);
    }
    pthread_mutex_unlock(&m->mu);
    if (o.failed || !o.p) {
        free(o.p);
        return -ENOMEM;
    }
    *out = o.p;
    *len = o.len;
    return 0;
}
