/* common/daemon/notify: the systemd service-manager protocol (Type=notify), through
 * libsystemd's sd_notify.
 *
 *   pd_notify_status("loading model %s", path);
 *   ... load, bind every listener ...
 *   pd_notify_ready();                       // READY=1 only now (DESIGN.md)
 *   uint64_t us = pd_notify_watchdog_usec(); // 0: no watchdog asked for
 *   every us/2, while the compute thread is healthy: pd_notify_watchdog();
 *   on SIGHUP: pd_notify_reloading(); re-read what reloads; pd_notify_ready()
 *   on SIGTERM: pd_notify_stopping(); drain; exit 0
 *
 * Every call is a no-op returning 0 when $NOTIFY_SOCKET is unset (run by hand,
 * in tests). Errors (a socket that went away) are returned as negative errno
 * and are survivable: the caller logs once and carries on. Nothing here
 * allocates or logs; thread-safe (sd_notify opens a socket per call).
 */
#ifndef PD_NOTIFY_H
#define PD_NOTIFY_H

#include <stdint.h>

int pd_notify_ready(void);
/* STATUS=<text>: one line (newlines become spaces), cut at 256 bytes. */
int pd_notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int pd_notify_watchdog(void);
int pd_notify_stopping(void);
/* RELOADING=1 with MONOTONIC_USEC= (what Type=notify-reload expects); send
 * READY=1 when the reload is done. */
int pd_notify_reloading(void);
/* The watchdog interval systemd asked for ($WATCHDOG_USEC for this pid), or 0. */
uint64_t pd_notify_watchdog_usec(void);

#endif
