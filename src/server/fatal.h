/*
 * fatal.h - a fatal signal leaves a last word in the log: which signal,
 * which plugin and method the faulting thread was running (if any), and a
 * backtrace; then the process dies of that signal, so that a supervisor
 * (systemd's Restart=on-failure, or demuxd for a plugin-host child) sees
 * what it was.
 *
 * A fault in a thread-mode plugin cannot be survived: the plugin shares
 * the process, and whatever it scribbled on is unknown. What can be done is
 * to say clearly what happened (and that isolation: process contains it).
 */
#ifndef DMX_FATAL_H
#define DMX_FATAL_H

#include <stddef.h>

/* Install the handlers for SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT and
 * SIGSYS; who ("demuxd", "demuxd: plugin host") opens the report, and
 * `consequence` follows the plugin's name when the fault was in one (what
 * it means: demuxd ends, or only this child). Strings are not copied. Main
 * thread, once, before other threads start. */
void dmx_fatal_install(const char *who, const char *consequence);

/* A worker thread's alternate signal stack, so that a plugin that
 * overflows its stack is still reported: call first and last in the
 * thread. */
void dmx_fatal_thread_begin(void);
void dmx_fatal_thread_end(void);

/* What this thread runs now, for the report: plugin and method names
 * (NUL-terminated, alive while it runs); NULL, NULL when it returns. */
extern __thread const char *dmx_fatal_plugin, *dmx_fatal_method;

static inline void
dmx_fatal_running(const char *plugin, const char *method)
{
	dmx_fatal_plugin = plugin;
	dmx_fatal_method = method;
}

#endif
