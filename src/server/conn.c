/*
 * conn.c - one client connection: read and frame requests, dispatch them,
 * write responses. See server.h for the threading design.
 *
 * Reads go into the server's scratch buffer; only a partial frame left at the
 * end of a read is copied into the connection's own buffer, so an idle
 * connection holds no buffer at all.
 *
 * Bad input never costs anyone else anything: a frame that is valid msgpack
 * but not a valid request is answered (with its msgid when one can be read,
 * else with the notification $/error) and the connection goes on; bytes that
 * are not msgpack, or a frame over max_frame, end this connection only, after
 * the error has been sent and every accepted request answered.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "../common/bug.h"
#include "../common/text.h"
#include "log.h"
#include "server.h"

#define READ_CHUNK	(256u << 10)	/* scratch size: one read */
#define READ_BUDGET	(4u << 20)	/* bytes per readable event, fairness */
#define WRITE_IOV	64		/* responses per writev */
#define JOB_KEEP	(64u << 10)	/* buffer kept by a recycled job */
#define MAX_INVALID	64		/* $/error notices before we hang up */
#define CHECK_EVERY	256		/* frames between back-pressure checks */

/* ---- jobs ---- */

static dmx_job *
job_get(dmx_conn *c)
{
	dmx_job *j;

	pthread_mutex_lock(&c->mu);
	j = c->free_jobs;
	if (j != NULL)
		c->free_jobs = j->next;
	else if ((j = calloc(1, sizeof(*j))) != NULL)
		j->conn = c;
	if (j != NULL) {
		c->inflight++;
		j->seq++;
		atomic_store_explicit(&j->cancel, 0, memory_order_relaxed);
		atomic_store_explicit(&j->state, DMX_JOB_QUEUED,
		    memory_order_relaxed);
		j->fl_prev = NULL;
		j->fl_next = c->flight;
		if (c->flight)
			c->flight->fl_prev = j;
		c->flight = j;
	}
	pthread_mutex_unlock(&c->mu);
	if (j == NULL)
		return NULL;
	j->next = NULL;
	j->gen = NULL;
	j->route = NULL;
	j->conn_id = c->id;
	j->notify = 0;
	j->errored = 0;
	j->in.len = 0;
	j->out.len = 0;
	return j;
}

static void
job_free(dmx_job *j)
{
	dmx_buf_release(&j->in);
	dmx_buf_release(&j->out);
	free(j);
}

static void conn_free(dmx_conn *c);

/*
 * Return a job to its connection's free list. Called with c->mu held.
 * Reports what the I/O thread must now do; returns 1 if the caller must free
 * the connection after unlocking (it was the last claim).
 */
static int
job_recycle_locked(dmx_conn *c, dmx_job *j)
{
	DMX_BUG_ON(j->gen != NULL);
	dmx_buf_shrink(&j->in, JOB_KEEP);
	dmx_buf_shrink(&j->out, JOB_KEEP);
	if (j->fl_prev)
		j->fl_prev->fl_next = j->fl_next;
	else
		c->flight = j->fl_next;
	if (j->fl_next)
		j->fl_next->fl_prev = j->fl_prev;
	j->next = c->free_jobs;
	c->free_jobs = j;
	c->inflight--;
	if (c->released)
		return c->inflight == 0 && c->timers == 0;
	/* wake the I/O thread only for what it must act on: reading can
	 * resume, or a closing connection has gone idle */
	if ((c->paused && c->inflight <= c->resume_inflight &&
	    c->oq_bytes <= c->resume_output) ||
	    (c->closing && c->inflight == 0))
		dmx_server_attn(c->srv, c);
	return 0;
}

/* ---- writing ---- */

static ssize_t
conn_writev(dmx_conn *c, struct iovec *iov, int n)
{
	if (c->is_sock) {
		struct msghdr mh;

		memset(&mh, 0, sizeof(mh));
		mh.msg_iov = iov;
		mh.msg_iovlen = (size_t)n;
		return sendmsg(c->wfd, &mh, MSG_NOSIGNAL);
	}
	return writev(c->wfd, iov, n);
}

