#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const char *const pd_log_levels[] = {"error", "warning", "notice", "info", "debug", NULL};

_Atomic int pd_log_level_cur = PD_LOG_INFO;

static char log_ident[32] = "pdserve";
static _Atomic int log_journal;
static _Atomic int log_fd = STDERR_FILENO;

static const char *const level_names[] = {
    [PD_LOG_ERR] = "error", [PD_LOG_WARN] = "warning", [PD_LOG_NOTICE] = "notice",
    [PD_LOG_INFO] = "info", [PD_LOG_DEBUG] = "debug",
};

/* systemd sets JOURNAL_STREAM=dev:ino for the stream it connected to stderr;
 * matching it to our fd 2 tells a journal stream from a redirect by a child. */
static int stderr_is_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;

    if (!js || sscanf(js, "%llu:%llu", &dev, &ino) != 2)
        return 0;
    if (fstat(STDERR_FILENO, &st) < 0)
        return 0;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void pd_log_init(const char *ident)
{
    if (ident) {
        const char *slash = strrchr(ident, '/');
        snprintf(log_ident, sizeof(log_ident), "%s", slash ? slash + 1 : ident);
    }
    atomic_store(&log_journal, stderr_is_journal());
}

void pd_log_set_level(int level)
{
    if (level < PD_LOG_ERR)
        level = PD_LOG_ERR;
    if (level > PD_LOG_DEBUG)
        level = PD_LOG_DEBUG;
    atomic_store(&pd_log_level_cur, level);
}

int pd_log_parse_level(const char *s)
{
    if (!s)
        return -EINVAL;
    for (int l = PD_LOG_ERR; l <= PD_LOG_DEBUG; l++)
        if (strcmp(s, level_names[l]) == 0)
            return l;
    if (strcmp(s, "warn") == 0)
        return PD_LOG_WARN;
    if (s[0] >= '3' && s[0] <= '7' && s[1] == '\0')
        return s[0] - '0';
    return -EINVAL;
}

void pd_log_set_journal(int on) { atomic_store(&log_journal, !!on); }
void pd_log_set_fd(int fd) { atomic_store(&log_fd, fd); }

void pd_log_emit(int level, const char *fmt, ...)
{
    char line[PD_LOG_LINE_MAX];
    size_t len;
    int n;
    va_list ap;

    if (level < PD_LOG_ERR)
        level = PD_LOG_ERR;
    if (level > PD_LOG_DEBUG)
        level = PD_LOG_DEBUG;

    if (atomic_load(&log_journal)) {
        n = snprintf(line, sizeof(line), "<%d>", level);
    } else {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s[%ld]: %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, log_ident, (long)getpid(),
                     level_names[level]);
    }
    len = n > 0 ? (size_t)n : 0;

    va_start(ap, fmt);
    n = vsnprintf(line + len, sizeof(line) - len, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if (len + (size_t)n >= sizeof(line) - 1) {
        /* cut: keep room for "...\n" */
        len = sizeof(line) - 5;
        memcpy(line + len, "...", 3);
        len += 3;
    } else {
        len += (size_t)n;
    }
    /* one line per record: embedded newlines would forge records in the journal */
    for (size_t i = 0; i < len; i++)
        if (line[i] == '\n' || line[i] == '\r')
            line[i] = ' ';
    line[len++] = '\n';

    int fd = atomic_load(&log_fd);
    const char *p = line;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        p += w;
        len -= (size_t)w;
    }
}

int pd_ratelimit_ok_at(struct pd_ratelimit *rl, int level, uint64_t now_ns)
{
    if (rl->interval_ns == 0 || rl->burst == 0)
        return 1;
    if (rl->begin_ns == 0 || now_ns - rl->begin_ns >= rl->interval_ns) {
        if (rl->suppressed > 0)
            pd_log_emit(level, "(suppressed %u similar messages)", rl->suppressed);
        rl->begin_ns = now_ns ? now_ns : 1;
        rl->n = 0;
        rl->suppressed = 0;
    }
    if (rl->n < rl->burst) {
        rl->n++;
        return 1;
    }
    rl->suppressed++;
    return 0;
}

uint64_t pd_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int pd_ratelimit_ok(struct pd_ratelimit *rl, int level)
{
    return pd_ratelimit_ok_at(rl, level, pd_now_ns());
}
