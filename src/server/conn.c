/*
 * conn.c - the connection set and each connection's life: accepting one
 * onto the loop, attention, timeouts, deadlines, cancellation, the drain,
 * the server-wide memory bound, and freeing it after its last claim. See
 * conn.h for the design, conn_impl.h for the struct and its guards.
 *
 * Lock order: c->mu, then the loop's attention lock; no executor lock is
 * ever taken under c->mu (conn_impl.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "../common/msg.h"
#include "conn_impl.h"
#include "log.h"

/* ---- the set ---- */

void
dmx_conns_set_inline(dmx_conns *cs, struct dmx_inline *in)
{
	cs->inl = in;
}

dmx_conns *
dmx_conns_new(dmx_loop *loop, dmx_gen_slot *gens, dmx_server_stats *stats)
{
	dmx_conns *cs = calloc(1, sizeof(*cs));

	if (cs == NULL)
		return NULL;
	cs->loop = loop;
	cs->gens = gens;
	cs->stats = stats;
	atomic_init(&cs->refs, 1);
	dmx_budget_init(&cs->budget, loop);
	return cs;
}

void
dmx_conns_free(dmx_conns *cs)
{
	if (cs == NULL)
		return;
	while (cs->head != NULL)
		conn_release(cs->head);
	dmx_conns_unref(cs);
}

void
dmx_conns_trust(dmx_conns *cs)
{
	cs->trusted = 1;
}

unsigned
dmx_conns_count(const dmx_conns *cs)
{
	return cs->n;
}

/* The loop's on_ready. Connections are only released from on_attn, after
 * the whole batch of events: a later event never reaches a freed one. */
static void
conn_ready(dmx_io *io, uint32_t f)
{
	dmx_conn *c = (dmx_conn *)io;

	if (f & (EPOLLOUT | EPOLLERR | EPOLLHUP) && c->io.events & EPOLLOUT)
		conn_on_writable(c);
	if (f & (EPOLLIN | EPOLLERR | EPOLLHUP) && c->io.events & EPOLLIN)
		conn_on_readable(c);
}

static void conn_attend(dmx_io *io);

int
conn_set_identity(dmx_conn *c, const char *identity)
{
	size_t n = strlen(identity) + 1;
	struct conn_ident *e = malloc(sizeof(*e) + n);

	if (e == NULL)
		return -1;
	memcpy(e->name, identity, n);
	e->next = c->idents;
	c->idents = e;
	c->identity = e->name;
	atomic_store_explicit(&c->ident_now, e->name, memory_order_release);
	c->acl_gen = NULL;	/* the rules apply anew */
	return 0;
}

unsigned
dmx_conns_add(dmx_conns *cs, dmx_xport *x, const char *identity,
    const char *peer, unsigned flags)
{
	dmx_conn *c = calloc(1, sizeof(*c));
	unsigned id;

	if (c == NULL || conn_set_identity(c, identity) != 0) {
		free(c);
		dmx_xport_free(x);
		errno = ENOMEM;
		return 0;
	}
	c->io.on_ready = conn_ready;
	c->io.on_attn = conn_attend;
	c->io.rfd = x->rfd;
	c->io.wfd = x->wfd;
	c->cs = cs;
	atomic_fetch_add(&cs->refs, 1);
	c->xp = x;
	c->id = ++cs->next_id;
	snprintf(c->peer, sizeof(c->peer), "%s", peer);
	c->err_string = (flags & DMX_CONN_ERR_STRING) != 0;
	c->last_active = dmx_now_ns();
	c->out_limit = dmx_gen_current(cs->gens)->cfg->max_output;
	pthread_mutex_init(&c->mu, NULL);
	if (conn_watch(c, EPOLLIN) != 0) {
		int e = errno;

		pthread_mutex_destroy(&c->mu);
		dmx_xport_free(x);
		free(c->idents);
		free(c);
		atomic_fetch_sub(&cs->refs, 1);
		errno = e;
		return 0;
	}
	c->next = cs->head;
	if (cs->head)
		cs->head->prev = c;
	cs->head = c;
	cs->n++;
	atomic_fetch_add_explicit(&cs->stats->connections, 1,
	    memory_order_relaxed);
	atomic_fetch_add_explicit(&cs->stats->accepted, 1,
	    memory_order_relaxed);
	id = c->id;
	/* bytes the transport already holds (TLS read ahead with the
	 * handshake) would wait for an epoll event that never comes: read
	 * them now (which may close c) */
	if (dmx_xport_pending(x))
		conn_ready(&c->io, EPOLLIN);
	return id;
}

