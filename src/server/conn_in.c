/*
 * conn_in.c - a connection's way in (I/O thread): read, frame, dispatch.
 *
 * Reads go into the loop's scratch buffer; only a partial frame left at the
 * end of a read is copied into the connection's own buffer, so an idle
 * connection holds no buffer at all.
 *
 * Bad input never costs anyone else anything: a frame that is valid msgpack
 * but not a valid request is answered (with its msgid when one can be read,
 * else with the notification $/error) and the connection goes on; bytes that
 * are not msgpack, or a frame over max_frame, end this connection only, after
 * the error has been sent and every accepted request answered.
 *
 * Lock order: as in conn_impl.h (c->mu, then the loop's attention lock);
 * executors' submit is called with no connection lock held.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include "../common/msg.h"
#include "../common/text.h"
#include "access.h"
#include "builtins.h"
#include "conn_impl.h"
#include "inline.h"
#include "log.h"

#define READ_CHUNK	(256u << 10)	/* growth of a partial frame's buffer */
#define READ_BUDGET	(4u << 20)	/* bytes per readable event, fairness */
#define CHECK_EVERY	256		/* frames between back-pressure checks */

/* ---- dispatch (I/O thread) ---- */

/* The jobs of one read pass, by the pool that will run them: each pool gets
 * its jobs in one submit. */
#define BATCH_POOLS 8
typedef struct batch {
	struct {
		dmx_exec *pool;
		dmx_job	 *head, *tail;
		unsigned  n;
	} q[BATCH_POOLS];
	unsigned nq;
	dmx_gen	*gen;		/* every job's: one read pass, one generation */
	unsigned long refs;	/* jobs in q that hold a reference to it */
	size_t	 bytes;		/* their request bytes (max_memory) */
	dmx_job	*pending;	/* dispatched, not yet committed (id_next) */
	unsigned claims;	/* timer claims of those */
	unsigned inflight;	/* the connection's jobs not yet recycled, at
				 * the last commit (these included) */
} batch;

/* Account the jobs dispatched since the last commit on the connection:
 * request bytes, timer claims, msgid entries. One lock per read pass. */
static void
commit(dmx_conn *c, batch *bt)
{
	dmx_job *j, *next;

	if (bt->pending == NULL)
		return;
	pthread_mutex_lock(&c->mu);
	c->timers += bt->claims;
	for (j = bt->pending; j != NULL; j = next) {
		next = j->id_next;
		j->id_next = NULL;
		c->in_bytes += j->in_bytes;
		if (!j->notify)
			conn_id_insert_locked(c, j);
	}
	bt->inflight = c->inflight;
	pthread_mutex_unlock(&c->mu);
	bt->pending = NULL;
	bt->claims = 0;
}

static void submit(dmx_conn *c, batch *bt);

/* ---- who may call what ---- */

/* Is c's caller allowed rt? Cached per route for the generation and the
 * identity it was decided for (a new identity forgets acl_gen): after the
 * first call of a method, one load and a compare. */
static int
route_allowed(dmx_conn *c, const dmx_gen *g, const dmx_route *rt)
{
	size_t i = rt->pos;

	if (c->acl_gen != g) {
		size_t n = dmx_router_count(g->router);
		uint8_t *t = realloc(c->acl, n ? n : 1);

		if (t == NULL)
			return dmx_access_allowed(g->cfg, c->identity,
			    rt->name);
		memset(t, 0, n ? n : 1);
		c->acl = t;
		c->nacl = n;
		c->acl_gen = g;
	}
	if (c->acl[i] == 0)
		c->acl[i] = dmx_access_allowed(g->cfg, c->identity,
		    rt->name) ? 1 : 2;
	return c->acl[i] == 1;
}

/* A call the rules refuse: not executed; -32015 for an anonymous caller,
 * -32016 for a known one; a notification is dropped. Counted. */
