/* common/daemon/metrics: counters, gauges and fixed-bucket histograms, rendered in
 * the Prometheus text format (version 0.0.4).
 *
 *   struct pd_metrics *m = pd_metrics_new("model_name", "smollm2");  // label on every series
 *   struct pd_metric *ok = pd_metrics_counter(m, "pdserve:request_success_total",
 *                                             "finished_reason=\"stop\"", "requests finished");
 *   static const double b[] = {0.01, 0.1, 1};
 *   struct pd_metric *ttft = pd_metrics_histogram(m, "pdserve:time_to_first_token_seconds",
 *                                                 "time to first token", b, 3);
 *   pd_metric_add(ok, 1);  pd_metric_observe(ttft, 0.042);     // any thread
 *   char *text; size_t len;
 *   if (pd_metrics_render(m, &text, &len) == 0) { send; free(text); }
 *   m = pd_metrics_free(m);
 *
 * Registration (the *_counter/_gauge/_histogram calls) happens mostly at
 * start-up; it returns NULL past PD_METRICS_MAX or on a bad name (a
 * programmer error: the update functions accept NULL and do nothing). A
 * series is never removed. Registration, updates and rendering may come from
 * any thread: one mutex, never held across I/O (rendering formats into
 * memory). Series of one name share a HELP/TYPE block;
 * give them the same help and type.
 *
 * Ownership: the registry copies names, labels and help; metric handles live
 * until pd_metrics_free. The rendered text is the caller's (free()).
 */
#ifndef PD_METRICS_H
#define PD_METRICS_H

#include <stddef.h>

#define PD_METRICS_MAX 128 /* series per registry */
#define PD_METRICS_MAX_BUCKETS 32 /* finite bounds per histogram (+Inf is implicit) */

struct pd_metrics;
struct pd_metric;

/* label_name/label_value: a label put on every series (both NULL: none). */
struct pd_metrics *pd_metrics_new(const char *label_name, const char *label_value);
/* Accepts NULL; returns NULL. */
struct pd_metrics *pd_metrics_free(struct pd_metrics *m);

/* labels: NULL, or this series' own labels as Prometheus text
 * ("code=\"200\",method=\"post\""), values already escaped. */
struct pd_metric *pd_metrics_counter(struct pd_metrics *m, const char *name, const char *labels,
                                     const char *help);
struct pd_metric *pd_metrics_gauge(struct pd_metrics *m, const char *name, const char *labels,
                                   const char *help);
/* bounds: strictly increasing upper bounds, n <= PD_METRICS_MAX_BUCKETS. */
struct pd_metric *pd_metrics_histogram(struct pd_metrics *m, const char *name, const char *help,
                                       const double *bounds, size_t n);

/* A daemon's series as a table, registered in its order (the order
 * /metrics lists them), each handle into *out:
 *
 *   const struct pd_metric_def defs[] = {
 *       {&s->running, PD_METRIC_GAUGE, "pdserve:num_requests_running", .help = "Admitted."},
 *       {&s->fin_stop, PD_METRIC_COUNTER, "pdserve:request_success_total",
 *        .labels = "finished_reason=\"stop\"", .help = "Requests finished."},
 *       {&s->ttft, PD_METRIC_HISTOGRAM, "pdserve:time_to_first_token_seconds",
 *        .help = "Arrival to first token.", PD_METRIC_BOUNDS(ttft_b)},
 *   };
 *   pd_metrics_register(m, defs, sizeof(defs) / sizeof(*defs));
 *
 * A row that cannot be registered leaves NULL in *out, as the calls above
 * return it. */
enum pd_metric_kind { PD_METRIC_COUNTER, PD_METRIC_GAUGE, PD_METRIC_HISTOGRAM };
struct pd_metric_def {
    struct pd_metric **out;
    enum pd_metric_kind kind;
    const char *name;
    const char *labels; /* counters and gauges: NULL or the series' own labels */
    const char *help;
    const double *bounds; /* histograms: their upper bounds, n_bounds of them */
    size_t n_bounds;
};
/* A static array of upper bounds as a histogram row's bounds and n_bounds. */
#define PD_METRIC_BOUNDS(b) .bounds = (b), .n_bounds = sizeof(b) / sizeof(*(b))
void pd_metrics_register(struct pd_metrics *m, const struct pd_metric_def *defs, size_t n);

void pd_metric_add(struct pd_metric *c, double v); /* counter (v >= 0) or gauge */
void pd_metric_set(struct pd_metric *g, double v); /* gauge */
void pd_metric_observe(struct pd_metric *h, double v); /* histogram */
/* Current value of a counter or gauge (tests, status lines). */
double pd_metric_value(struct pd_metric *c);

/* The whole registry as text; *out is NUL-terminated, caller frees. 0 or -ENOMEM. */
int pd_metrics_render(struct pd_metrics *m, char **out, size_t *len);

/* Escape a label value (\\, \", \n) into out (cap bytes, NUL-terminated).
 * Returns the length written, or -E2BIG (out holds nothing useful). */
int pd_metrics_escape(const char *value, char *out, size_t cap);

#endif
