/*
 * defer.c - deferred replies and peers: see defer.h and plugin.h.
 *
 * Who sends a deferred call's answer: the job's `holds` counts two owners
 * from demux_defer on, the worker (until process_transaction returns) and
 * the plugin (until demux_deferred_finish); whichever lets go last hands
 * the job to its connection. So finish may come from any thread at any
 * time, even from inside process_transaction or before it has returned,
 * and the job is never sent twice nor touched after it is sent.
 *
 * Who may answer it is settled as for a direct call, by compare-and-swap
 * on j->state (job.h): a deadline, $/cancelRequest, a closed connection or
 * the drain timeout marks it answered (or cancelled), and finish then
 * drops the plugin's answer. The gauges of open and overdue deferred calls
 * per method live in dmx_job.dflags, changed by atomic or/and so that
 * finish and a deadline firing at the same moment count it exactly once.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdlib.h>

#include "../common/clock.h"
#include "conn.h"
#include "defer.h"
#include "job.h"

/* ---- deferred replies ---- */

static demux_deferred *
host_defer(demux_call *c)
{
	dmx_job *j = (dmx_job *)c;

	if (atomic_load_explicit(&j->holds, memory_order_relaxed) == 0) {
		atomic_store(&j->holds, 2);
		atomic_fetch_or(&j->dflags, DMX_JOB_DEFERRED);
		atomic_fetch_add_explicit(&j->route->stats->deferred_open, 1,
		    memory_order_relaxed);
	}
	return (demux_deferred *)j;
}

static msgpack_packer *
host_deferred_result(demux_deferred *d)
{
	return &((dmx_job *)d)->pk;
}

static void
host_deferred_error(demux_deferred *d, int64_t code, const char *trace,
    const char *fmt, va_list ap)
{
	dmx_job_plugin_error((dmx_job *)d, code, trace, fmt, ap);
}

static void
host_deferred_finish(demux_deferred *d)
{
	dmx_job *j = (dmx_job *)d;
	dmx_route_stats *rs = j->route->stats;
	int st = DMX_JOB_RUNNING, fl;

	dmx_job_seal(j);
	if (j->notify)
		j->out.len = 0;
	if (atomic_compare_exchange_strong(&j->state, &st, DMX_JOB_DONE))
		dmx_job_account(j, dmx_now_ns());
	else
		j->out.len = 0;	/* answered early (and counted then) */
	fl = atomic_fetch_and(&j->dflags, ~DMX_JOB_DEFERRED);
	atomic_fetch_sub_explicit(&rs->deferred_open, 1, memory_order_relaxed);
	if (fl & DMX_JOB_OVERDUE)
		atomic_fetch_sub_explicit(&rs->deferred_overdue, 1,
		    memory_order_relaxed);
	if (atomic_fetch_sub(&j->holds, 1) == 1) {
		/* the worker let go already: send it from here */
		j->next = NULL;
		dmx_conn_send_list(j, NULL);
	}
}

static int
host_deferred_cancelled(demux_deferred *d)
{
	dmx_job *j = (dmx_job *)d;

	return atomic_load_explicit(&j->cancel, memory_order_relaxed) ||
	    atomic_load_explicit(&j->state, memory_order_relaxed) ==
	    DMX_JOB_ANSWERED;
}

/* ---- peers ---- */

typedef struct dmx_peer {
	struct demux_call_head head;	/* first: what plugin.h reads */
	dmx_conn	*conn;		/* a claim on it (peer_hold) */
} dmx_peer;

static int
host_peer_notify(demux_peer *p, const char *method, const char *params,
    size_t len)
{
	return dmx_conn_notify(((dmx_peer *)p)->conn, method, params, len);
}

static int
host_peer_closed(demux_peer *p)
{
	return dmx_conn_gone(((dmx_peer *)p)->conn);
}

static const char *
host_peer_identity(demux_peer *p)
{
	return dmx_conn_identity(((dmx_peer *)p)->conn);
}

static uint64_t
host_peer_id(demux_peer *p)
{
	return dmx_conn_id(((dmx_peer *)p)->conn);
}

static void
host_peer_release(demux_peer *p)
{
	dmx_peer *pp = (dmx_peer *)p;

	dmx_conn_peer_drop(pp->conn);
	free(pp);
}

/* The table a peer's wrappers reach: the server's own, not the plugin's,
 * so a peer never points into a plugin instance that has gone. */
static const demux_host peer_host = {
	.size = sizeof(demux_host),
	.abi_major = DEMUX_ABI_MAJOR,
	.abi_minor = DEMUX_ABI_MINOR,
	.peer_notify = host_peer_notify,
	.peer_closed = host_peer_closed,
	.peer_identity = host_peer_identity,
	.peer_release = host_peer_release,
	.peer_id = host_peer_id,
};

static demux_peer *
peer_new(dmx_conn *c)
{
	dmx_peer *p = malloc(sizeof(*p));

	if (p == NULL)
		return NULL;
	if (dmx_conn_peer_hold(c) != 0) {
		free(p);
		return NULL;
	}
	p->head.host = &peer_host;
	p->conn = c;
	return (demux_peer *)p;
}

static demux_peer *
host_call_peer(demux_call *c)
{
	return peer_new(((dmx_job *)c)->conn);
}

static demux_peer *
host_deferred_peer(demux_deferred *d)
{
	return peer_new(((dmx_job *)d)->conn);
}

void
dmx_defer_fill(demux_host *h)
{
	h->defer = host_defer;
	h->deferred_result = host_deferred_result;
	h->deferred_error = host_deferred_error;
	h->deferred_finish = host_deferred_finish;
	h->deferred_cancelled = host_deferred_cancelled;
	h->call_peer = host_call_peer;
	h->deferred_peer = host_deferred_peer;
	h->peer_notify = host_peer_notify;
	h->peer_closed = host_peer_closed;
	h->peer_identity = host_peer_identity;
	h->peer_release = host_peer_release;
	h->peer_id = host_peer_id;
}