static void
refuse(dmx_conn *c, uint32_t msgid, int notify, const char *m, uint32_t ml)
{
	int anon = strcmp(c->identity, DMX_ANONYMOUS) == 0;
	int64_t code = anon ? DMX_E_UNAUTHENTICATED : DMX_E_PERMISSION_DENIED;

	dmx_refusal_count(&c->cs->stats->refusals, c->identity);
	if (!notify) {
		int cut = (int)dmx_utf8_cut(m, ml, 200);

		if (anon)
			conn_reply_error(c, msgid, code, "unauthenticated: "
			    "%.*s needs authentication", cut, m);
		else
			conn_reply_error(c, msgid, code, "permission denied: "
			    "%s may not call %.*s", c->identity, cut, m);
	}
	dmx_access_log(c->id, msgid, notify, m, ml, 1, code, 0);
}

/* $/auth [name, secret]: true, or -32015 "authentication failed" (the same
 * for an unknown name); past max_failures the connection is closed. */
static void
auth(dmx_conn *c, const dmx_config *cfg, uint32_t msgid, const dmx_rd *params)
{
	const dmx_conf_token *t = NULL;
	const char *name = "", *secret = "";
	uint32_t n, nl = 0, sl = 0;
	dmx_rd r = *params;
	char who[160];

	if (dmx_rd_array(&r, &n) == 0 && n == 2 &&
	    dmx_rd_str(&r, &name, &nl) == 0 && dmx_rd_str(&r, &secret, &sl) == 0)
		t = dmx_access_token(cfg, name, nl, secret, sl);
	if (t != NULL) {
		char id[300];
		dmx_buf res = DMX_BUF_INIT;
		msgpack_packer pk;

		snprintf(id, sizeof(id), "token:%s", t->name);
		if (conn_set_identity(c, id) != 0) {
			conn_reply_error(c, msgid, DMX_E_INTERNAL, "out of "
			    "memory");
			return;
		}
		dmx_info("conn %u (%s): authenticated as %s", c->id, c->peer,
		    c->identity);
		msgpack_packer_init(&pk, &res, dmx_buf_pack_write);
		msgpack_pack_true(&pk);
		conn_reply(c, msgid, res.data, res.len);
		dmx_buf_release(&res);
		dmx_access_log(c->id, msgid, 0, "$/auth", 6, 0, 0, 0);
		return;
	}
	c->auth_failures++;
	dmx_escape(who, sizeof(who), name, nl, 64);
	dmx_warn("conn %u (%s): $/auth failed for '%s' (%u of %u allowed)",
	    c->id, c->peer, who, c->auth_failures, cfg->max_failures);
	conn_reply_error(c, msgid, DMX_E_UNAUTHENTICATED,
	    "authentication failed");
	dmx_access_log(c->id, msgid, 0, "$/auth", 6, 1, DMX_E_UNAUTHENTICATED,
	    0);
	if (c->auth_failures >= cfg->max_failures) {
		dmx_info("conn %u (%s): %u failed $/auth: closing", c->id,
		    c->peer, c->auth_failures);
		conn_stop_reading(c);	/* closes once the answer is out */
	}
}