/*
 * Write the output queue until it is empty or the socket is full. Called with
 * c->mu held; drops it around the syscall so that workers can keep queueing.
 * Returns 1 if the caller must free the connection after unlocking.
 */
static int
flush_locked(dmx_conn *c)
{
	struct iovec iov[WRITE_IOV];
	dmx_job *j, *next;
	ssize_t n;
	size_t left, off;
	int cnt, last = 0;

	c->writing = 1;
	while (c->oq_head != NULL && !c->broken) {
		cnt = 0;
		off = c->oq_off;
		for (j = c->oq_head; j != NULL && cnt < WRITE_IOV; j = j->next) {
			iov[cnt].iov_base = j->out.data + off;
			iov[cnt].iov_len = j->out.len - off;
			cnt++;
			off = 0;
		}
		pthread_mutex_unlock(&c->mu);
		do
			n = conn_writev(c, iov, cnt);
		while (n < 0 && errno == EINTR);
		pthread_mutex_lock(&c->mu);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				c->want_out = 1;
				dmx_server_attn(c->srv, c);
			} else {
				dmx_debug("conn %u: write: %s", c->id,
				    strerror(errno));
				c->broken = 1;
				dmx_server_attn(c->srv, c);
			}
			break;
		}
		left = (size_t)n;
		c->oq_bytes -= left;
		atomic_fetch_add_explicit(&dmx_server_stats_get(c->srv)->bytes_out,
		    (uint64_t)n, memory_order_relaxed);
		while (c->oq_head != NULL) {
			j = c->oq_head;
			if (j->out.len - c->oq_off > left) {
				c->oq_off += left;
				break;
			}
			left -= j->out.len - c->oq_off;
			c->oq_off = 0;
			c->oq_head = j->next;
			if (c->oq_head == NULL)
				c->oq_tail = NULL;
			last |= job_recycle_locked(c, j);
		}
	}
	if (c->broken) {
		/* nobody will read these: recycle them */
		for (j = c->oq_head; j != NULL; j = next) {
			next = j->next;
			last |= job_recycle_locked(c, j);
		}
		c->oq_head = c->oq_tail = NULL;
		c->oq_off = 0;
		c->oq_bytes = 0;
	}
	c->writing = 0;
	return last;
}

/* Queue jobs head..tail of connection c (or recycle them) and flush unless
 * another thread is writing. */
static void
send_run(dmx_conn *c, dmx_job *head, dmx_job *tail)
{
	dmx_job *j, *next, *after = tail->next;
	dmx_gen *g = NULL;
	unsigned long refs = 0;
	int last = 0;

	/* the answers are built: no plugin code or route is needed any more.
	 * Drop each job's generation reference (one atomic per run of jobs of
	 * the same generation, which is nearly always the whole list). */
	for (j = head; j != after; j = j->next) {
		if (j->gen == NULL)
			continue;
		if (j->gen != g) {
			if (g != NULL)
				dmx_gen_unref(g, refs);
			g = j->gen;
			refs = 0;
		}
		refs++;
		j->gen = NULL;
		j->route = NULL;
	}
	if (g != NULL)
		dmx_gen_unref(g, refs);

	pthread_mutex_lock(&c->mu);
	for (j = head; j != after; j = next) {
		next = j->next;
		if (j->out.len == 0 || c->broken) {
			last |= job_recycle_locked(c, j);
			continue;
		}
		j->next = NULL;
		if (c->oq_tail)
			c->oq_tail->next = j;
		else
			c->oq_head = j;
		c->oq_tail = j;
		c->oq_bytes += j->out.len;
	}
	/* an active writer, or the I/O thread after EPOLLOUT, takes them */
	if (!c->writing && !c->want_out && c->oq_head != NULL)
		last |= flush_locked(c);
	pthread_mutex_unlock(&c->mu);
	if (last)
		conn_free(c);
}

void
dmx_conn_send(dmx_job *j)
{
	j->next = NULL;
	send_run(j->conn, j, j);
}