void
dmx_conns_limits(dmx_conns *cs, const dmx_config *cfg)
{
	dmx_budget_limit(&cs->budget, cfg->max_memory);
}

/* Below half the memory bound again: resume who waited. */
static void
mem_resume(dmx_conns *cs)
{
	dmx_conn *c, *next;

	if (!dmx_budget_woken(&cs->budget))
		return;
	for (c = cs->head; c != NULL; c = next) {
		next = c->next;		/* resuming reads: c may go */
		if (c->mem_paused) {
			dmx_budget_resumed(&cs->budget);
			conn_mem_resume(c);
		}
	}
}

/* ---- attention (I/O thread) ---- */

/* The loop's on_attn: act on what workers reported. */
static void
conn_attend(dmx_io *io)
{
	dmx_conn *c = (dmx_conn *)io;
	int want_out, broken, resume, idle, flushing;

	pthread_mutex_lock(&c->mu);
	if (c->flush_asked) {
		/* plugins' notifications gathered since they asked: one
		 * writev for all (the I/O thread holds c: never the last) */
		c->flush_asked = 0;
		if (!c->writing && !c->want_out && c->oq_head != NULL)
			(void)conn_flush_locked(c);
	}
	want_out = c->want_out;
	broken = c->broken;
	resume = c->paused && c->inflight <= c->resume_inflight &&
	    c->oq_bytes <= c->resume_output &&
	    c->in_bytes <= c->resume_in_bytes;
	if (resume)
		c->paused = 0;
	idle = c->inflight == 0;
	flushing = c->writing || c->oq_head != NULL;
	pthread_mutex_unlock(&c->mu);

	if (broken) {
		conn_release(c);
		return;
	}
	if (c->rd_closed && idle && !flushing) {
		conn_release(c);
		return;
	}
	if (c->draining && idle && !flushing) {
		/* A request the client sent before it saw $/drain may still be
		 * on its way; closing now would lose it with no answer (its
		 * caller could not tell it never ran). Linger, answering such
		 * requests -32012 "not executed", until the client closes
		 * (libmux does once it has nothing in flight) or
		 * DMX_DRAIN_LINGER_MS pass (dmx_conns_tick looks again). */
		uint64_t now = dmx_now_ns();

		if (c->drain_idle_since == 0)
			c->drain_idle_since = now;
		if (now - c->drain_idle_since >=
		    (uint64_t)DMX_DRAIN_LINGER_MS * 1000000u) {
			conn_release(c);
			return;
		}
	} else if (c->draining) {
		c->drain_idle_since = 0;
	}
	if (c->draining && c->abandoned && !flushing) {
		/* drain timeout: the -32012 answers are out; the stuck jobs
		 * will find the connection gone */
		conn_release(c);
		return;
	}
	if (c->discard && idle && !flushing && !c->wr_shut) {
		/* every answer is out: tell the client we are done, and keep
		 * draining its input until it closes too */
		dmx_xport_shutdown(c->xp, SHUT_WR);
		c->wr_shut = 1;
	}
	if (resume && !c->rd_closed && !c->mem_paused) {
		conn_watch(c, c->io.events | EPOLLIN);
		/* data waiting in the socket is reported by level-triggered
		 * epoll; frames already read but not parsed are not, nor
		 * what the transport read ahead (TLS) */
		if (c->rbuf_pending || dmx_xport_pending(c->xp))
			conn_on_readable(c);
	}
	if (want_out && !(c->io.events & EPOLLOUT))
		conn_watch(c, c->io.events | EPOLLOUT);
	else if (!want_out && (c->io.events & EPOLLOUT))
		conn_watch(c, c->io.events & ~(uint32_t)EPOLLOUT);
}

/* ---- timeouts ---- */