/* One complete frame. */
static void
dispatch(dmx_conn *c, const uint8_t *p, size_t len, batch *bt)
{
	const dmx_route *rt;
	const char *m;
	uint32_t n, ml;
	uint64_t type, msgid = 0;
	int notify;
	dmx_rd r;
	dmx_job *j;

	atomic_fetch_add_explicit(&c->cs->stats->requests, 1,
	    memory_order_relaxed);
	dmx_rd_init(&r, p, len);
	if (dmx_rd_array(&r, &n) != 0 || n == 0 || dmx_rd_uint(&r, &type) != 0) {
		conn_notice(c, DMX_E_INVALID_REQUEST, "invalid request: "
		    "expected [0, msgid, method, params] or [2, method, params]");
		return;
	}
	if (type == DMX_MSG_REQUEST) {
		/* answer with the msgid whenever one can be read, even when the
		 * rest of the request is malformed */
		if (n < 2 || dmx_rd_uint(&r, &msgid) != 0 || msgid > UINT32_MAX) {
			conn_notice(c, DMX_E_INVALID_REQUEST,
			    "invalid request: msgid must be a uint32");
			return;
		}
		if (n != 4) {
			conn_reply_error(c, (uint32_t)msgid, DMX_E_INVALID_REQUEST,
			    "invalid request: a request has 4 elements, not %u",
			    n);
			return;
		}
		notify = 0;
	} else if (type == DMX_MSG_NOTIFY && n == 3) {
		notify = 1;
	} else {
		/* a response, an unknown type, or a malformed notification:
		 * there is no msgid to answer to */
		conn_notice(c, DMX_E_INVALID_REQUEST, "invalid request: "
		    "type %llu with %u elements", (unsigned long long)type, n);
		return;
	}
	if (dmx_rd_str(&r, &m, &ml) != 0) {
		if (notify)
			conn_notice(c, DMX_E_INVALID_REQUEST,
			    "invalid notification: method must be a string");
		else
			conn_reply_error(c, (uint32_t)msgid, DMX_E_INVALID_REQUEST,
			    "invalid request: method must be a string");
		return;
	}
	if (!dmx_rd_is_array(&r)) {
		if (notify)
			conn_notice(c, DMX_E_INVALID_REQUEST,
			    "invalid notification: params must be an array");
		else
			conn_reply_error(c, (uint32_t)msgid, DMX_E_INVALID_REQUEST,
			    "invalid request: params must be an array");
		return;
	}
	if (notify && ml == 15 && memcmp(m, "$/cancelRequest", 15) == 0) {
		/* [2, "$/cancelRequest", [msgid]] (LSP) */
		dmx_rd pr = r;
		uint64_t id;

		if (dmx_rd_array(&pr, &n) == 0 && n >= 1 &&
		    dmx_rd_uint(&pr, &id) == 0 && id <= UINT32_MAX) {
			commit(c, bt);	/* it may cancel one of this pass */
			conn_cancel(c, (uint32_t)id);
		}
		return;
	}
	if (notify && ml == 4 && memcmp(m, "$/as", 4) == 0 && c->cs->trusted) {
		/* plugin-host mode: demuxd says who calls next */
		const char *id;
		uint32_t il;
		dmx_rd pr = r;

		if (dmx_rd_array(&pr, &n) == 0 && n == 1 &&
		    dmx_rd_str(&pr, &id, &il) == 0 && il < 128) {
			char buf[128];

			memcpy(buf, id, il);
			buf[il] = '\0';
			commit(c, bt);
			conn_set_identity(c, buf);
		}
		return;
	}
	if (notify && ml == 10 && memcmp(m, "$/deadline", 10) == 0 &&
	    c->cs->trusted) {
		/* plugin-host mode: the next request's deadline, for
		 * demux_deadline() (demuxd answers -32011 and cancels) */
		uint64_t at;
		dmx_rd pr = r;

		if (dmx_rd_array(&pr, &n) == 0 && n == 1 &&
		    dmx_rd_uint(&pr, &at) == 0)
			c->next_deadline = at;
		return;
	}
	if (ml == 6 && memcmp(m, "$/auth", 6) == 0) {
		if (!notify)
			auth(c, bt->gen->cfg, (uint32_t)msgid, &r);
		return;
	}
	if (ml >= 2 && m[0] == '$' && m[1] == '/') {
		dmx_buf res = DMX_BUF_INIT;
		int code = 0;

		if (!dmx_access_allowed_n(bt->gen->cfg, c->identity, m, ml)) {
			refuse(c, (uint32_t)msgid, notify, m, ml);
			return;
		}
		/* $/ notifications the server does not know are ignored, as
		 * LSP specifies */
		if (!notify) {
			code = dmx_builtin(bt->gen, c->cs->stats, c->identity,
			    m, ml, &res);
			if (code == 0)
				conn_reply(c, (uint32_t)msgid, res.data,
				    res.len);
			else
				conn_reply_error(c, (uint32_t)msgid, code,
				    "method '%.*s' not found",
				    (int)dmx_utf8_cut(m, ml, 200), m);
			dmx_buf_release(&res);
		}

		dmx_access_log(c->id, (uint32_t)msgid, notify, m, ml, code != 0,
		    code, 0);
		return;
	}
	if (c->draining) {
		/* after $/drain: nothing new runs here */
		if (!notify)
			conn_reply_error(c, (uint32_t)msgid,
			    DMX_E_SHUTTING_DOWN, DMX_NOT_EXECUTED_DRAINING
			    ", safe to retry elsewhere");
		dmx_access_log(c->id, (uint32_t)msgid, notify, m, ml, 1,
		    DMX_E_SHUTTING_DOWN, 0);
		return;
	}
	rt = dmx_router_route(bt->gen->router, m, ml);
	/* refused before it is known whether the method exists: a caller
	 * learns nothing of what it may not call. A catch-all's rules are
	 * those of the name called. */
	if (bt->gen->cfg->has_access && !(rt != NULL && !rt->catchall ?
	    route_allowed(c, bt->gen, rt) : dmx_access_allowed_n(bt->gen->cfg,
	    c->identity, m, ml))) {
		refuse(c, (uint32_t)msgid, notify, m, ml);
		return;
	}
	if (rt == NULL) {
		if (notify) {
			char name[900];

			dmx_escape(name, sizeof(name), m, ml, 200);
			dmx_debug("conn %u: notification for unknown method "
			    "'%s' dropped", c->id, name);
		} else {
			/* cut on a character boundary: clients decode it */
			conn_reply_error(c, (uint32_t)msgid, DMX_E_NO_METHOD,
			    "method '%.*s' not found",
			    (int)dmx_utf8_cut(m, ml, 200), m);
		}
		dmx_access_log(c->id, (uint32_t)msgid, notify, m, ml, 1,
		    DMX_E_NO_METHOD, 0);
		return;
	}
	j = conn_job(c);
	if (j == NULL || dmx_buf_append(&j->in, p, len) != 0) {
		if (j != NULL) {
			j->msgid = (uint32_t)msgid;
			j->notify = (uint8_t)notify;
			dmx_job_set_error(j, DMX_E_INTERNAL, "out of memory", NULL);
			if (notify)
				j->out.len = 0;
			conn_send(j);
		}
		return;
	}
	j->gen = bt->gen;		/* its reference is taken in submit */
	bt->refs++;
	j->route = rt;
	j->msgid = (uint32_t)msgid;
	j->notify = (uint8_t)notify;
	/* a catch-all's handler is told the name called: where it is in
	 * the frame */
	j->meth_off = (uint32_t)((const uint8_t *)m - (const uint8_t *)p);
	j->meth_len = (uint32_t)ml;
	j->t_dispatch = c->last_active;	/* when this read happened */
	/* the I/O thread is the only writer: no read-modify-write needed */
	atomic_store_explicit(&rt->stats->m.dispatched, atomic_load_explicit(
	    &rt->stats->m.dispatched, memory_order_relaxed) + 1,
	    memory_order_relaxed);
	/* its bytes count against max_inflight_bytes and max_memory until
	 * it is recycled */
	j->in_bytes = len;
	bt->bytes += len;	/* added to the server's count in submit */
	/* its timer claim, bytes and msgid entry reach the connection in
	 * commit(), for the whole read pass under one lock (the job is not
	 * visible to any other thread before then) */
	/* in plugin-host mode demuxd keeps the deadline and says what it
	 * is ($/deadline); the child only reports it to the plugin */
	j->deadline = rt->timeout_ms > 0 ? j->t_dispatch +
	    (uint64_t)rt->timeout_ms * 1000000u : c->next_deadline;
	c->next_deadline = 0;
	if (rt->timeout_ms > 0 && dmx_loop_deadline_add(c->cs->loop, j,
	    j->deadline))
		bt->claims++;
	j->id_next = bt->pending;
	bt->pending = j;
	j->params_off = (uint32_t)(r.p - p);
	j->params_len = (uint32_t)(len - j->params_off);
	{
		dmx_exec *pool = rt->plugin->exec;
		unsigned q;

		for (q = 0; q < bt->nq && bt->q[q].pool != pool; q++)
			;
		if (q == BATCH_POOLS) {
			submit(c, bt);
			q = 0;
		}
		if (q == bt->nq) {
			bt->q[q].pool = pool;
			bt->q[q].head = bt->q[q].tail = NULL;
			bt->q[q].n = 0;
			bt->nq++;
		}
		if (bt->q[q].tail)
			bt->q[q].tail->next = j;
		else
			bt->q[q].head = j;
		bt->q[q].tail = j;
		bt->q[q].n++;
	}
}