void
dmx_conn_send_list(dmx_job *head)
{
	dmx_job *tail;

	while (head != NULL) {
		for (tail = head; tail->next && tail->next->conn == head->conn;
		    tail = tail->next)
			;
		{
			dmx_job *rest = tail->next;

			tail->next = NULL;
			send_run(head->conn, head, tail);
			head = rest;
		}
	}
}

void
dmx_conn_on_writable(dmx_conn *c)
{
	pthread_mutex_lock(&c->mu);
	c->want_out = 0;
	/* the I/O thread still holds the connection, so flush can never drop
	 * the last claim here */
	if (!c->writing)
		(void)flush_locked(c);
	dmx_server_attn(c->srv, c);	/* EPOLLOUT on or off, or close */
	pthread_mutex_unlock(&c->mu);
}

/* ---- host-made replies (I/O thread) ---- */

void
dmx_conn_reply_error(dmx_conn *c, uint32_t msgid, int64_t code,
    const char *fmt, ...)
{
	char msg[512];
	dmx_job *j;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	j = job_get(c);
	if (j == NULL)
		return;
	j->msgid = msgid;
	dmx_job_set_error(j, code, msg, NULL);
	dmx_conn_send(j);
}

/* The notification [2, "$/error", [code, message]]: for errors that have no
 * msgid to answer to. */
static void
send_error_notice(dmx_conn *c, int64_t code, const char *fmt, ...)
    DEMUX_PRINTF(3, 4);

static void
send_error_notice(dmx_conn *c, int64_t code, const char *fmt, ...)
{
	char msg[512];
	msgpack_packer pk;
	dmx_job *j;
	va_list ap;
	size_t n;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	dmx_debug("conn %u: $/error %lld: %s", c->id, (long long)code, msg);
	if (++c->invalid > MAX_INVALID) {
		/* a peer that keeps sending what is not a request (random
		 * bytes are mostly valid msgpack integers) would make us
		 * answer every byte: hang up instead */
		if (c->invalid == MAX_INVALID + 1) {
			dmx_info("conn %u: %u invalid messages: closing", c->id,
			    MAX_INVALID);
			snprintf(msg, sizeof(msg), "too many invalid messages "
			    "(%u); closing the connection", MAX_INVALID);
			code = DMX_E_INVALID_REQUEST;
			c->invalid++;	/* this notice is the last */
		} else {
			return;
		}
	}
	j = job_get(c);
	if (j == NULL)
		return;
	n = strlen(msg);
	msgpack_packer_init(&pk, &j->out, dmx_buf_pack_write);
	msgpack_pack_array(&pk, 3);
	msgpack_pack_uint8(&pk, DMX_MSG_NOTIFY);
	msgpack_pack_str(&pk, 7);
	msgpack_pack_str_body(&pk, "$/error", 7);
	msgpack_pack_array(&pk, 2);
	msgpack_pack_int64(&pk, code);
	msgpack_pack_str(&pk, n);
	msgpack_pack_str_body(&pk, msg, n);
	dmx_conn_send(j);
}

void
dmx_conn_reply(dmx_conn *c, uint32_t msgid, const void *result, size_t len)
{
	msgpack_packer pk;
	dmx_job *j;

	j = job_get(c);
	if (j == NULL)
		return;
	msgpack_packer_init(&pk, &j->out, dmx_buf_pack_write);
	msgpack_pack_array(&pk, 4);
	msgpack_pack_uint8(&pk, DMX_MSG_RESPONSE);
	msgpack_pack_uint32(&pk, msgid);
	msgpack_pack_nil(&pk);
	dmx_buf_append(&j->out, result, len);
	dmx_conn_send(j);
}

/* ---- dispatch (I/O thread) ---- */

/* The jobs of one read pass, by the pool that will run them: each pool gets
 * its jobs in one submit. */
#define BATCH_POOLS 8
typedef struct batch {
	struct {
		dmx_pool *pool;
		dmx_job	 *head, *tail;
		unsigned  n;
	} q[BATCH_POOLS];
	unsigned nq;
	dmx_gen	*gen;		/* every job's: one read pass, one generation */
	unsigned long refs;	/* jobs in q that hold a reference to it */
} batch;

