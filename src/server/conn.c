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
#include "../common/msg.h"
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

/* ---- requests in flight by msgid (c->mu held) ---- */

static unsigned
id_hash(uint32_t msgid)
{
	return (msgid * 2654435761u) >> 7;
}

static void
id_insert_locked(dmx_conn *c, dmx_job *j)
{
	unsigned h;

	if (c->idtab == NULL || c->idcount >= c->idmask + 1) {
		unsigned n = c->idtab ? (c->idmask + 1) * 2 : 16, i;
		dmx_job **t = calloc(n, sizeof(*t)), *e, *next;

		if (t == NULL && c->idtab == NULL)
			return;		/* not cancellable; still served */
		if (t != NULL) {
			for (i = 0; c->idtab && i <= c->idmask; i++)
				for (e = c->idtab[i]; e != NULL; e = next) {
					next = e->id_next;
					h = id_hash(e->msgid) & (n - 1);
					e->id_next = t[h];
					t[h] = e;
				}
			free(c->idtab);
			c->idtab = t;
			c->idmask = n - 1;
		}
	}
	h = id_hash(j->msgid) & c->idmask;
	j->id_next = c->idtab[h];
	c->idtab[h] = j;
	j->hashed = 1;
	c->idcount++;
}

static void
id_remove_locked(dmx_conn *c, dmx_job *j)
{
	dmx_job **pp;

	for (pp = &c->idtab[id_hash(j->msgid) & c->idmask]; *pp != NULL;
	    pp = &(*pp)->id_next)
		if (*pp == j) {
			*pp = j->id_next;
			break;
		}
	j->hashed = 0;
	c->idcount--;
}

static void
job_free(dmx_job *j)
{
	dmx_buf_release(&j->in);
	dmx_buf_release(&j->out);
	free(j);
}

static void conn_free(dmx_conn *c);
static void rbuf_account(dmx_conn *c);

/*
 * Return a job to its connection's free list. Called with c->mu held.
 * Reports what the I/O thread must now do; returns 1 if the caller must free
 * the connection after unlocking (it was the last claim).
 */
static int
job_recycle_locked(dmx_conn *c, dmx_job *j)
{
	DMX_BUG_ON(j->gen != NULL);
	/* the contents are done with: a buffer that grew for one large
	 * message goes back to JOB_KEEP (shrink keeps what len covers) */
	if (j->hashed)
		id_remove_locked(c, j);
	j->in.len = j->out.len = 0;
	dmx_buf_shrink(&j->in, JOB_KEEP);
	dmx_buf_shrink(&j->out, JOB_KEEP);
	if (j->in_bytes > 0) {
		c->in_bytes -= j->in_bytes;
		dmx_server_mem_sub(c->srv, j->in_bytes);
		j->in_bytes = 0;
	}
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
	    c->oq_bytes <= c->resume_output &&
	    c->in_bytes <= c->resume_in_bytes) ||
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
				/* the client is not keeping up: when it last
				 * made room is what idle_timeout_ms looks at
				 * (no clock read while output flows) */
				if (!c->want_out)
					c->last_write = dmx_now_ns();
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
			c->oq_n--;
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
		c->oq_n = 0;
	}
	c->writing = 0;
	return last;
}

/* ---- parking: replies that could not be sent are not built ---- */

int
dmx_conn_admit(dmx_job *j)
{
	dmx_conn *c = j->conn;
	int run = 1;

	if (!atomic_load_explicit(&c->out_full, memory_order_relaxed))
		return 1;	/* the common case: one relaxed load */
	pthread_mutex_lock(&c->mu);
	if (atomic_load_explicit(&c->out_full, memory_order_relaxed) &&
	    !c->broken && atomic_load(&j->state) == DMX_JOB_QUEUED) {
		j->next = NULL;
		if (c->parked_tail)
			c->parked_tail->next = j;
		else
			c->parked = j;
		c->parked_tail = j;
		run = 0;
	}
	pthread_mutex_unlock(&c->mu);
	return run;
}

/* Once the client has read half of what waited (or will never read): the
 * parked jobs, to be requeued after unlocking. Called with c->mu held. */
static dmx_job *
take_unparked_locked(dmx_conn *c)
{
	dmx_job *list;

	if (c->parked == NULL && !atomic_load_explicit(&c->out_full,
	    memory_order_relaxed))
		return NULL;
	if (!c->broken && c->oq_bytes > c->out_limit / 2)
		return NULL;
	atomic_store_explicit(&c->out_full, 0, memory_order_relaxed);
	list = c->parked;
	c->parked = c->parked_tail = NULL;
	return list;
}

/* Hand parked jobs back to their pools (c->mu not held: an on-demand pool
 * may run one right here). */
static void
requeue(dmx_job *list)
{
	dmx_job *j, *next;

	for (j = list; j != NULL; j = next) {
		next = j->next;
		dmx_pool_requeue(j->route->plugin->pool, j);
	}
}

/* Queue jobs head..tail of connection c (or recycle them) and flush unless
 * another thread is writing. */