static void
submit(dmx_conn *c, batch *bt)
{
	dmx_job *rej, *next;
	unsigned q, n = 0;

	/* before any job can run and drop its reference and bytes */
	bt->inflight = UINT_MAX;
	commit(c, bt);
	for (q = 0; q < bt->nq; q++)
		n += bt->q[q].n;
	/* one more may be the previous answer, sent and not yet recycled */
	if (bt->inflight != UINT_MAX && bt->inflight > n + 1)
		c->pipelined = 1;
	dmx_gen_ref(bt->gen, bt->refs);
	dmx_budget_add(&c->cs->budget, bt->bytes);
	bt->refs = 0;
	bt->bytes = 0;
	for (q = 0; q < bt->nq; q++) {
		/* measured fast, on a connection that never had requests
		 * in flight beyond the ones just read (a caller that waits
		 * for each answer before it asks again): run at the end of
		 * this pass, here. A pipelining connection (many threads, an
		 * async client) gains more from the workers' batched replies
		 * and keeps them. */
		if (!c->pipelined && dmx_inline_eligible(c->cs->inl,
		    bt->q[q].head, bt->q[q].n) && dmx_inline_add(c->cs->inl,
		    bt->q[q].head, bt->q[q].tail, bt->q[q].n))
			continue;
		dmx_exec_submit(bt->q[q].pool, bt->q[q].head, bt->q[q].tail,
		    bt->q[q].n, &rej);
		for (; rej != NULL; rej = next) {
			dmx_method_stats *ms = &rej->route->stats->m;
			char msg[160];

			next = rej->next;
			/* an executor may say why itself (-32010 too) */
			if (rej->out.len == 0) {
				snprintf(msg, sizeof(msg), "overloaded: plugin %s "
				    "has no room (queue bound or thread cap); not "
				    "executed, safe to retry",
				    rej->route->plugin->name);
				dmx_job_set_error(rej, DMX_E_OVERLOADED, msg,
				    NULL);
			}
			atomic_fetch_add_explicit(&ms->calls, 1,
			    memory_order_relaxed);
			dmx_method_error(ms, DMX_E_OVERLOADED);
			dmx_access_log(c->id, rej->msgid, rej->notify,
			    rej->route->name, rej->route->len, 1,
			    DMX_E_OVERLOADED, 0);
			if (rej->notify)
				rej->out.len = 0;
			conn_send(rej);
		}
	}
	bt->nq = 0;
}