static int
check_timeouts(dmx_conn *c, uint64_t now, uint64_t idle_ns,
    uint64_t frame_ns)
{
	unsigned active, parked = 0;
	uint64_t last_write;
	int output, stalled;
	dmx_job *j;

	if (frame_ns > 0 && c->frame_since != 0 &&
	    now - c->frame_since >= frame_ns && !c->rd_closed) {
		dmx_info("conn %u: a frame begun %llu ms ago is still "
		    "incomplete (frame_timeout_ms): closing", c->id,
		    (unsigned long long)((now - c->frame_since) / 1000000u));
		conn_notice(c, DMX_E_TOO_LARGE, "frame not completed "
		    "within frame_timeout_ms (%llu ms); closing the connection",
		    (unsigned long long)(frame_ns / 1000000u));
		conn_stop_reading(c);
		return 0;	/* closes once the notice is out */
	}
	if (idle_ns == 0 || now - c->last_active < idle_ns || c->mem_paused)
		return 0;	/* (paused for memory: the silence is ours) */
	pthread_mutex_lock(&c->mu);
	for (j = c->parked; j != NULL; j = j->next)
		parked++;
	active = c->inflight - c->oq_n - parked;
	/* output that is being written is not idle; output blocked on a full
	 * socket is, once the client has made no room for idle_ns */
	output = c->oq_head != NULL;
	stalled = output && c->want_out;
	last_write = c->last_write;
	pthread_mutex_unlock(&c->mu);
	if (active > 0)
		return 0;	/* a handler is still working for it */
	if (output && (!stalled || now - last_write < idle_ns))
		return 0;	/* it is reading its answers, slowly */
	dmx_debug("conn %u: idle for %llu ms%s: closing", c->id,
	    (unsigned long long)(idle_ns / 1000000u), output ?
	    " with answers it does not read" : c->discard ?
	    " after a bad frame" : "");
	if (output || c->discard || c->rd_closed) {
		/* nothing more can come of it: drop what is queued */
		conn_release(c);
		return 1;
	}
	conn_stop_reading(c);
	return 0;
}

/* ---- deadlines ---- */

void
dmx_conn_expire(dmx_job *j, uint64_t seq, unsigned timeout_ms)
{
	dmx_conn *c = j->conn;
	const dmx_route *rt = NULL;
	dmx_exec *run_exec = NULL;
	uint32_t msgid = 0;
	int st = -1, answer = 0, notify = 0, deferred = 0, last;

	pthread_mutex_lock(&c->mu);
	if (j->seq == seq) {
		st = atomic_load(&j->state);
		if ((st == DMX_JOB_QUEUED || st == DMX_JOB_RUNNING) &&
		    atomic_compare_exchange_strong(&j->state, &st,
		    DMX_JOB_ANSWERED)) {
			answer = 1;
			rt = j->route;
			msgid = j->msgid;
			notify = j->notify;
			if (st == DMX_JOB_RUNNING) {
				/* the answer is gone: demux_cancelled() tells
				 * a cooperative handler to stop */
				atomic_store(&j->cancel, 1);
				run_exec = rt->plugin->exec;
				/* a deferred call stays open until finish:
				 * counted as overdue until then (defer.c) */
				if (atomic_fetch_or(&j->dflags, DMX_JOB_OVERDUE) &
				    DMX_JOB_DEFERRED) {
					deferred = 1;
					atomic_fetch_add(
					    &rt->stats->deferred_overdue, 1);
				}
			}
		}
	}
	pthread_mutex_unlock(&c->mu);
	if (run_exec != NULL)
		dmx_exec_cancel(run_exec, j, seq);
	if (answer) {
		dmx_method_stats *ms = &rt->stats->m;

		atomic_fetch_add(&rt->stats->timeouts, 1);
		atomic_fetch_add(&ms->calls, 1);
		dmx_method_error(ms, DMX_E_TIMED_OUT);
		if (deferred)
			dmx_debug("%s: a deferred call still open %u ms "
			    "after its start: answered -32011", rt->name,
			    timeout_ms);
		else if (st == DMX_JOB_RUNNING)
			dmx_warn("%s: still running %u ms after its start "
			    "(timeout_ms %u): answered -32011, its worker is "
			    "stuck until the handler returns", rt->name,
			    timeout_ms, timeout_ms);
		dmx_access_log(c->id, msgid, notify, rt->name, rt->len, 1,
		    DMX_E_TIMED_OUT, (uint64_t)timeout_ms * 1000000u);
		if (!notify && !c->released && st == DMX_JOB_QUEUED)
			conn_reply_error(c, msgid, DMX_E_TIMED_OUT, "timed "
			    "out: %s waited %u ms for a worker and was not "
			    "started; safe to retry", rt->name, timeout_ms);
		else if (!notify && !c->released)
			conn_reply_error(c, msgid, DMX_E_TIMED_OUT, "timed "
			    "out: %s took longer than %u ms; it was told to "
			    "stop (demux_cancelled) and its result will be "
			    "dropped", rt->name, timeout_ms);
	}
	pthread_mutex_lock(&c->mu);
	c->timers--;
	last = conn_unclaimed_locked(c);
	pthread_mutex_unlock(&c->mu);
	if (last)
		conn_free(c);
}

