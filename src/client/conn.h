/*
 * conn.h - one libmux connection: its fds, its table of calls in flight, the
 * writer path and its reader thread. Internal to libmux; mux.c builds the
 * public handle (endpoints, selection, retries, reconnects, async delivery)
 * on top of it.
 *
 * A call is an mc_call the caller owns. Sync callers keep it on their stack
 * and wait with mc_wait; async callers embed it in a heap record and set
 * on_done, which the connection's reader thread calls exactly once, with no
 * lock held, when the call is answered, fails or passes its deadline.
 *
 * Lifetime: mc_open returns a connection with one reference, the caller's;
 * its reader thread (detached) holds another until it stops. Whoever holds a
 * reference may call any mc_ function. The reader stops once the connection
 * breaks or is closed (mc_close): it completes every async call still on
 * it, drops its reference and then calls on_stop, its last act. The last
 * reference dropped frees the connection, on whichever thread drops it, and
 * never waits for another thread: so no reader can ever wait for another
 * reader, whatever calls their on_done start on each other's connections.
 */
#ifndef MC_CONN_H
#define MC_CONN_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "../common/clock.h"
#include "../common/xport.h"
#include "demux/mux.h"

typedef struct mc_conn mc_conn;
typedef struct mc_call mc_call;

/* Called on the reader thread, no lock held, exactly once per async call. */
typedef void (*mc_done_fn)(mc_call *call);

struct mc_call {
	/* set by the caller before mc_start */
	mux_result	*res;		/* filled on completion */
	mc_done_fn	 on_done;	/* NULL: a sync caller waits in mc_wait */
	uint64_t	 deadline_ns;	/* async only: CLOCK_MONOTONIC, 0 none */
	/* optional: called under the connection's lock once the call has its
	 * msgid, before anything can complete it; must not block or lock */
	void		(*on_insert)(mc_call *call);

	/* owned by the connection while the call is in flight */
	mc_call		*next;		/* hash chain, then the done list */
	uint32_t	 msgid;
	int		 rc;		/* valid once done */
	size_t		 heap_idx;	/* async deadline heap slot */
	_Atomic uint64_t wpos;		/* where its request starts in the
					 * stream; UINT64_MAX until queued */
	size_t		 wlen;		/* its request's bytes (wmu) */
	_Atomic uint32_t done;		/* sync: MC_DONE | MC_LEAD bits, a
					 * futex word */
	mc_call		*fnext, *fprev;	/* sync: on the followers list */
	int		 following;
};

/* Called on the reader thread as it ends (the connection broke or was
 * closed), after the last on_done and after the reader dropped its
 * reference (the connection may be gone), with no lock held. */
typedef void (*mc_event_fn)(void *arg);

/*
 * Start a connection over rfd/wfd (may be equal); it owns them and the child
 * (reaped when it is freed), also on failure. Returns NULL with a reason in
 * err; on_stop is then never called.
 */
mc_conn *mc_open(int rfd, int wfd, pid_t child, size_t max_frame,
    mc_event_fn on_stop, void *arg, char *err, size_t errlen);
/* The same over a transport already set up (a TLS session, handshake
 * done; its descriptors non-blocking), taken also on failure. */
mc_conn *mc_open_xport(dmx_xport *x, pid_t child, size_t max_frame,
    mc_event_fn on_stop, void *arg, char *err, size_t errlen);

void	 mc_ref(mc_conn *c);
/* Drop a reference; the last one frees the connection. An owner done with
 * a connection that is still open closes it first (mc_close): until it
 * stops, its reader keeps it alive. */
void	 mc_unref(mc_conn *c);

/*
 * Send a request for `call`. Returns MUX_OK once it is queued (the answer,
 * or a failure, then arrives through mc_wait or on_done), or, without
 * sending anything: MUX_ENOTCONN (the connection is broken), MUX_ECLOSED,
 * MUX_EDRAINING (the server asked for nothing new) or MUX_ENOMEM.
 */
int	 mc_start(mc_conn *c, mc_call *call, const char *method,
	    const void *params, size_t len);

/* Wait for a sync call until *dl (CLOCK_MONOTONIC; NULL: no limit). A call
 * that times out is withdrawn and cancelled on the server. */
int	 mc_wait(mc_conn *c, mc_call *call, const struct timespec *dl);

int	 mc_notify(mc_conn *c, const char *method, const void *params,
	    size_t len);
/* [2, "$/cancelRequest", [msgid]], best effort. */
void	 mc_cancel(mc_conn *c, uint32_t msgid);

/* Fail every call in flight with MUX_ECLOSED and stop. */
void	 mc_close(mc_conn *c);
/* Break the connection as if it had been lost, with this reason. */
void	 mc_abort(mc_conn *c, const char *why);

/* Notifications from the server other than the $/ ones this layer handles
 * go to fn(arg, method, mlen, params, plen) on the reader thread, no lock
 * held; the bytes are valid during the call only. Set before the first
 * request is sent (fn NULL: dropped). */
typedef void (*mc_note_fn)(void *arg, const char *method, size_t mlen,
    const uint8_t *params, size_t plen);
void	 mc_set_notify(mc_conn *c, mc_note_fn fn, void *arg);

/* on: a reader thread reads this connection at all times, for
 * notifications the application wants as they come; off (the default):
 * between async calls, a sync caller reads its own answer itself. */
void	 mc_keep_reader(mc_conn *c, int on);

int	 mc_is_open(mc_conn *c);	/* neither broken nor closed */
int	 mc_is_draining(mc_conn *c);	/* the server sent $/drain */
unsigned mc_inflight(mc_conn *c);	/* calls awaiting an answer */
uint64_t mc_late(mc_conn *c);		/* answers nobody waited for */
void	 mc_set_max_frame(mc_conn *c, size_t bytes);
/* Hand large results over in the buffer they were read into (the
 * results_in_place option; result.h). */
void	 mc_set_in_place(mc_conn *c, int on);
/* Why it broke ("" while open); copies at most n bytes. */
void	 mc_why(mc_conn *c, char *buf, size_t n);

#endif