/*
 * A frame too large or not msgpack: answer, stop dispatching, close once the
 * answers are out. Input is read and thrown away until then ("lingering
 * close"): closing a socket with unread input makes the kernel reset the
 * connection, and the reset can destroy the error answer before the client
 * reads it.
 */
/* The msgid of a request whose first bytes are p[0..n), if they hold one. */
static int
frame_msgid(const uint8_t *p, size_t n, uint32_t *msgid)
{
	uint64_t type, id;
	uint32_t cnt;
	dmx_rd r;

	dmx_rd_init(&r, p, n);
	if (dmx_rd_array(&r, &cnt) != 0 || cnt < 2 ||
	    dmx_rd_uint(&r, &type) != 0 || type != DMX_MSG_REQUEST ||
	    dmx_rd_uint(&r, &id) != 0 || id > UINT32_MAX)
		return 0;
	*msgid = (uint32_t)id;
	return 1;
}

/*
 * A complete frame of more than max_elements objects: answered -32013
 * without being decoded (decoding costs ~24 bytes per object, whatever the
 * object's own size), and the connection goes on.
 */
static void
too_many_elements(dmx_conn *c, const uint8_t *p, size_t n, uint64_t objects)
{
	uint64_t max = conn_cfg(c)->max_elements;
	uint32_t msgid;

	atomic_fetch_add_explicit(&c->cs->stats->requests, 1,
	    memory_order_relaxed);
	dmx_info("conn %u: a message of %llu elements (max_elements %llu): "
	    "refused", c->id, (unsigned long long)objects,
	    (unsigned long long)max);
	if (frame_msgid(p, n, &msgid))
		conn_reply_error(c, msgid, DMX_E_TOO_LARGE, "message too "
		    "large: %llu elements, over max_elements (%llu)",
		    (unsigned long long)objects, (unsigned long long)max);
	else
		conn_notice(c, DMX_E_TOO_LARGE, "message too large: %llu "
		    "elements, over max_elements (%llu)",
		    (unsigned long long)objects, (unsigned long long)max);
}

