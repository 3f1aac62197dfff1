/*
 * notify: the systemd service protocol (sd_notify). Every call is a no-op
 * without $NOTIFY_SOCKET, so the daemon runs the same outside systemd.
 */
#ifndef SLUICE_NOTIFY_H
#define SLUICE_NOTIFY_H

#include <stdint.h>

/* READY=1 with a STATUS= line. */
void notify_ready(const char *status);
/* STATUS=… (one line; newlines are replaced). */
void notify_status(const char *status);
/* STOPPING=1. */
void notify_stopping(void);
/* RELOADING=1 with MONOTONIC_USEC=now. */
void notify_reloading(void);
/* WATCHDOG=1. */
void notify_watchdog(void);
/* The interval at which to send WATCHDOG=1 (half of $WATCHDOG_USEC) in ms,
 * or 0 when the watchdog is off or meant for another process
 * ($WATCHDOG_PID). */
int64_t notify_watchdog_interval_ms(void);

#endif
