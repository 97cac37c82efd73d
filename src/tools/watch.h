/*
 * watch.h - muxcall --watch / --follow: a call and the notifications the
 * server sends meanwhile (pubsub.message, timer.progress, ...), each
 * printed as one JSON line {"method": M, "params": [...]}.
 */
#ifndef MUXCALL_WATCH_H
#define MUXCALL_WATCH_H

#include <stddef.h>

#include <demux/mux.h>

/*
 * Call method with params (one msgpack array), printing every
 * notification as it arrives and then the result (or the error, on
 * stderr), in the order the server sent them. follow: afterwards keep
 * printing notifications until SIGINT/SIGTERM (MUX_OK) or until the
 * connection is lost (MUX_ECONN). Returns the call's mux_* code.
 */
/* For follow: block SIGINT and SIGTERM in every thread (they are waited
 * for); call before the connection starts libmux's threads. */
void mc_watch_block_signals(void);
int mc_watch(mux_t *m, const char *method, const void *params, size_t len,
    int timeout_ms, int follow, int pretty);

#endif