static void
send_run(dmx_conn *c, dmx_job *head, dmx_job *tail)
{
	dmx_job *j, *next, *after = tail->next;
	dmx_gen *g = NULL;
	dmx_job *unparked;
	unsigned long refs = 0;
	int last = 0;

	/* the answers are built: no plugin code or route is used any more.
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
		/* j->route stays as it is (the I/O thread reads it under mu);
		 * nothing follows it once the job is DONE or ANSWERED */
		j->gen = NULL;
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
		c->oq_n++;
	}
	if (c->oq_bytes >= c->out_limit)
		atomic_store_explicit(&c->out_full, 1, memory_order_relaxed);
	/* an active writer, or the I/O thread after EPOLLOUT, takes them */
	if (!c->writing && !c->want_out && c->oq_head != NULL)
		last |= flush_locked(c);
	unparked = take_unparked_locked(c);
	pthread_mutex_unlock(&c->mu);
	requeue(unparked);
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
	dmx_job *unparked;

	pthread_mutex_lock(&c->mu);
	c->want_out = 0;
	c->last_write = dmx_now_ns();	/* the client made room */
	/* the I/O thread still holds the connection, so flush can never drop
	 * the last claim here */
	if (!c->writing)
		(void)flush_locked(c);
	dmx_server_attn(c->srv, c);	/* EPOLLOUT on or off, or close */
	unparked = take_unparked_locked(c);
	pthread_mutex_unlock(&c->mu);
	requeue(unparked);
}

/* ---- host-made replies (I/O thread) ---- */

/* A packer sink into a fixed buffer: past its end, it only counts. */
static int
refuse_write(void *data, const char *p, size_t n)
{
	dmx_buf *b = data;

	if (b->len + n <= b->cap)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	return 0;
}

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
	msgpack_packer_init(&pk, &j->out, dmx_buf_pack_write);
	dmx_msg_error_notice(&pk, code, msg);
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
	dmx_msg_result_head(&pk, msgid);
	dmx_buf_append(&j->out, result, len);
	dmx_conn_send(j);
}