static void
fatal_frame(dmx_conn *c, const uint8_t *p, size_t n, int why)
{
	const dmx_config *cfg = conn_cfg(c);
	uint32_t msgid;

	if (why == DMX_SCAN_TOOBIG) {
		if (frame_msgid(p, n, &msgid))
			conn_reply_error(c, msgid, DMX_E_TOO_LARGE,
			    "message too large: over max_frame (%zu bytes)",
			    cfg->max_frame);
		else
			conn_notice(c, DMX_E_TOO_LARGE, "message too large:"
			    " over max_frame (%zu bytes)", cfg->max_frame);
		dmx_info("conn %u: frame over max_frame (%zu bytes): closing",
		    c->id, cfg->max_frame);
	} else if (why == DMX_SCAN_INVALID) {
		conn_notice(c, DMX_E_PARSE, "parse error: not valid "
		    "MessagePack; closing the connection");
		dmx_info("conn %u: not MessagePack: closing", c->id);
	}	/* else: too many invalid messages, already said */
	if (!c->xp->is_sock) {
		conn_stop_reading(c);
		return;
	}
	c->discard = 1;
	c->scan = (dmx_scan)DMX_SCAN_INIT;
	pthread_mutex_lock(&c->mu);
	c->closing = 1;
	conn_attn_locked(c);	/* shut down writing once flushed */
	pthread_mutex_unlock(&c->mu);
}

/* Lingering close: read and drop input until EOF, within a budget. */
static void
drain_input(dmx_conn *c)
{
	const dmx_config *cfg = conn_cfg(c);
	dmx_buf *scratch = dmx_loop_scratch(c->cs->loop);
	size_t budget = cfg->max_frame > (1u << 20) ? cfg->max_frame : 1u << 20;
	ssize_t n;

	for (;;) {
		n = dmx_xport_read(c->xp, scratch->data, scratch->cap);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n <= 0 || (c->discarded += (size_t)n) > budget) {
			conn_stop_reading(c);
			return;
		}
	}
}

/* Frame and dispatch p[0..n); returns bytes consumed (complete frames). */
static size_t
parse(dmx_conn *c, const uint8_t *p, size_t n, batch *bt)
{
	const dmx_config *cfg = conn_cfg(c);
	size_t off = 0, flen;
	unsigned frames = 0;
	int rc, full;

	while (off < n && !c->rd_closed && !c->discard) {
		/* back pressure inside a read, not only between reads: one
		 * 256 KiB read can hold tens of thousands of tiny frames */
		if (++frames % CHECK_EVERY == 0) {
			commit(c, bt);
			pthread_mutex_lock(&c->mu);
			full = c->inflight >= cfg->max_inflight ||
			    c->oq_bytes >= cfg->max_output ||
			    c->in_bytes >= cfg->max_inflight_bytes;
			pthread_mutex_unlock(&c->mu);
			full = full || dmx_budget_full(&c->cs->budget);
			if (full) {
				c->rbuf_pending = 1;
				break;
			}
		}
		rc = dmx_scan_frame(&c->scan, p + off, n - off, cfg->max_frame,
		    &flen);
		if (rc == DMX_SCAN_MORE)
			break;
		if (rc != DMX_SCAN_FRAME) {
			fatal_frame(c, p + off, n - off, rc);
			return n;
		}
		c->frame_ended = 1;
		if (c->scan.objects > cfg->max_elements)
			too_many_elements(c, p + off, flen, c->scan.objects);
		else
			dispatch(c, p + off, flen, bt);
		off += flen;
		if (c->invalid > CONN_MAX_INVALID) {
			fatal_frame(c, p + off, 0, DMX_SCAN_INVALID + 100);
			return n;
		}
	}
	return off;
}

