/* common/daemon/metrics and the pure parts of common/daemon/http. */
#include "http.h"
#include "metrics.h"

#include "pd_test.h"

#include <pthread.h>

static void metrics_render_prometheus_text(void)
{
    struct pd_metrics *m = pd_metrics_new("model_name", "a\"b");
    struct pd_metric *c1 = pd_metrics_counter(m, "x:done_total", "r=\"stop\"", "done");
    struct pd_metric *c2 = pd_metrics_counter(m, "x:done_total", "r=\"length\"", "done");
    struct pd_metric *g = pd_metrics_gauge(m, "x:running", NULL, "running");
    static const double b[] = {0.1, 1};
    struct pd_metric *h = pd_metrics_histogram(m, "x:lat_seconds", "latency", b, 2);
    pd_metric_add(c1, 2);
    pd_metric_add(c2, 1);
    pd_metric_add(c2, -5); /* counters never go down */
    pd_metric_set(g, 3);
    pd_metric_observe(h, 0.05);
    pd_metric_observe(h, 0.5);
    pd_metric_observe(h, 7);
    char *t;
    size_t n;
    CHECK_EQ_INT(pd_metrics_render(m, &t, &n), 0);
    CHECK_EQ_INT(strlen(t), n);
    CHECK_CONTAINS(t, "# HELP x:done_total done\n# TYPE x:done_total counter\n"
                      "x:done_total{model_name=\"a\\\"b\",r=\"stop\"} 2\n"
                      "x:done_total{model_name=\"a\\\"b\",r=\"length\"} 1\n");
    CHECK_CONTAINS(t, "x:running{model_name=\"a\\\"b\"} 3\n");
    CHECK_CONTAINS(t, "# TYPE x:lat_seconds histogram\n");
    CHECK_CONTAINS(t, "x:lat_seconds_bucket{model_name=\"a\\\"b\",le=\"0.10000000000000001\"} 1\n");
    CHECK_CONTAINS(t, "x:lat_seconds_bucket{model_name=\"a\\\"b\",le=\"1\"} 2\n");
    CHECK_CONTAINS(t, "x:lat_seconds_bucket{model_name=\"a\\\"b\",le=\"+Inf\"} 3\n");
    CHECK_CONTAINS(t, "x:lat_seconds_count{model_name=\"a\\\"b\"} 3\n");
    CHECK_CONTAINS(t, "x:lat_seconds_sum{model_name=\"a\\\"b\"} 7.5");
    /* one HELP per family */
    CHECK(strstr(strstr(t, "# HELP x:done_total") + 1, "# HELP x:done_total") == NULL);
    free(t);
    pd_metrics_free(m);
}

static void metrics_refuse_bad_registrations(void)
{
    struct pd_metrics *m = pd_metrics_new(NULL, NULL);
    static const double down[] = {1, 0.5};
    CHECK(pd_metrics_counter(m, "bad name", NULL, "") == NULL);
    CHECK(pd_metrics_counter(m, "9lives", NULL, "") == NULL);
    CHECK(pd_metrics_histogram(m, "h", "", down, 2) == NULL);
    pd_metric_add(NULL, 1); /* accepted, nothing happens */
    pd_metric_observe(NULL, 1);
    for (int i = 0; i < PD_METRICS_MAX; i++)
        CHECK(pd_metrics_gauge(m, "g", NULL, "") != NULL);
    CHECK(pd_metrics_gauge(m, "g", NULL, "") == NULL);
    pd_metrics_free(m);
}

static struct pd_metric *shared;
static void *adder(void *arg)
{
    (void)arg;
    for (int i = 0; i < 100000; i++)
        pd_metric_add(shared, 1);
    return NULL;
}

static void metrics_updates_are_thread_safe(void)
{
    struct pd_metrics *m = pd_metrics_new(NULL, NULL);
    shared = pd_metrics_counter(m, "c_total", NULL, "");
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, adder, NULL);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    CHECK(pd_metric_value(shared) == 400000.0);
    pd_metrics_free(m);
}

static void http_request_ids(void)
{
    CHECK(pd_http_id_valid("abc-123_XYZ"));
    CHECK(!pd_http_id_valid(""));
    CHECK(!pd_http_id_valid("a b"));
    CHECK(!pd_http_id_valid("tab\there"));
    CHECK(!pd_http_id_valid("caf\xc3\xa9"));
    char longid[200];
    memset(longid, 'a', sizeof longid);
    longid[128] = '\0';
    CHECK(pd_http_id_valid(longid));
    longid[128] = 'a';
    longid[129] = '\0';
    CHECK(!pd_http_id_valid(longid));
}

static void http_error_body_is_openai_shaped(void)
{
    char *s = pd_http_error_body("bad \"x\"", "invalid_request_error", "x", NULL);
    CHECK_STR(s, "{\"error\":{\"message\":\"bad \\\"x\\\"\",\"type\":\"invalid_request_error\","
                 "\"param\":\"x\",\"code\":null}}");
    free(s);
}

static const struct pd_test tests[] = {
    PD_TEST(metrics_render_prometheus_text),
    PD_TEST(metrics_refuse_bad_registrations),
    PD_TEST(metrics_updates_are_thread_safe),
    PD_TEST(http_request_ids),
    PD_TEST(http_error_body_is_openai_shaped),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