void
dmx_conn_refuse(int fd, int64_t code, const char *why)
{
	char mem[256];
	dmx_buf b = { mem, 0, sizeof(mem) };
	msgpack_packer pk;

	/* a small fixed buffer: the message fits, and nothing is allocated
	 * on the way to shedding load (a longer one is cut off unsent) */
	msgpack_packer_init(&pk, &b, refuse_write);
	dmx_msg_error_notice(&pk, code, why);
	if (b.len <= sizeof(mem) &&
	    send(fd, b.data, b.len, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
		dmx_debug("refuse: %s", strerror(errno));
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
	size_t	 bytes;		/* their request bytes (max_memory) */
	dmx_job	*pending;	/* dispatched, not yet committed (id_next) */
	unsigned claims;	/* timer claims of those */
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
			id_insert_locked(c, j);
	}
	pthread_mutex_unlock(&c->mu);
	bt->pending = NULL;
	bt->claims = 0;
}

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
		    dmx_rd_uint(&pr, &id) == 0 && id <= UINT32_MAX) {
			commit(c, bt);	/* it may cancel one of this pass */
			dmx_conn_cancel(c, (uint32_t)id);
		}
		return;
	}
	if (ml >= 2 && m[0] == '$' && m[1] == '/') {
		dmx_buf res = DMX_BUF_INIT;
		int code = 0;

		/* $/ notifications the server does not know are ignored, as
		 * LSP specifies */
		if (!notify) {
			code = dmx_builtin(c->srv, m, ml, &res);
			if (code == 0)
				dmx_conn_reply(c, (uint32_t)msgid, res.data,
				    res.len);
			else
				dmx_conn_reply_error(c, (uint32_t)msgid, code,
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
	/* its bytes count against max_inflight_bytes and max_memory until
	 * it is recycled */
	j->in_bytes = len;
	bt->bytes += len;	/* added to the server's count in submit */
	/* its timer claim, bytes and msgid entry reach the connection in
	 * commit(), for the whole read pass under one lock (the job is not
	 * visible to any other thread before then) */
	if (rt->timeout_ms > 0 && dmx_server_timer_add(c->srv, j,
	    j->t_dispatch + (uint64_t)rt->timeout_ms * 1000000u))
		bt->claims++;
	j->id_next = bt->pending;
	bt->pending = j;
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

	/* before any job can run and drop its reference and bytes */
	commit(c, bt);
	dmx_gen_ref(bt->gen, bt->refs);
	dmx_server_mem_add(c->srv, bt->bytes);
	bt->refs = 0;
	bt->bytes = 0;
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
	uint64_t max = dmx_server_config(c->srv)->max_elements;
	uint32_t msgid;

	atomic_fetch_add_explicit(&dmx_server_stats_get(c->srv)->requests, 1,
	    memory_order_relaxed);
	dmx_info("conn %u: a message of %llu elements (max_elements %llu): "
	    "refused", c->id, (unsigned long long)objects,
	    (unsigned long long)max);
	if (frame_msgid(p, n, &msgid))
		dmx_conn_reply_error(c, msgid, DMX_E_TOO_LARGE, "message too "
		    "large: %llu elements, over max_elements (%llu)",
		    (unsigned long long)objects, (unsigned long long)max);
	else
		send_error_notice(c, DMX_E_TOO_LARGE, "message too large: %llu "
		    "elements, over max_elements (%llu)",
		    (unsigned long long)objects, (unsigned long long)max);
}

static void
fatal_frame(dmx_conn *c, const uint8_t *p, size_t n, int why)
{
	const dmx_config *cfg = dmx_server_config(c->srv);
	uint32_t msgid;

	if (why == DMX_SCAN_TOOBIG) {
		if (frame_msgid(p, n, &msgid))
			dmx_conn_reply_error(c, msgid, DMX_E_TOO_LARGE,
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
			commit(c, bt);
			pthread_mutex_lock(&c->mu);
			full = c->inflight >= cfg->max_inflight ||
			    c->oq_bytes >= cfg->max_output ||
			    c->in_bytes >= cfg->max_inflight_bytes;
			pthread_mutex_unlock(&c->mu);
			full = full || dmx_server_mem_full(c->srv);
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
	rbuf_account(c);
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
	if (!c->mem_paused && dmx_server_mem_full(c->srv)) {
		/* the server as a whole holds too much: wait for half */
		c->mem_paused = mem = 1;
		dmx_server_mem_wait(c->srv);
	}
	if (full || mem)
		dmx_server_epoll_mod(c->srv, c, c->events & ~(uint32_t)EPOLLIN);
	return full || mem;
}

void
dmx_conn_mem_resume(dmx_conn *c)
{
	int paused;

	c->mem_paused = 0;
	pthread_mutex_lock(&c->mu);
	paused = c->paused;
	pthread_mutex_unlock(&c->mu);
	if (paused || c->rd_closed)
		return;
	dmx_server_epoll_mod(c->srv, c, c->events | EPOLLIN);
	if (c->rbuf_pending)
		dmx_conn_on_readable(c);
}

/* Keep the server's memory count in step with the partial-frame buffer, and
 * note when a partial frame began (frame_timeout_ms). (I/O thread) */
static void
rbuf_account(dmx_conn *c)
{
	if (c->rbuf.cap > c->rbuf_counted)
		dmx_server_mem_add(c->srv, c->rbuf.cap - c->rbuf_counted);
	else
		dmx_server_mem_sub(c->srv, c->rbuf_counted - c->rbuf.cap);
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
	rbuf_account(c);
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
	    c->oq_bytes <= c->resume_output &&
	    c->in_bytes <= c->resume_in_bytes;
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
	if (resume && !c->rd_closed && !c->mem_paused) {
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

/* ---- timeouts ---- */

int
dmx_conn_check_timeouts(dmx_conn *c, uint64_t now, uint64_t idle_ns,
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
		send_error_notice(c, DMX_E_TOO_LARGE, "frame not completed "
		    "within frame_timeout_ms (%llu ms); closing the connection",
		    (unsigned long long)(frame_ns / 1000000u));
		dmx_conn_stop_reading(c);
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
		dmx_conn_release(c);
		return 1;
	}
	dmx_conn_stop_reading(c);
	return 0;
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
	for (j = c->idtab ? c->idtab[id_hash(msgid) & c->idmask] : NULL;
	    j != NULL; j = j->id_next) {
		if (j->route == NULL || j->msgid != msgid)
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
		msgpack_packer pk;

		msgpack_packer_init(&pk, &j->out, dmx_buf_pack_write);
		dmx_msg_drain(&pk);
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
	dmx_server_mem_sub(c->srv, c->rbuf_counted);
	free(c->idtab);
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
	dmx_job *unparked, *j;
	int last;

	dmx_server_forget(c->srv, c);
	if (c->is_sock)
		shutdown(c->rfd, SHUT_RDWR);	/* the peer sees EOF now */
	pthread_mutex_lock(&c->mu);
	c->released = 1;
	c->broken = 1;
	/* its deadlines: nobody is left to answer -32011 to, and they must
	 * not keep the connection (descriptor, buffers) until they fire */
	for (j = c->flight; j != NULL; j = j->fl_next)
		c->timers -= (unsigned)dmx_server_timer_del(c->srv, j);
	for (j = c->free_jobs; j != NULL; j = j->next)
		c->timers -= (unsigned)dmx_server_timer_del(c->srv, j);
	last = c->inflight == 0 && c->timers == 0 && !c->writing;
	if (!last && !c->writing && c->oq_head != NULL)
		last = flush_locked(c);		/* recycles queued replies */
	/* parked jobs run as every accepted job does; their replies are
	 * dropped (they hold claims: last is 0 while there are any) */
	unparked = take_unparked_locked(c);
	pthread_mutex_unlock(&c->mu);
	requeue(unparked);
	if (last)
		conn_free(c);
}