void
conn_stop_reading(dmx_conn *c)
{
	if (c->rd_closed)
		return;
	c->rd_closed = 1;
	dmx_buf_release(&c->rbuf);
	conn_rbuf_account(c);
	conn_watch(c, c->io.events & ~(uint32_t)EPOLLIN);
	pthread_mutex_lock(&c->mu);
	c->closing = 1;
	conn_attn_locked(c);	/* maybe closable now */
	pthread_mutex_unlock(&c->mu);
}

/*
 * Back pressure: if too many requests are in flight or too many reply bytes
 * wait to be written, stop reading this connection (until half have gone,
 * see job_recycle_locked). Returns 1 if reading was paused.
 */
static int
pause_if_full(dmx_conn *c)
{
	const dmx_config *cfg = conn_cfg(c);
	int full, mem = 0;

	pthread_mutex_lock(&c->mu);
	c->out_limit = cfg->max_output;
	full = c->inflight >= cfg->max_inflight ||
	    c->oq_bytes >= cfg->max_output ||
	    c->in_bytes >= cfg->max_inflight_bytes;
	if (full) {
		/* resume once half have gone; the thresholds are kept here
		 * so that a worker never reads a configuration a reload may
		 * free */
		c->paused = 1;
		c->resume_inflight = cfg->max_inflight / 2;
		c->resume_output = cfg->max_output / 2;
		c->resume_in_bytes = cfg->max_inflight_bytes / 2;
	}
	pthread_mutex_unlock(&c->mu);
	if (!c->mem_paused && dmx_budget_full(&c->cs->budget)) {
		/* the server as a whole holds too much: wait for half */
		c->mem_paused = mem = 1;
		dmx_budget_wait(&c->cs->budget);
	}
	if (full || mem)
		conn_watch(c, c->io.events & ~(uint32_t)EPOLLIN);
	return full || mem;
}

void
conn_mem_resume(dmx_conn *c)
{
	int paused;

	c->mem_paused = 0;
	pthread_mutex_lock(&c->mu);
	paused = c->paused;
	pthread_mutex_unlock(&c->mu);
	if (paused || c->rd_closed)
		return;
	conn_watch(c, c->io.events | EPOLLIN);
	if (c->rbuf_pending || dmx_xport_pending(c->xp))
		conn_on_readable(c);
}

/* Keep the server's memory count in step with the partial-frame buffer, and
 * note when a partial frame began (frame_timeout_ms). (I/O thread) */
void
conn_rbuf_account(dmx_conn *c)
{
	if (c->rbuf.cap > c->rbuf_counted)
		dmx_budget_add(&c->cs->budget, c->rbuf.cap - c->rbuf_counted);
	else
		dmx_budget_sub(&c->cs->budget, c->rbuf_counted - c->rbuf.cap);
	c->rbuf_counted = c->rbuf.cap;
	/* a partial frame began no earlier than the read that ended the
	 * frame before it: a client streaming large frames back to back
	 * always has a partial one, but never an old one */
	if (c->rbuf.len == 0 || c->rbuf_pending)
		c->frame_since = 0;
	else if (c->frame_since == 0 || c->frame_ended)
		c->frame_since = c->last_active;
	c->frame_ended = 0;
}

