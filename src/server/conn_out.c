/*
 * conn_out.c - a connection's jobs and its way out: the free list and the
 * requests in flight by msgid, the output queue and writing it, parking
 * jobs whose replies could not be sent, and the answers the host makes
 * itself. Workers and the I/O thread both come here; see conn_impl.h for
 * who guards what.
 *
 * Lock order: c->mu, then the loop's attention lock. c->mu is dropped
 * around writev (other workers keep queueing) and before parked jobs go
 * back to their executors.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "../common/bug.h"
#include "../common/msg.h"
#include "conn_impl.h"
#include "log.h"

#define WRITE_IOV	64		/* responses per writev */
#define JOB_KEEP	(64u << 10)	/* buffer kept by a recycled job */

/* ---- jobs ---- */

dmx_job *
conn_job(dmx_conn *c)
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
	j->err_string = c->err_string;
	j->identity = c->identity;
	j->notify = 0;
	j->notice = 0;
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

void
conn_id_insert_locked(dmx_conn *c, dmx_job *j)
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

dmx_job *
conn_id_find_locked(dmx_conn *c, uint32_t msgid)
{
	dmx_job *j;

	for (j = c->idtab ? c->idtab[id_hash(msgid) & c->idmask] : NULL;
	    j != NULL; j = j->id_next)
		if (j->route != NULL && j->msgid == msgid)
			return j;
	return NULL;
}

static void
job_free(dmx_job *j)
{
	dmx_buf_release(&j->in);
	dmx_buf_release(&j->out);
	free(j);
}


/*
 * Return a job to its connection's free list. Called with c->mu held.
 * Reports what the I/O thread must now do; returns 1 if the caller must free
 * the connection after unlocking (it was the last claim).
 */
int
conn_job_recycle_locked(dmx_conn *c, dmx_job *j)
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
		dmx_budget_sub(&c->cs->budget, j->in_bytes);
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
		return c->inflight == 0 && c->timers == 0 && c->peers == 0;
	/* wake the I/O thread only for what it must act on: reading can
	 * resume, or a closing connection has gone idle */
	if ((c->paused && c->inflight <= c->resume_inflight &&
	    c->oq_bytes <= c->resume_output &&
	    c->in_bytes <= c->resume_in_bytes) ||
	    (c->closing && c->inflight == 0))
		conn_attn_locked(c);
	return 0;
}

/* ---- writing ---- */

/*
 * Write the output queue until it is empty or the socket is full. Called with
 * c->mu held; drops it around the syscall so that workers can keep queueing.
 * Returns 1 if the caller must free the connection after unlocking.
 */
int
conn_flush_locked(dmx_conn *c)
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
			n = dmx_xport_writev(c->xp, iov, cnt);
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
				conn_attn_locked(c);
			} else {
				dmx_debug("conn %u: write: %s", c->id,
				    strerror(errno));
				c->broken = 1;
				conn_attn_locked(c);
			}
			break;
		}
		left = (size_t)n;
		c->oq_bytes -= left;
		atomic_fetch_add_explicit(&c->cs->stats->bytes_out,
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
			last |= conn_job_recycle_locked(c, j);
		}
	}
	if (c->broken) {
		/* nobody will read these: recycle them */
		for (j = c->oq_head; j != NULL; j = next) {
			next = j->next;
			last |= conn_job_recycle_locked(c, j);
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
dmx_job *
conn_take_unparked_locked(dmx_conn *c)
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
void
conn_requeue(dmx_job *list)
{
	dmx_job *j, *next;

	for (j = list; j != NULL; j = next) {
		next = j->next;
		dmx_exec_requeue(j->route->plugin->exec, j);
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
			last |= conn_job_recycle_locked(c, j);
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
		last |= conn_flush_locked(c);
	unparked = conn_take_unparked_locked(c);
	pthread_mutex_unlock(&c->mu);
	conn_requeue(unparked);
	if (last)
		conn_free(c);
}

void
conn_send(dmx_job *j)
{
	j->next = NULL;
	send_run(j->conn, j, j);
}

void
dmx_conn_send_list(dmx_job *head, void *unused)
{
	dmx_job *tail;

	(void)unused;
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
conn_on_writable(dmx_conn *c)
{
	dmx_job *unparked;

	pthread_mutex_lock(&c->mu);
	c->want_out = 0;
	c->last_write = dmx_now_ns();	/* the client made room */
	/* the I/O thread still holds the connection, so flush can never drop
	 * the last claim here */
	if (!c->writing)
		(void)conn_flush_locked(c);
	conn_attn_locked(c);	/* EPOLLOUT on or off, or close */
	unparked = conn_take_unparked_locked(c);
	pthread_mutex_unlock(&c->mu);
	conn_requeue(unparked);
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
conn_reply_error(dmx_conn *c, uint32_t msgid, int64_t code,
    const char *fmt, ...)
{
	char msg[512];
	dmx_job *j;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	j = conn_job(c);
	if (j == NULL)
		return;
	j->msgid = msgid;
	dmx_job_set_error(j, code, msg, NULL);
	conn_send(j);
}

void
conn_notice(dmx_conn *c, int64_t code, const char *fmt, ...)
{
	char msg[512];
	msgpack_packer pk;
	dmx_job *j;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	dmx_debug("conn %u: $/error %lld: %s", c->id, (long long)code, msg);
	if (++c->invalid > CONN_MAX_INVALID) {
		/* a peer that keeps sending what is not a request (random
		 * bytes are mostly valid msgpack integers) would make us
		 * answer every byte: hang up instead */
		if (c->invalid == CONN_MAX_INVALID + 1) {
			dmx_info("conn %u: %u invalid messages: closing", c->id,
			    CONN_MAX_INVALID);
			snprintf(msg, sizeof(msg), "too many invalid messages "
			    "(%u); closing the connection", CONN_MAX_INVALID);
			code = DMX_E_INVALID_REQUEST;
			c->invalid++;	/* this notice is the last */
		} else {
			return;
		}
	}
	j = conn_job(c);
	if (j == NULL)
		return;
	msgpack_packer_init(&pk, &j->out, dmx_buf_pack_write);
	dmx_msg_error_notice(&pk, code, msg);
	conn_send(j);
}

void
conn_reply(dmx_conn *c, uint32_t msgid, const void *result, size_t len)
{
	msgpack_packer pk;
	dmx_job *j;

	j = conn_job(c);
	if (j == NULL)
		return;
	msgpack_packer_init(&pk, &j->out, dmx_buf_pack_write);
	dmx_msg_result_head(&pk, msgid);
	dmx_buf_append(&j->out, result, len);
	conn_send(j);
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

/* ---- the end ---- */

void
dmx_conns_unref(dmx_conns *cs)
{
	if (atomic_fetch_sub(&cs->refs, 1) == 1)
		free(cs);
}

void
conn_free(dmx_conn *c)
{
	dmx_conns *cs = c->cs;
	dmx_job *j, *next;

	for (j = c->free_jobs; j != NULL; j = next) {
		next = j->next;
		job_free(j);
	}
	dmx_budget_sub(&c->cs->budget, c->rbuf_counted);
	free(c->idtab);
	free(c->acl);
	while (c->idents != NULL) {
		struct conn_ident *e = c->idents;

		c->idents = e->next;
		free(e);
	}
	dmx_buf_release(&c->rbuf);
	dmx_xport_free(c->xp);
	pthread_mutex_destroy(&c->mu);
	free(c);
	dmx_conns_unref(cs);
}
