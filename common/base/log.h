/* common/base/log: leveled, journald-friendly logging to stderr.
 *
 *   pd_log_init("prefilld");                 // once, before threads start
 *   pd_log_set_level(PD_LOG_DEBUG);          // any time, from any thread
 *   pd_log(PD_LOG_WARN, "peer %s: bad tag, ignoring", addr);
 *
 *   static struct pd_ratelimit rl = PD_RATELIMIT_INIT(5000, 10);  // 10 lines per 5 s
 *   pd_log_ratelimited(&rl, PD_LOG_WARN, "handshake from %s failed: %s", addr, why);
 *
 * The level is checked before any formatting. Each line is written with one
 * write(2), so lines from different threads never interleave. Under systemd
 * (stderr is the journal stream named by $JOURNAL_STREAM) a line is "<N>text",
 * which journald turns into the priority; elsewhere it is
 * "2026-11-26T06:22:01.123Z ident[pid]: warning: text".
 *
 * Rule (STYLE.md): never pass key material, prompts or generated text above
 * PD_LOG_DEBUG. Nothing here owns memory; lines longer than PD_LOG_LINE_MAX are
 * cut and end in "...".
 */
#ifndef PD_LOG_H
#define PD_LOG_H

#include <stdatomic.h>
#include <stdint.h>

/* syslog priorities, so journald understands them as they are */
enum pd_log_level {
    PD_LOG_ERR = 3,
    PD_LOG_WARN = 4,
    PD_LOG_NOTICE = 5,
    PD_LOG_INFO = 6,
    PD_LOG_DEBUG = 7,
};

#define PD_LOG_LINE_MAX 2048

extern _Atomic int pd_log_level_cur;

/* The log level option of every program, declared once: an entry of a
 * common/base/cfg option table for a config struct T with int log_level,
 * the level being PD_LOG_ERR + log_level; fl: its flags (a daemon's
 * PD_CFG_RELOAD). */
extern const char *const pd_log_levels[]; /* "error" .. "debug" */
#define PD_LOG_CFG(T, fl) \
    PD_CFG_ENUM_F("log-level", T, log_level, "info", pd_log_levels, "log level", fl)

/* ident: program name shown in plain lines (copied; may be NULL). Detects journald. */
void pd_log_init(const char *ident);
void pd_log_set_level(int level);
/* "error", "warning", "notice", "info", "debug" (or 3..7) -> level; -EINVAL otherwise */
int pd_log_parse_level(const char *s);
/* Force the journald format on or off (tests; a daemon relies on detection). */
void pd_log_set_journal(int on);
/* Send lines to fd instead of stderr (tests). */
void pd_log_set_fd(int fd);

void pd_log_emit(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define pd_log(level, ...)                                                     \
    do {                                                                       \
        if ((level) <= atomic_load_explicit(&pd_log_level_cur, memory_order_relaxed)) \
            pd_log_emit((level), __VA_ARGS__);                                 \
    } while (0)

/* At most `burst` lines per `interval_ms`; when a new interval opens, one line
 * says how many were suppressed. Not thread-safe: one limiter per thread/site. */
struct pd_ratelimit {
    uint64_t interval_ns;
    unsigned burst;
    uint64_t begin_ns;
    unsigned n;
    unsigned suppressed;
};
#define PD_RATELIMIT_INIT(interval_ms, burst_)                                 \
    { .interval_ns = (uint64_t)(interval_ms) * 1000000u, .burst = (burst_) }

/* The monotonic clock in nanoseconds: what every module times with. */
uint64_t pd_now_ns(void);

/* 1 when a line may be emitted now, 0 when it must be suppressed. Emits the
 * "suppressed N messages" line itself when a new interval opens. */
int pd_ratelimit_ok(struct pd_ratelimit *rl, int level);
/* Same, with an explicit clock (nanoseconds, monotonic) for tests. */
int pd_ratelimit_ok_at(struct pd_ratelimit *rl, int level, uint64_t now_ns);

#define pd_log_ratelimited(rl, level, ...)                                     \
    do {                                                                       \
        if ((level) <= atomic_load_explicit(&pd_log_level_cur, memory_order_relaxed) && \
            pd_ratelimit_ok((rl), (level)))                                    \
            pd_log_emit((level), __VA_ARGS__);                                 \
    } while (0)

#endif
