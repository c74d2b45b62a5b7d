#include "notify.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <systemd/sd-daemon.h>

/* sd_notify returns > 0 sent, 0 no socket, < 0 errno: fold to 0 / -errno */
static int send_state(const char *state)
{
    int rc = sd_notify(0, state);
    return rc < 0 ? rc : 0;
}

int pd_notify_ready(void) { return send_state("READY=1"); }
int pd_notify_watchdog(void) { return send_state("WATCHDOG=1"); }
int pd_notify_stopping(void) { return send_state("STOPPING=1"); }

int pd_notify_reloading(void)
{
    struct timespec ts;
    char line[64];
    clock_gettime(CLOCK_MONOTONIC, &ts);
    snprintf(line, sizeof(line), "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000);
    return send_state(line);
}

int pd_notify_status(const char *fmt, ...)
{
    char line[8 + 256 + 1] = "STATUS=";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + 7, sizeof(line) - 7, fmt, ap);
    va_end(ap);
    /* one assignment per line in the protocol */
    for (char *p = line; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    return send_state(line);
}

uint64_t pd_notify_watchdog_usec(void)
{
    uint64_t us = 0;
    return sd_watchdog_enabled(0, &us) > 0 ? us : 0;
}