static void submit(dmx_conn *c, batch *bt);

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

	atomic_fetch_add_explicit(&dmx_server_stats_get(c->srv)->requests, 1,
	    memory_order_relaxed);
	dmx_rd_init(&r, p, len);
	if (dmx_rd_array(&r, &n) != 0 || n == 0 || dmx_rd_uint(&r, &type) != 0) {
		send_error_notice(c, DMX_E_INVALID_REQUEST, "invalid request: "
		    "expected [0, msgid, method, params] or [2, method, params]");
		return;
	}
	if (type == DMX_MSG_REQUEST) {
		/* answer with the msgid whenever one can be read, even when the
		 * rest of the request is malformed */
		if (n < 2 || dmx_rd_uint(&r, &msgid) != 0 || msgid > UINT32_MAX) {
			send_error_notice(c, DMX_E_INVALID_REQUEST,
			    "invalid request: msgid must be a uint32");
			return;
		}
		if (n != 4) {
			dmx_conn_reply_error(c, (uint32_t)msgid, DMX_E_INVALID_REQUEST,
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
		send_error_notice(c, DMX_E_INVALID_REQUEST, "invalid request: "
		    "type %llu with %u elements", (unsigned long long)type, n);
		return;
	}
	if (dmx_rd_str(&r, &m, &ml) != 0) {
		if (notify)
			send_error_notice(c, DMX_E_INVALID_REQUEST,
			    "invalid notification: method must be a string");
		else
			dmx_conn_reply_error(c, (uint32_t)msgid, DMX_E_INVALID_REQUEST,
			    "invalid request: method must be a string");
		return;
	}
	if (!dmx_rd_is_array(&r)) {
		if (notify)
			send_error_notice(c, DMX_E_INVALID_REQUEST,
			    "invalid notification: params must be an array");
		else
			dmx_conn_reply_error(c, (uint32_t)msgid, DMX_E_INVALID_REQUEST,
			    "invalid request: params must be an array");
		return;
	}
	if (notify && ml == 15 && memcmp(m, "$/cancelRequest", 15) == 0) {
		/* [2, "$/cancelRequest", [msgid]] (LSP) */
		dmx_rd pr = r;
		uint64_t id;

		if (dmx_rd_array(&pr, &n) == 0 && n >= 1 &&
		    dmx_rd_uint(&pr, &id) == 0 && id <= UINT32_MAX)
			dmx_conn_cancel(c, (uint32_t)id);
		return;
	}
	if (ml >= 2 && m[0] == '$' && m[1] == '/') {
		int code = dmx_builtin(c, notify, (uint32_t)msgid, m, ml);

		dmx_access_log(c->id, (uint32_t)msgid, notify, m, ml, code != 0,
		    code, 0);
		return;
	}
	if (c->draining) {
		/* after $/drain: nothing new runs here */
		if (!notify)
			dmx_conn_reply_error(c, (uint32_t)msgid,
			    DMX_E_SHUTTING_DOWN, DMX_NOT_EXECUTED_DRAINING
			    ", safe to retry elsewhere");
		dmx_access_log(c->id, (uint32_t)msgid, notify, m, ml, 1,
		    DMX_E_SHUTTING_DOWN, 0);
		return;
	}
	rt = dmx_router_find(bt->gen->router, m, ml);
	if (rt == NULL) {
		if (notify) {
			char name[900];

			dmx_escape(name, sizeof(name), m, ml, 200);
			dmx_debug("conn %u: notification for unknown method "
			    "'%s' dropped", c->id, name);
		} else {
			/* cut on a character boundary: clients decode it */
			dmx_conn_reply_error(c, (uint32_t)msgid, DMX_E_NO_METHOD,
			    "method '%.*s' not found",
			    (int)dmx_utf8_cut(m, ml, 200), m);
		}
		dmx_access_log(c->id, (uint32_t)msgid, notify, m, ml, 1,
		    DMX_E_NO_METHOD, 0);
		return;
	}
	j = job_get(c);
	if (j == NULL || dmx_buf_append(&j->in, p, len) != 0) {
		if (j != NULL) {
			j->msgid = (uint32_t)msgid;
			j->notify = (uint8_t)notify;
			dmx_job_set_error(j, DMX_E_INTERNAL, "out of memory", NULL);
			if (notify)
				j->out.len = 0;
			dmx_conn_send(j);
		}
		return;
	}
	j->gen = bt->gen;		/* its reference is taken in submit */
	bt->refs++;
	j->route = rt;
	j->msgid = (uint32_t)msgid;
	j->notify = (uint8_t)notify;
	j->t_dispatch = c->last_active;	/* when this read happened */
	/* the I/O thread is the only writer: no read-modify-write needed */
	atomic_store_explicit(&rt->stats->m.dispatched, atomic_load_explicit(
	    &rt->stats->m.dispatched, memory_order_relaxed) + 1,
	    memory_order_relaxed);
	if (rt->timeout_ms > 0) {
		pthread_mutex_lock(&c->mu);
		c->timers++;
		pthread_mutex_unlock(&c->mu);
		dmx_server_timer_add(c->srv, c, j, j->t_dispatch +
		    (uint64_t)rt->timeout_ms * 1000000u);
	}
	j->params_off = (uint32_t)(r.p - p);
	j->params_len = (uint32_t)(len - j->params_off);
	{
		dmx_pool *pool = rt->plugin->pool;
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
	unsigned q;

	/* before any job can run and drop its reference */
	dmx_gen_ref(bt->gen, bt->refs);
	bt->refs = 0;
	for (q = 0; q < bt->nq; q++) {
		dmx_pool_submit(bt->q[q].pool, bt->q[q].head, bt->q[q].tail,
		    bt->q[q].n, &rej);
		for (; rej != NULL; rej = next) {
			dmx_method_stats *ms = &rej->route->stats->m;
			char msg[160];

			next = rej->next;
			snprintf(msg, sizeof(msg), "overloaded: plugin %s has no "
			    "room (queue bound or thread cap); not executed, "
			    "safe to retry", rej->route->plugin->name);
			dmx_job_set_error(rej, DMX_E_OVERLOADED, msg, NULL);
			atomic_fetch_add_explicit(&ms->calls, 1,
			    memory_order_relaxed);
			dmx_method_error(ms, DMX_E_OVERLOADED);
			dmx_access_log(c->id, rej->msgid, rej->notify,
			    rej->route->name, rej->route->len, 1,
			    DMX_E_OVERLOADED, 0);
			if (rej->notify)
				rej->out.len = 0;
			dmx_conn_send(rej);
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
static void
fatal_frame(dmx_conn *c, const uint8_t *p, size_t n, int why)
{
	const dmx_config *cfg = dmx_server_config(c->srv);
	uint64_t type, msgid;
	uint32_t cnt;
	dmx_rd r;

	if (why == DMX_SCAN_TOOBIG) {
		dmx_rd_init(&r, p, n);
		if (dmx_rd_array(&r, &cnt) == 0 && cnt >= 2 &&
		    dmx_rd_uint(&r, &type) == 0 && type == DMX_MSG_REQUEST &&
		    dmx_rd_uint(&r, &msgid) == 0 && msgid <= UINT32_MAX)
			dmx_conn_reply_error(c, (uint32_t)msgid, DMX_E_TOO_LARGE,
			    "message too large: over max_frame (%zu bytes)",
			    cfg->max_frame);
		else
			send_error_notice(c, DMX_E_TOO_LARGE, "message too large:"
			    " over max_frame (%zu bytes)", cfg->max_frame);
		dmx_info("conn %u: frame over max_frame (%zu bytes): closing",
		    c->id, cfg->max_frame);
	} else if (why == DMX_SCAN_INVALID) {
		send_error_notice(c, DMX_E_PARSE, "parse error: not valid "
		    "MessagePack; closing the connection");
		dmx_info("conn %u: not MessagePack: closing", c->id);
	}	/* else: too many invalid messages, already said */
	if (!c->is_sock) {
		dmx_conn_stop_reading(c);
		return;
	}
	c->discard = 1;
	c->scan = (dmx_scan)DMX_SCAN_INIT;
	pthread_mutex_lock(&c->mu);
	c->closing = 1;
	dmx_server_attn(c->srv, c);	/* shut down writing once flushed */
	pthread_mutex_unlock(&c->mu);
}

/* Lingering close: read and drop input until EOF, within a budget. */
static void
drain_input(dmx_conn *c)
{
	const dmx_config *cfg = dmx_server_config(c->srv);
	dmx_buf *scratch = dmx_server_scratch(c->srv);
	size_t budget = cfg->max_frame > (1u << 20) ? cfg->max_frame : 1u << 20;
	ssize_t n;

	for (;;) {
		n = read(c->rfd, scratch->data, scratch->cap);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n <= 0 || (c->discarded += (size_t)n) > budget) {
			dmx_conn_stop_reading(c);
			return;
		}
	}
}

/* Frame and dispatch p[0..n); returns bytes consumed (complete frames). */
static size_t
parse(dmx_conn *c, const uint8_t *p, size_t n, batch *bt)
{
	const dmx_config *cfg = dmx_server_config(c->srv);
	size_t off = 0, flen;
	unsigned frames = 0;
	int rc, full;

	while (off < n && !c->rd_closed && !c->discard) {
		/* back pressure inside a read, not only between reads: one
		 * 256 KiB read can hold tens of thousands of tiny frames */
		if (++frames % CHECK_EVERY == 0) {
			pthread_mutex_lock(&c->mu);
			full = c->inflight >= cfg->max_inflight ||
			    c->oq_bytes >= cfg->max_output;
			pthread_mutex_unlock(&c->mu);
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
		dispatch(c, p + off, flen, bt);
		off += flen;
		if (c->invalid > MAX_INVALID) {
			fatal_frame(c, p + off, 0, DMX_SCAN_INVALID + 100);
			return n;
		}
	}
	return off;
}

void
dmx_conn_stop_reading(dmx_conn *c)
{
	if (c->rd_closed)
		return;
	c->rd_closed = 1;
	dmx_buf_release(&c->rbuf);
	dmx_server_epoll_mod(c->srv, c, c->events & ~(uint32_t)EPOLLIN);
	pthread_mutex_lock(&c->mu);
	c->closing = 1;
	dmx_server_attn(c->srv, c);	/* maybe closable now */
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
	const dmx_config *cfg = dmx_server_config(c->srv);
	int full;

	pthread_mutex_lock(&c->mu);
	full = c->inflight >= cfg->max_inflight ||
	    c->oq_bytes >= cfg->max_output;
	if (full) {
		/* resume once half have gone; the thresholds are kept here
		 * so that a worker never reads a configuration a reload may
		 * free */
		c->paused = 1;
		c->resume_inflight = cfg->max_inflight / 2;
		c->resume_output = cfg->max_output / 2;
	}
	pthread_mutex_unlock(&c->mu);
	if (full)
		dmx_server_epoll_mod(c->srv, c, c->events & ~(uint32_t)EPOLLIN);
	return full;
}

void
dmx_conn_on_readable(dmx_conn *c)
{
	dmx_buf *scratch = dmx_server_scratch(c->srv);
	batch bt;
	size_t total = 0, used, room;
	ssize_t n;

	if (c->discard) {
		drain_input(c);
		return;
	}
	bt.nq = 0;
	bt.gen = dmx_server_gen(c->srv);
	bt.refs = 0;
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
				dmx_conn_stop_reading(c);
				break;
			}
			room = c->rbuf.cap - c->rbuf.len;
			n = read(c->rfd, c->rbuf.data + c->rbuf.len, room);
		} else {
			room = scratch->cap;
			n = read(c->rfd, scratch->data, room);
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n <= 0) {
			if (n < 0)
				dmx_debug("conn %u: read: %s", c->id,
				    strerror(errno));
			/* EOF: answer what was accepted, then close */
			dmx_conn_stop_reading(c);
			break;
		}
		total += (size_t)n;
		c->last_active = dmx_now_ns();
		atomic_fetch_add_explicit(&dmx_server_stats_get(c->srv)->bytes_in,
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
				dmx_conn_stop_reading(c);
				break;
			}
		}
		if (pause_if_full(c))
			break;
		if ((size_t)n < room && !c->rbuf_pending)
			break;		/* drained the socket, parsed it all */
	}
	submit(c, &bt);
}

/* ---- attention (I/O thread) ---- */

void
dmx_conn_attend(dmx_conn *c)
{
	int want_out, broken, resume, idle, flushing;

	pthread_mutex_lock(&c->mu);
	c->attn = 0;
	want_out = c->want_out;
	broken = c->broken;
	resume = c->paused && c->inflight <= c->resume_inflight &&
	    c->oq_bytes <= c->resume_output;
	if (resume)
		c->paused = 0;
	idle = c->inflight == 0;
	flushing = c->writing || c->oq_head != NULL;
	pthread_mutex_unlock(&c->mu);

	if (broken) {
		dmx_conn_release(c);
		return;
	}
	if (c->rd_closed && idle && !flushing) {
		dmx_conn_release(c);
		return;
	}
	if (c->draining && idle && !flushing) {
		/* A request the client sent before it saw $/drain may still be
		 * on its way; closing now would lose it with no answer (its
		 * caller could not tell it never ran). Linger, answering such
		 * requests -32012 "not executed", until the client closes
		 * (libmux does once it has nothing in flight) or
		 * DMX_DRAIN_LINGER_MS pass (dmx_server_run looks again). */
		uint64_t now = dmx_now_ns();

		if (c->drain_idle_since == 0)
			c->drain_idle_since = now;
		if (now - c->drain_idle_since >=
		    (uint64_t)DMX_DRAIN_LINGER_MS * 1000000u) {
			dmx_conn_release(c);
			return;
		}
	} else if (c->draining) {
		c->drain_idle_since = 0;
	}
	if (c->draining && c->abandoned && !flushing) {
		/* drain timeout: the -32012 answers are out; the stuck jobs
		 * will find the connection gone */
		dmx_conn_release(c);
		return;
	}
	if (c->discard && idle && !flushing && !c->wr_shut) {
		/* every answer is out: tell the client we are done, and keep
		 * draining its input until it closes too */
		shutdown(c->wfd, SHUT_WR);
		c->wr_shut = 1;
	}
	if (resume && !c->rd_closed) {
		dmx_server_epoll_mod(c->srv, c, c->events | EPOLLIN);
		/* data waiting in the socket is reported by level-triggered
		 * epoll; frames already read but not parsed are not */
		if (c->rbuf_pending)
			dmx_conn_on_readable(c);
	}
	if (want_out && !(c->events & EPOLLOUT))
		dmx_server_epoll_mod(c->srv, c, c->events | EPOLLOUT);
	else if (!want_out && (c->events & EPOLLOUT))
		dmx_server_epoll_mod(c->srv, c, c->events & ~(uint32_t)EPOLLOUT);
}

/* ---- deadlines ---- */

void
dmx_conn_expire(dmx_conn *c, dmx_job *j, uint64_t seq, unsigned timeout_ms)
{
	const dmx_route *rt = NULL;
	uint32_t msgid = 0;
	int st = -1, answer = 0, notify = 0, last;

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
		}
	}
	pthread_mutex_unlock(&c->mu);
	if (answer) {
		dmx_method_stats *ms = &rt->stats->m;

		atomic_fetch_add(&rt->stats->timeouts, 1);
		atomic_fetch_add(&ms->calls, 1);
		dmx_method_error(ms, DMX_E_TIMED_OUT);
		if (st == DMX_JOB_RUNNING)
			dmx_warn("%s: still running %u ms after its start "
			    "(timeout_ms %u): answered -32011, its worker is "
			    "stuck until the handler returns", rt->name,
			    timeout_ms, timeout_ms);
		dmx_access_log(c->id, msgid, notify, rt->name, rt->len, 1,
		    DMX_E_TIMED_OUT, (uint64_t)timeout_ms * 1000000u);
		if (!notify && !c->released)
			dmx_conn_reply_error(c, msgid, DMX_E_TIMED_OUT, "timed "
			    "out: %s took longer than %u ms; its result will be "
			    "dropped", rt->name, timeout_ms);
	}
	pthread_mutex_lock(&c->mu);
	c->timers--;
	last = c->released && c->inflight == 0 && c->timers == 0 &&
	    !c->writing;
	pthread_mutex_unlock(&c->mu);
	if (last)
		conn_free(c);
}