/* ---- drain ---- */

static void
drain(dmx_conn *c)
{
	dmx_job *j;

	if (c->draining)
		return;
	c->draining = 1;
	/* [2, "$/drain", []]: send nothing new on this connection */
	j = conn_job(c);
	if (j != NULL) {
		msgpack_packer pk;

		msgpack_packer_init(&pk, &j->out, dmx_buf_pack_write);
		dmx_msg_drain(&pk);
		conn_send(j);
	}
	pthread_mutex_lock(&c->mu);
	c->closing = 1;			/* wake us when idle */
	conn_attn_locked(c);
	pthread_mutex_unlock(&c->mu);
}

static unsigned
abandon(dmx_conn *c)
{
	struct { uint32_t msgid; int ran; } *ans = NULL;
	unsigned n = 0, cap = 0, i;
	dmx_job *j;
	int st;

	pthread_mutex_lock(&c->mu);
	for (j = c->flight; j != NULL; j = j->fl_next) {
		if (j->route == NULL)
			continue;	/* a host-made reply, not a request */
		st = atomic_load(&j->state);
		if ((st != DMX_JOB_QUEUED && st != DMX_JOB_RUNNING) ||
		    !atomic_compare_exchange_strong(&j->state, &st,
		    DMX_JOB_ANSWERED))
			continue;
		if (st == DMX_JOB_RUNNING)
			atomic_store(&j->cancel, 1);
		{
			dmx_method_stats *ms = &j->route->stats->m;

			atomic_fetch_add(&ms->calls, 1);
			dmx_method_error(ms, DMX_E_SHUTTING_DOWN);
		}
		if (j->notify)
			continue;
		if (n == cap) {
			void *p = realloc(ans, (cap ? cap * 2 : 16) *
			    sizeof(*ans));

			if (p == NULL)
				break;
			ans = p;
			cap = cap ? cap * 2 : 16;
		}
		ans[n].msgid = j->msgid;
		ans[n].ran = st == DMX_JOB_RUNNING;
		n++;
	}
	pthread_mutex_unlock(&c->mu);
	for (i = 0; i < n; i++)
		conn_reply_error(c, ans[i].msgid, DMX_E_SHUTTING_DOWN,
		    "%s", ans[i].ran ? "shutting down: drain_timeout_ms passed; "
		    "the handler was still running, its result will be dropped"
		    : DMX_NOT_EXECUTED_DRAINING " (drain_timeout_ms passed), "
		    "safe to retry elsewhere");
	free(ans);
	c->abandoned = 1;
	pthread_mutex_lock(&c->mu);
	conn_attn_locked(c);
	pthread_mutex_unlock(&c->mu);
	return n;
}

/* ---- lifetime ---- */

void
conn_release(dmx_conn *c)
{
	dmx_conns *cs = c->cs;
	dmx_job *unparked, *j;
	int last;

	conn_watch(c, 0);
	if (c->prev)
		c->prev->next = c->next;
	else
		cs->head = c->next;
	if (c->next)
		c->next->prev = c->prev;
	cs->n--;
	atomic_fetch_sub_explicit(&cs->stats->connections, 1,
	    memory_order_relaxed);
	dmx_debug("conn %u: closed", c->id);
	dmx_xport_shutdown(c->xp, SHUT_RDWR);	/* the peer sees EOF now */
	pthread_mutex_lock(&c->mu);
	/* from now on nobody asks for attention (conn_attn_locked): forget
	 * what was asked before */
	c->released = 1;
	dmx_loop_attn_cancel(cs->loop, &c->io);
	c->broken = 1;
	/* its deadlines: nobody is left to answer -32011 to, and they must
	 * not keep the connection (descriptor, buffers) until they fire */
	for (j = c->flight; j != NULL; j = j->fl_next) {
		c->timers -= (unsigned)dmx_loop_deadline_del(c->cs->loop, j);
		/* nobody is left to answer: demux_cancelled() and
		 * demux_deferred_cancelled() say so */
		if (j->route != NULL)
			atomic_store(&j->cancel, 1);
	}
	for (j = c->free_jobs; j != NULL; j = j->next)
		c->timers -= (unsigned)dmx_loop_deadline_del(c->cs->loop, j);
	last = conn_unclaimed_locked(c);
	if (!last && !c->writing && c->oq_head != NULL)
		last = conn_flush_locked(c);		/* recycles queued replies */
	/* parked jobs run as every accepted job does; their replies are
	 * dropped (they hold claims: last is 0 while there are any) */
	unparked = conn_take_unparked_locked(c);
	pthread_mutex_unlock(&c->mu);
	conn_requeue(unparked);
	if (last)
		conn_free(c);
}

