#include "log.h"
#include "pd_test.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

/* Capture what the logger writes through a pipe. */
static int cap[2];

static void cap_start(void)
{
    CHECK(pipe(cap) == 0);
    fcntl(cap[0], F_SETFL, O_NONBLOCK);
    pd_log_set_fd(cap[1]);
}

static const char *cap_read(void)
{
    static char buf[8192];
    ssize_t n = read(cap[0], buf, sizeof(buf) - 1);
    buf[n > 0 ? n : 0] = '\0';
    return buf;
}

static void cap_stop(void)
{
    pd_log_set_fd(STDERR_FILENO);
    close(cap[0]);
    close(cap[1]);
}

static void log_parse_level_accepts_names_and_numbers(void)
{
    CHECK_EQ_INT(pd_log_parse_level("debug"), PD_LOG_DEBUG);
    CHECK_EQ_INT(pd_log_parse_level("warning"), PD_LOG_WARN);
    CHECK_EQ_INT(pd_log_parse_level("warn"), PD_LOG_WARN);
    CHECK_EQ_INT(pd_log_parse_level("3"), PD_LOG_ERR);
    CHECK_EQ_INT(pd_log_parse_level("verbose"), -EINVAL);
    CHECK_EQ_INT(pd_log_parse_level("8"), -EINVAL);
    CHECK_EQ_INT(pd_log_parse_level(NULL), -EINVAL);
}

static int formatted;
static const char *count_format(void)
{
    formatted++;
    return "x";
}

static void log_level_filters_before_formatting(void)
{
    cap_start();
    pd_log_set_level(PD_LOG_WARN);
    formatted = 0;
    pd_log(PD_LOG_DEBUG, "%s", count_format());
    CHECK_EQ_INT(formatted, 0); /* arguments not even evaluated */
    CHECK_STR(cap_read(), "");
    pd_log(PD_LOG_ERR, "%s", count_format());
    CHECK_EQ_INT(formatted, 1);
    CHECK_CONTAINS(cap_read(), "error: x\n");
    pd_log_set_level(PD_LOG_INFO);
    cap_stop();
}

static void log_plain_line_has_time_ident_pid_level(void)
{
    char want[64];
    cap_start();
    pd_log_init("prefilld");
    pd_log_set_journal(0);
    pd_log(PD_LOG_WARN, "peer %s gone, ignoring", "10.0.0.2");
    const char *line = cap_read();
    snprintf(want, sizeof(want), "Z prefilld[%ld]: warning: peer 10.0.0.2 gone, ignoring\n",
             (long)getpid());
    CHECK_CONTAINS(line, want);
    CHECK(line[4] == '-' && line[10] == 'T'); /* ISO 8601 date first */
    cap_stop();
}

static void log_journal_line_has_priority_prefix(void)
{
    cap_start();
    pd_log_set_journal(1);
    pd_log(PD_LOG_NOTICE, "ready");
    CHECK_STR(cap_read(), "<5>ready\n");
    pd_log_set_journal(0);
    cap_stop();
}

static void log_detects_journal_stream_from_env(void)
{
    struct stat st;
    char js[64];
    CHECK(fstat(STDERR_FILENO, &st) == 0);
    snprintf(js, sizeof(js), "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino);
    setenv("JOURNAL_STREAM", js, 1);
    pd_log_init("x");
    cap_start();
    pd_log(PD_LOG_ERR, "e");
    CHECK_STR(cap_read(), "<3>e\n");
    cap_stop();
    setenv("JOURNAL_STREAM", "1:2", 1); /* someone else's stream: not ours */
    pd_log_init("x");
    cap_start();
    pd_log(PD_LOG_ERR, "e");
    CHECK(cap_read()[0] != '<');
    cap_stop();
    unsetenv("JOURNAL_STREAM");
    pd_log_set_journal(0);
}

static void log_newlines_cannot_forge_records(void)
{
    cap_start();
    pd_log_set_journal(1);
    pd_log(PD_LOG_INFO, "a\n<0>forged\r");
    CHECK_STR(cap_read(), "<6>a <0>forged \n");
    pd_log_set_journal(0);
    cap_stop();
}

static void log_long_lines_are_cut_with_ellipsis(void)
{
    static char big[3 * PD_LOG_LINE_MAX];
    memset(big, 'a', sizeof(big) - 1);
    cap_start();
    pd_log_set_journal(1);
    pd_log(PD_LOG_INFO, "%s", big);
    const char *line = cap_read();
    size_t n = strlen(line);
    CHECK_EQ_INT(n, PD_LOG_LINE_MAX - 1);
    CHECK(strcmp(line + n - 4, "...\n") == 0);
    pd_log_set_journal(0);
    cap_stop();
}

static void ratelimit_allows_burst_then_reports_suppressed(void)
{
    struct pd_ratelimit rl = PD_RATELIMIT_INIT(1000, 3);
    uint64_t t0 = 5000000000ull;
    int ok = 0;
    cap_start();
    pd_log_set_journal(1);
    for (int i = 0; i < 10; i++)
        ok += pd_ratelimit_ok_at(&rl, PD_LOG_WARN, t0 + (uint64_t)i * 1000);
    CHECK_EQ_INT(ok, 3);
    CHECK_STR(cap_read(), "");
    /* a new interval: one line reports the 7 suppressed, then the burst again */
    CHECK_EQ_INT(pd_ratelimit_ok_at(&rl, PD_LOG_WARN, t0 + 1000000000ull), 1);
    CHECK_STR(cap_read(), "<4>(suppressed 7 similar messages)\n");
    pd_log_set_journal(0);
    cap_stop();
}

static const struct pd_test tests[] = {
    PD_TEST(log_parse_level_accepts_names_and_numbers),
    PD_TEST(log_level_filters_before_formatting),
    PD_TEST(log_plain_line_has_time_ident_pid_level),
    PD_TEST(log_journal_line_has_priority_prefix),
    PD_TEST(log_detects_journal_stream_from_env),
    PD_TEST(log_newlines_cannot_forge_records),
    PD_TEST(log_long_lines_are_cut_with_ellipsis),
    PD_TEST(ratelimit_allows_burst_then_reports_suppressed),
    {0},
};

int main(int argc, char **argv) { return pd_test_main(tests, argc, argv); }
