/*
 * job.h - one transaction as it travels from the I/O thread through a pool
 * to its connection's output queue, and running it on a worker (job.c).
 *
 * A job is owned by its connection (its free list), which recycles it once
 * its answer is written or dropped. While it may still run plugin code it
 * holds a reference to the generation it was routed under (j->gen), so the
 * route, the plugin and its code outlive it.
 */
#ifndef DMX_JOB_H
#define DMX_JOB_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>

#include <msgpack.h>

#include "../common/buf.h"
#include "demux/plugin.h"
#include "router.h"

struct dmx_conn;
struct dmx_gen;

/* A job's state: who may answer it. Changed by compare-and-swap, so that a
 * result and an early answer (deadline, cancel, drain timeout) cannot both
 * be sent. */
enum dmx_job_state {
	DMX_JOB_QUEUED = 0,	/* waiting for a worker */
	DMX_JOB_RUNNING,	/* in process_transaction */
	DMX_JOB_DONE,		/* its own answer is (being) sent */
	DMX_JOB_ANSWERED,	/* answered early: do not run / drop result */
};

typedef struct dmx_job {
	struct demux_call_head head;	/* first: what plugin.h's wrappers read */
	struct dmx_job	*next;		/* pool queue, output queue, free list */
	struct dmx_job	*fl_prev, *fl_next; /* conn's in-flight list (conn mu) */
	struct dmx_job	*id_next;	/* conn's msgid hash chain (conn mu) */
	size_t		 timer_slot;	/* its deadline's heap index + 1, or 0
					 * (I/O thread only; timer.c) */
	_Atomic int	 state;		/* enum dmx_job_state */
	uint64_t	 seq;		/* bumped on every reuse (conn mu) */
	_Atomic int	 cancel;	/* $/cancelRequest arrived while running,
					 * its deadline passed, its connection
					 * closed or the drain timed out */
	/* deferred replies (defer.c): holds counts the worker (until
	 * process_transaction returns) and the plugin (until finish); the
	 * last to let go sends the answer. dflags: JOB_DEFERRED while the
	 * plugin holds it, JOB_OVERDUE once its deadline passed meanwhile */
	_Atomic int	 holds;
	_Atomic int	 dflags;
	struct dmx_conn	*conn;		/* owner; set once */
	/* routed requests only (route != NULL): set by the I/O thread before
	 * the job is submitted, read-only afterwards */
	struct dmx_gen	*gen;		/* holds a reference until the answer
					 * is built; NULL for host-made replies */
	const dmx_route	*route;		/* in gen's router */
	unsigned	 conn_id;	/* for the access log */
	const char	*identity;	/* the caller's (owned by its connection,
					 * which outlives the job) */
	uint32_t	 msgid;
	uint8_t		 notify;	/* a notification: nothing to send */
	uint8_t		 notice;	/* host-made: plugins' notifications
					 * (conn_peer.c); more may be appended
					 * while it waits in the queue */
	uint8_t		 hashed;	/* in its conn's idtab (conn mu) */
	uint8_t		 errored;	/* an error response is in `out` */
	uint8_t		 err_string;	/* its connection takes errors as one
					 * string (error_format: string) */
	int64_t		 err_code;	/* its code */
	uint64_t	 t_dispatch;	/* when the I/O thread routed it (ns) */
	const msgpack_object *params;	/* decoded, during process_transaction
					 * (demux_params) */
	uint64_t	 deadline;	/* ns (clock.h) it must be answered by,
					 * or 0: what demux_deadline() says */
	uint32_t	 meth_off;	/* the method name within `in` */
	uint32_t	 meth_len;
	uint32_t	 params_off;	/* params within `in` */
	uint32_t	 params_len;
	size_t		 in_bytes;	/* request bytes counted against the
					 * connection's and server's bounds */
	size_t		 result_off;	/* where the result starts in `out` */
	dmx_buf		 in;		/* the request frame */
	dmx_buf		 out;		/* the response, ready to write */
	msgpack_packer	 pk;		/* writes into `out` */
} dmx_job;

#define DMX_JOB_DEFERRED	1
#define DMX_JOB_OVERDUE		2

/* Run a routed job on a worker: decode, call the plugin, validate. Returns
 * 0 when the reply is in j->out (empty for a notification or a job
 * answered early) and the caller hands it on; 1 when the plugin deferred
 * it and still holds it: the caller forgets it (demux_deferred_finish
 * sends it). *now is a recent clock reading (ns) on entry and the end time
 * on return: jobs run back to back share readings (a clock read is not
 * free on every VM). */
int dmx_job_run(dmx_job *j, msgpack_zone *zone, uint64_t *now);
/* Make j's answer whole once the plugin is done packing: nil for nothing,
 * -32800 if it gave up after a cancel, -32603 for anything but exactly
 * one object. (job.c; defer.c calls it at finish) */
void dmx_job_seal(dmx_job *j);
/* A routed job's answer is ready (it is DONE): count it in its method's
 * figures, and the access log; `end` is now (ns). */
void dmx_job_account(dmx_job *j, uint64_t end);
/* The plugin's error (demux_error), for a direct or a deferred answer. */
void dmx_job_plugin_error(dmx_job *j, int64_t code, const char *trace,
    const char *fmt, va_list ap);
/* Make `out` hold an error response for the job's msgid. */
void dmx_job_set_error(dmx_job *j, int64_t code, const char *msg,
    const char *trace);

#endif