/* ---- cancellation ---- */

void
dmx_conn_cancel(dmx_conn *c, uint32_t msgid)
{
	const dmx_route *rt = NULL;
	dmx_job *j;
	int st = -1, answered = 0;

	pthread_mutex_lock(&c->mu);
	for (j = c->flight; j != NULL; j = j->fl_next) {
		if (j->route == NULL || j->notify || j->msgid != msgid)
			continue;
		st = atomic_load(&j->state);
		if (st == DMX_JOB_QUEUED && atomic_compare_exchange_strong(
		    &j->state, &st, DMX_JOB_ANSWERED)) {
			answered = 1;
			rt = j->route;
		} else if (st == DMX_JOB_RUNNING) {
			atomic_store(&j->cancel, 1);
		}
		break;
	}
	pthread_mutex_unlock(&c->mu);
	if (answered) {
		dmx_method_stats *ms = &rt->stats->m;

		atomic_fetch_add(&ms->calls, 1);
		dmx_method_error(ms, DMX_E_CANCELLED);
		dmx_conn_reply_error(c, msgid, DMX_E_CANCELLED, "cancelled "
		    "before it ran");
		dmx_access_log(c->id, msgid, 0, rt->name, rt->len, 1,
		    DMX_E_CANCELLED, 0);
	}
}