void
conn_on_readable(dmx_conn *c)
{
	dmx_buf *scratch = dmx_loop_scratch(c->cs->loop);
	batch bt;
	size_t total = 0, used, room;
	ssize_t n;

	if (c->discard) {
		drain_input(c);
		return;
	}
	bt.nq = 0;
	bt.gen = dmx_gen_current(c->cs->gens);
	bt.refs = 0;
	bt.bytes = 0;
	bt.pending = NULL;
	bt.claims = 0;
	while (!c->rd_closed && !c->discard && total < READ_BUDGET) {
		if (c->rbuf_pending) {
			/* frames left unparsed by back pressure come first;
			 * no epoll event will announce them */
			c->rbuf_pending = 0;
			used = parse(c, (uint8_t *)c->rbuf.data, c->rbuf.len,
			    &bt);
			if (c->rd_closed || c->discard)
				break;
			dmx_buf_consume(&c->rbuf, used);
			if (c->rbuf_pending) {
				if (pause_if_full(c))
					break;
				continue;
			}
		}
		if (c->rbuf.len > 0) {
			/* continuing a partial frame: read into its buffer */
			size_t need = dmx_scan_need(&c->scan);

			room = READ_CHUNK;
			if (need > c->rbuf.len && need - c->rbuf.len > room)
				room = need - c->rbuf.len;
			if (dmx_buf_reserve(&c->rbuf, room) != 0) {
				dmx_warn("conn %u: out of memory for a %zu-byte "
				    "frame: closing", c->id, need);
				conn_stop_reading(c);
				break;
			}
			room = c->rbuf.cap - c->rbuf.len;
			n = dmx_xport_read(c->xp, c->rbuf.data + c->rbuf.len, room);
		} else {
			room = scratch->cap;
			n = dmx_xport_read(c->xp, scratch->data, room);
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n <= 0) {
			if (n < 0)
				dmx_debug("conn %u: read: %s", c->id,
				    dmx_xport_why(c->xp, errno));
			/* EOF: answer what was accepted, then close */
			conn_stop_reading(c);
			break;
		}
		total += (size_t)n;
		c->last_active = dmx_now_ns();
		atomic_fetch_add_explicit(&c->cs->stats->bytes_in,
		    (uint64_t)n, memory_order_relaxed);
		if (c->rbuf.len > 0) {
			c->rbuf.len += (size_t)n;
			used = parse(c, (uint8_t *)c->rbuf.data, c->rbuf.len, &bt);
			if (c->rd_closed || c->discard) {
				dmx_buf_release(&c->rbuf);
				break;
			}
			dmx_buf_consume(&c->rbuf, used);
			if (c->rbuf.len == 0)
				dmx_buf_shrink(&c->rbuf, 0);
		} else {
			used = parse(c, (uint8_t *)scratch->data, (size_t)n, &bt);
			if (c->rd_closed || c->discard)
				break;
			if (used < (size_t)n &&
			    dmx_buf_append(&c->rbuf, scratch->data + used,
			    (size_t)n - used) != 0) {
				dmx_warn("conn %u: out of memory: closing", c->id);
				conn_stop_reading(c);
				break;
			}
		}
		if (pause_if_full(c))
			break;
		if ((size_t)n < room && !c->rbuf_pending)
			break;		/* drained the socket, parsed it all */
	}
	conn_rbuf_account(c);
	submit(c, &bt);
}

/* ---- cancellation ---- */

void
conn_cancel(dmx_conn *c, uint32_t msgid)
{
	const dmx_route *rt = NULL;
	dmx_exec *run_exec = NULL;
	dmx_job *j, *run_job = NULL;
	uint64_t run_seq = 0;
	int st = -1, answered = 0;

	pthread_mutex_lock(&c->mu);
	j = conn_id_find_locked(c, msgid);
	if (j != NULL) {
		st = atomic_load(&j->state);
		if (st == DMX_JOB_QUEUED && atomic_compare_exchange_strong(
		    &j->state, &st, DMX_JOB_ANSWERED)) {
			answered = 1;
			rt = j->route;
		} else if (st == DMX_JOB_RUNNING) {
			atomic_store(&j->cancel, 1);
			/* an executor that runs it elsewhere passes it on; it
			 * checks seq, as j may be recycled meanwhile */
			run_exec = j->route->plugin->exec;
			run_seq = j->seq;
			run_job = j;
		}
	}
	pthread_mutex_unlock(&c->mu);
	if (run_exec != NULL)
		dmx_exec_cancel(run_exec, run_job, run_seq);
	if (answered) {
		dmx_method_stats *ms = &rt->stats->m;

		atomic_fetch_add(&ms->calls, 1);
		dmx_method_error(ms, DMX_E_CANCELLED);
		conn_reply_error(c, msgid, DMX_E_CANCELLED, "cancelled "
		    "before it ran");
		dmx_access_log(c->id, msgid, 0, rt->name, rt->len, 1,
		    DMX_E_CANCELLED, 0);
	}
}