/* ---- the whole set (I/O thread) ---- */

/*
 * idle_timeout_ms: close connections that have sent nothing for that long
 * and have nothing running (a slowloris, a client that forgot us, one that
 * sent a bad frame, one that stopped reading its answers);
 * frame_timeout_ms: close those whose frame began that long ago and is
 * still incomplete. One scan every quarter of the shorter; returns ms
 * until the next scan, -1 if neither is set.
 */
static int
close_idle(dmx_conns *cs)
{
	const dmx_config *cfg = dmx_gen_current(cs->gens)->cfg;
	uint64_t now = dmx_now_ns(), idle_ns, frame_ns, shortest, step;
	dmx_conn *c, *next;

	if (atomic_load_explicit(&cs->stats->draining, memory_order_relaxed))
		return -1;
	idle_ns = (uint64_t)cfg->idle_timeout_ms * 1000000u;
	frame_ns = (uint64_t)cfg->frame_timeout_ms * 1000000u;
	if (idle_ns == 0 && frame_ns == 0)
		return -1;
	shortest = idle_ns == 0 ? frame_ns : frame_ns == 0 ? idle_ns :
	    idle_ns < frame_ns ? idle_ns : frame_ns;
	step = shortest / 4 > 1000000u ? shortest / 4 : 1000000u;
	if (now < cs->next_check)
		return (int)((cs->next_check - now) / 1000000u) + 1;
	cs->next_check = now + step;
	for (c = cs->head; c != NULL; c = next) {
		next = c->next;		/* c may be freed */
		check_timeouts(c, now, idle_ns, frame_ns);
	}
	return (int)(step / 1000000u) + 1;
}

/*
 * While draining: connections idle since their $/drain linger (see
 * conn_attend) until their clients close or DMX_DRAIN_LINGER_MS pass.
 * Attend those whose time is up; returns ms until the next, -1 if none.
 */
static int
end_lingering(dmx_conns *cs)
{
	uint64_t now = dmx_now_ns(), linger = DMX_DRAIN_LINGER_MS * 1000000ull,
	    left, soonest = 0;
	dmx_conn *c, *next;

	for (c = cs->head; c != NULL; c = next) {
		next = c->next;		/* attend may free c */
		if (c->drain_idle_since == 0)
			continue;
		if (now - c->drain_idle_since >= linger) {
			conn_attend(&c->io);
			continue;
		}
		left = linger - (now - c->drain_idle_since);
		if (soonest == 0 || left < soonest)
			soonest = left;
	}
	return soonest ? (int)(soonest / 1000000u) + 1 : -1;
}

static int
sooner(int a, int b)
{
	return a < 0 ? b : b < 0 ? a : a < b ? a : b;
}

int
dmx_conns_tick(dmx_conns *cs)
{
	int ms;

	mem_resume(cs);
	ms = close_idle(cs);
	if (atomic_load_explicit(&cs->stats->draining, memory_order_relaxed))
		ms = sooner(ms, end_lingering(cs));
	return ms;
}

void
dmx_conns_drain(dmx_conns *cs, int stdio)
{
	dmx_conn *c, *next;

	atomic_store(&cs->stats->draining, 1);
	for (c = cs->head; c != NULL; c = next) {
		next = c->next;
		if (stdio)
			conn_stop_reading(c);
		else
			drain(c);
	}
}

unsigned
dmx_conns_abandon(dmx_conns *cs)
{
	dmx_conn *c, *next;
	unsigned n = 0;

	for (c = cs->head; c != NULL; c = next) {
		next = c->next;
		n += abandon(c);
	}
	return n;
}