/* ---- drain ---- */

void
dmx_conn_drain(dmx_conn *c)
{
	dmx_job *j;

	if (c->draining)
		return;
	c->draining = 1;
	/* [2, "$/drain", []]: send nothing new on this connection */
	j = job_get(c);
	if (j != NULL) {
		dmx_buf_append(&j->out, "\x93\x02\xa7$/drain\x90", 11);
		dmx_conn_send(j);
	}
	pthread_mutex_lock(&c->mu);
	c->closing = 1;			/* wake us when idle */
	dmx_server_attn(c->srv, c);
	pthread_mutex_unlock(&c->mu);
}

unsigned
dmx_conn_abandon(dmx_conn *c)
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
		dmx_conn_reply_error(c, ans[i].msgid, DMX_E_SHUTTING_DOWN,
		    "%s", ans[i].ran ? "shutting down: drain_timeout_ms passed; "
		    "the handler was still running, its result will be dropped"
		    : DMX_NOT_EXECUTED_DRAINING " (drain_timeout_ms passed), "
		    "safe to retry elsewhere");
	free(ans);
	c->abandoned = 1;
	pthread_mutex_lock(&c->mu);
	dmx_server_attn(c->srv, c);
	pthread_mutex_unlock(&c->mu);
	return n;
}

/* ---- lifetime ---- */

static void
conn_free(dmx_conn *c)
{
	dmx_job *j, *next;

	for (j = c->free_jobs; j != NULL; j = next) {
		next = j->next;
		job_free(j);
	}
	dmx_buf_release(&c->rbuf);
	if (c->wfd != c->rfd && c->wfd >= 0)
		close(c->wfd);
	if (c->rfd >= 0)
		close(c->rfd);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

void
dmx_conn_release(dmx_conn *c)
{
	int last;

	dmx_server_forget(c->srv, c);
	if (c->is_sock)
		shutdown(c->rfd, SHUT_RDWR);	/* the peer sees EOF now */
	pthread_mutex_lock(&c->mu);
	c->released = 1;
	c->broken = 1;
	last = c->inflight == 0 && c->timers == 0 && !c->writing;
	if (!last && !c->writing && c->oq_head != NULL)
		last = flush_locked(c);		/* recycles queued replies */
	pthread_mutex_unlock(&c->mu);
	if (last)
		conn_free(c);
}
