/*
 * conn_read.c - reading a libmux connection: frame, hand each response to
 * its caller (in batches, under one lock), done by whoever holds the read
 * token: a sync caller waiting for its own answer (mc_lead), or the
 * connection's reader thread, which also completes async calls whose
 * deadline passed and finishes the write when the kernel buffer was full.
 * See conn.c for the design ("Leader and followers").
 *
 * Lock order: c->wmu before c->mu (conn.c); on_done runs with neither held.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <msgpack.h>

#include "../common/text.h"
#include "../common/wire.h"
#include "conn_impl.h"
#include "result.h"

/* ---- reading ---- */

/* Responses decoded from one read, handed to their callers under one lock. */
#define DONE_BATCH 64
typedef struct done_batch {
	unsigned	n;
	struct {
		uint32_t   id;
		int	   rc;
		mux_result res;
	} item[DONE_BATCH];
} done_batch;

/* Complete the batch's calls. Async ones run on_done here if this is the
 * reader thread, else go to it (c->adone). */
static void
batch_flush(mc_conn *c, done_batch *b, int reader)
{
	mc_call **pp, *p, *list = NULL;
	_Atomic uint32_t *wake[DONE_BATCH];
	unsigned i, nwake = 0;

	if (b->n == 0)
		return;
	pthread_mutex_lock(&c->mu);
	for (i = 0; i < b->n; i++) {
		pp = mc_table_find(c, b->item[i].id);
		if (pp == NULL) {
			/* its caller timed out: drop it */
			atomic_fetch_add_explicit(&c->late, 1,
			    memory_order_relaxed);
			continue;
		}
		p = mc_table_remove(c, pp);
		*p->res = b->item[i].res;
		memset(&b->item[i].res, 0, sizeof(b->item[i].res));
		if (b->item[i].rc == MUX_ENOMEM)
			p->res->message = strdup(mux_strerror(MUX_ENOMEM));
		if (p->on_done != NULL) {
			mc_finish(c, p, b->item[i].rc, &list);
		} else {
			p->rc = b->item[i].rc;
			wake[nwake] = mc_finish_sync(c, p);
			nwake += wake[nwake] != NULL;
		}
	}
	if (!reader && list != NULL) {
		mc_call *last = list;

		while (last->next != NULL)
			last = last->next;
		last->next = atomic_load(&c->adone);
		atomic_store(&c->adone, list);
		list = NULL;
		mc_wake_reader(c);
	}
	pthread_mutex_unlock(&c->mu);
	for (i = 0; i < nwake; i++)
		mc_futex_wake(wake[i]);
	for (i = 0; i < b->n; i++)
		mux_result_free(&b->item[i].res);	/* the dropped ones */
	b->n = 0;
	mc_run_done(list);
}

/*
 * Results in place (the results_in_place option): a result of MC_ZC_MIN
 * bytes or more is not copied. The read buffer it arrived in becomes its
 * block (result.h), cut back to end with the result's tag, and reading
 * goes on in a new buffer that starts with what was read after it. Below
 * that size a copy costs less than a new read buffer.
 *
 * The new buffer is sized for one more frame as large (the next answer is
 * likely to be like this one), and reads fill only it (c->rb_sized) until
 * a frame needs more: a READ_CHUNK buffer per result would be above
 * malloc's mmap threshold, and cost an mmap and page faults each time,
 * more than the copy it saves. Returns the result's bytes, or NULL (no
 * memory, or no room for the tag: copy it instead).
 */
#define MC_ZC_MIN (16u << 10)

static char *
rb_hand_over(mc_conn *c, const uint8_t *p, size_t len)
{
	dmx_buf *rb = &c->rb, nb = DMX_BUF_INIT;
	size_t off = (size_t)((const char *)p - rb->data);
	size_t tail = rb->len - off - len;
	char *base;

	if (rb->cap - off - len < MH_DATA_TAIL ||
	    dmx_buf_reserve(&nb, tail + off + len + MH_DATA_TAIL) != 0)
		return NULL;
	c->rb_sized = 1;
	(void)dmx_buf_append(&nb, p + len, tail);	/* reserved: cannot fail */
	base = realloc(rb->data, off + len + MH_DATA_TAIL); /* in place, or
							     * moved */
	if (base == NULL)
		base = rb->data;
	*rb = nb;
	c->rb_gen++;
	mh_data_adopt(base, base + off, len);
	return base + off;
}

/*
 * Decode one response into a detached result and add it to the batch.
 * Returns -1 if the frame is not a valid message (protocol error).
 */
static int
on_response(mc_conn *c, dmx_rd *r, done_batch *b, int reader)
{
	mux_result tmp;
	uint64_t id;
	int rc = MUX_OK;
	const uint8_t *err_start;

	memset(&tmp, 0, sizeof(tmp));
	if (dmx_rd_uint(r, &id) != 0 || id > UINT32_MAX)
		return -1;
	if (dmx_rd_is_nil(r)) {
		dmx_rd_nil(r);
		tmp.len = dmx_rd_left(r);
		if (tmp.len == 0 || dmx_wire_one_object(r->p, tmp.len) == 0)
			return -1;
		if (tmp.len >= MC_ZC_MIN && atomic_load_explicit(&c->in_place,
		    memory_order_relaxed))
			tmp.data = rb_hand_over(c, r->p, tmp.len);
		if (tmp.data == NULL && (tmp.data = mh_data_new(tmp.len)) !=
		    NULL)
			memcpy(tmp.data, r->p, tmp.len);
		if (tmp.data == NULL) {
			tmp.len = 0;
			rc = MUX_ENOMEM;
		}
	} else {
		uint32_t n, sl;
		const char *s;
		int64_t code;

		rc = MUX_EREMOTE;
		err_start = r->p;
		if (dmx_rd_array(r, &n) == 0 && (n == 2 || n == 3) &&
		    dmx_rd_int(r, &code) == 0 && dmx_rd_str(r, &s, &sl) == 0) {
			tmp.code = code;
			tmp.message = dmx_strndup(s, sl);
			if (n == 3 && dmx_rd_str(r, &s, &sl) == 0)
				tmp.trace = dmx_strndup(s, sl);
		} else {
			/* another server's error object: keep it raw */
			dmx_rd e;

			dmx_rd_init(&e, err_start, (size_t)(r->end - err_start));
			if (dmx_rd_str(&e, &s, &sl) == 0) {
				tmp.message = dmx_strndup(s, sl);
			} else {
				tmp.message = strdup("(non-standard error "
				    "object; see data)");
				r->p = err_start;
				if (dmx_rd_skip(r) == 0) {
					tmp.len = (size_t)(r->p - err_start);
					tmp.data = mh_data_new(tmp.len);
					if (tmp.data)
						memcpy(tmp.data, err_start,
						    tmp.len);
					else
						tmp.len = 0;
				}
			}
		}
	}

	if (b->n == DONE_BATCH)
		batch_flush(c, b, reader);
	b->item[b->n].id = (uint32_t)id;
	b->item[b->n].rc = rc;
	b->item[b->n].res = tmp;
	b->n++;
	return 0;
}

/* A notification from the server: $/error carries the reason it is about to
 * close the connection; remember it for the callers that will fail. */
static void
on_notify(mc_conn *c, dmx_rd *r)
{
	const char *meth, *msg;
	uint32_t ml, n, sl;
	int64_t code;

	if (dmx_rd_str(r, &meth, &ml) != 0)
		return;
	if (ml < 2 || meth[0] != '$' || meth[1] != '/') {
		/* the application's: a plugin talking back */
		mc_note_fn fn = atomic_load_explicit(&c->note_fn,
		    memory_order_acquire);

		if (fn != NULL)
			fn(atomic_load_explicit(&c->note_arg,
			    memory_order_relaxed), meth, ml, r->p,
			    (size_t)(r->end - r->p));
		return;
	}
	if (ml == 7 && memcmp(meth, "$/drain", 7) == 0) {
		/* send nothing new on this connection */
		pthread_mutex_lock(&c->mu);
		atomic_store(&c->draining, 1);
		mc_drain_done(c);
		pthread_mutex_unlock(&c->mu);
		return;
	}
	if (ml == 7 && memcmp(meth, "$/error", 7) == 0 &&
	    dmx_rd_array(r, &n) == 0 && n >= 2 && dmx_rd_int(r, &code) == 0 &&
	    dmx_rd_str(r, &msg, &sl) == 0) {
		pthread_mutex_lock(&c->mu);
		snprintf(c->why, sizeof(c->why), "server error %lld: %.*s",
		    (long long)code, (int)sl, msg);
		pthread_mutex_unlock(&c->mu);
	}
}

static int
on_frame(mc_conn *c, const uint8_t *p, size_t n, done_batch *b, int reader)
{
	uint32_t cnt;
	uint64_t type;
	dmx_rd r;

	dmx_rd_init(&r, p, n);
	if (dmx_rd_array(&r, &cnt) != 0 || dmx_rd_uint(&r, &type) != 0)
		return -1;
	if (type == DMX_MSG_RESPONSE && cnt == 4)
		return on_response(c, &r, b, reader);
	if (type == DMX_MSG_NOTIFY && cnt == 3) {
		on_notify(c, &r);
		return 0;
	}
	return -1;
}

static void
reader_broken(mc_conn *c, const char *fmt, const char *detail)
{
	char why[MUX_ERRLEN];

	pthread_mutex_lock(&c->mu);
	if (c->why[0] && strncmp(c->why, "server error", 12) == 0)
		snprintf(why, sizeof(why), "connection closed by the server "
		    "(%.160s)", c->why);
	else
		snprintf(why, sizeof(why), fmt, detail);
	mc_set_broken(c, "%s", why);
	pthread_mutex_unlock(&c->mu);
}

/* Fail async calls whose deadline passed; returns the poll timeout in ms
 * until the next one (-1: none). */
static int
expire(mc_conn *c)
{
	mc_call *p, *list = NULL, *q;
	uint64_t now = dmx_now_ns(), wait;
	mc_call **pp;
	int ms = -1;

	pthread_mutex_lock(&c->mu);
	while (c->nheap > 0 && c->heap[0]->deadline_ns <= now) {
		p = c->heap[0];
		pp = mc_table_find(c, p->msgid);
		mc_table_remove(c, pp);	/* also pops the heap */
		p->res->message = strdup(mux_strerror(MUX_ETIMEDOUT));
		mc_finish(c, p, MUX_ETIMEDOUT, &list);
	}
	if (c->nheap > 0) {
		wait = c->heap[0]->deadline_ns - now;
		ms = (int)((wait + 999999) / 1000000);
	}
	pthread_mutex_unlock(&c->mu);
	for (q = list; q != NULL; q = q->next)
		mc_withdraw_or_cancel(c, q);
	mc_run_done(list);
	return ms;
}

/*
 * Read what the transport has, frame it and complete what it answers; the
 * caller holds the read token. Returns 1 if the read filled the buffer
 * (more is likely waiting), 0 if not or if nothing was there, -1 once the
 * connection is broken.
 */
static int
read_some(mc_conn *c, done_batch *b, int reader)
{
	dmx_buf *rb = &c->rb;
	dmx_scan *sc = &c->sc;
	size_t off, flen, room;
	ssize_t n;
	int rc, full;

	room = READ_CHUNK;
	if (c->rb_sized && rb->cap > rb->len &&
	    dmx_scan_need(sc) <= rb->cap)
		room = rb->cap - rb->len;	/* rb_hand_over's */
	else
		c->rb_sized = 0;
	if (dmx_scan_need(sc) > rb->len &&
	    dmx_scan_need(sc) - rb->len > room)
		room = dmx_scan_need(sc) - rb->len;
	if (dmx_buf_reserve(rb, room) != 0) {
		reader_broken(c, "%s", "out of memory for a response");
		return -1;
	}
	n = dmx_xport_read(c->xp, rb->data + rb->len, rb->cap - rb->len);
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return 0;
	if (n <= 0) {
		/* an end of input without $/drain is a server that stopped
		 * unannounced: killed, crashed, or a proxy */
		reader_broken(c, "connection lost (%s)", n == 0 ?
		    "the server closed it without a drain notice: killed or "
		    "crashed? its log will say" : dmx_xport_why(c->xp, errno));
		return -1;
	}
	full = (size_t)n == rb->cap - rb->len;
	rb->len += (size_t)n;
	off = 0;
	rc = DMX_SCAN_MORE;
	while (off < rb->len) {
		unsigned gen = c->rb_gen;

		rc = dmx_scan_frame(sc, (uint8_t *)rb->data + off,
		    rb->len - off, atomic_load_explicit(&c->max_frame,
		    memory_order_relaxed), &flen);
		if (rc != DMX_SCAN_FRAME)
			break;
		if (on_frame(c, (uint8_t *)rb->data + off, flen, b, reader) !=
		    0) {
			rc = DMX_SCAN_INVALID;
			break;
		}
		/* handed over with its result (a response ends with its
		 * result): what followed the frame is at the start of a new
		 * buffer */
		off = c->rb_gen == gen ? off + flen : 0;
	}
	batch_flush(c, b, reader);
	if (rc == DMX_SCAN_INVALID) {
		reader_broken(c, "%s", "protocol error: the server sent a "
		    "message that is not a valid response");
		return -1;
	}
	if (rc == DMX_SCAN_TOOBIG) {
		reader_broken(c, "%s", "a response is larger than the frame "
		    "limit (mux_set_max_frame)");
		return -1;
	}
	dmx_buf_consume(rb, off);
	if (rb->len == 0 && rb->cap > 4 * READ_CHUNK)
		dmx_buf_release(rb);
	return full;
}

int
mc_lead(mc_conn *c, mc_call *p, const struct timespec *dl)
{
	static __thread done_batch batch;
	struct timespec rel;
	struct pollfd pfd[2];
	uint64_t v;
	int readable, r;

	/* what TLS read ahead is not on the descriptor: poll won't show it */
	readable = dmx_xport_pending(c->xp);
	for (;;) {
		if (atomic_load_explicit(&p->done, memory_order_acquire) &
		    MC_DONE)
			return 0;
		if (!readable) {
			if (dl != NULL && mc_time_left(dl, &rel) != 0)
				return 1;
			pfd[0].fd = c->xp->rfd;
			pfd[0].events = POLLIN;
			pfd[1].fd = c->lwake;	/* a close, a break */
			pfd[1].events = POLLIN;
			pfd[0].revents = pfd[1].revents = 0;
			if (ppoll(pfd, 2, dl != NULL ? &rel : NULL, NULL) < 0) {
				if (errno != EINTR)
					reader_broken(c, "poll: %s",
					    strerror(errno));
				continue;
			}
			if ((pfd[1].revents & POLLIN) &&
			    read(c->lwake, &v, sizeof(v)) < 0) {
				/* EAGAIN: another wake consumed it */
			}
			if (!(pfd[0].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
		}
		r = read_some(c, &batch, 0);
		readable = r > 0 || dmx_xport_pending(c->xp);
	}
}

/* Run on_done for the async calls a leader read the answers of. */
static void
run_adone(mc_conn *c)
{
	mc_call *list;

	/* a hint: a push after this look wakes us again */
	if (atomic_load_explicit(&c->adone, memory_order_relaxed) == NULL)
		return;
	pthread_mutex_lock(&c->mu);
	list = atomic_exchange(&c->adone, NULL);
	pthread_mutex_unlock(&c->mu);
	mc_run_done(list);
}

/* Finish a write the kernel had no room for (want_out), now that it has. */
static void
finish_write(mc_conn *c)
{
	pthread_mutex_lock(&c->wmu);
	if (!c->writing && c->want_out) {
		c->want_out = 0;
		mc_flush_locked(c);
	}
	pthread_mutex_unlock(&c->wmu);
}

void *
mc_reader_main(void *arg)
{
	mc_conn *c = arg;
	struct pollfd pfd[3];
	int np, want_out, i, readable = 0, tmo, own = 0, e, r, hup_seen = 0;
	uint64_t v;
	mc_call *dead;
	mc_event_fn on_stop;
	void *on_stop_arg;
	uint64_t dl;
	static __thread done_batch batch;

	for (;;) {
		if (atomic_load(&c->state) != MC_OPEN)
			break;
		run_adone(c);
		pthread_mutex_lock(&c->wmu);
		want_out = c->want_out && !c->writing;
		pthread_mutex_unlock(&c->wmu);
		if (!own) {
			e = MC_RD_FREE;
			own = atomic_compare_exchange_strong(&c->rd, &e,
			    MC_RD_THREAD);
			/* what TLS read ahead (with the handshake, or for
			 * the last holder) is not on the descriptor: read it
			 * before the first poll */
			readable = own && dmx_xport_pending(c->xp);
		}
		if (!own) {
			/* a caller reads, or did: wait for a wake-up (an
			 * async call started, the token put down for us, a
			 * close), an async deadline, room to finish a write,
			 * the next idle look, or the peer closing: POLLRDHUP
			 * (and POLLHUP, always reported) but not POLLIN, so
			 * that answers do not wake us, while a server that
			 * goes away is seen at once even when the token lies
			 * free, before the next call is sent to it */
			tmo = atomic_load_explicit(&c->next_dl,
			    memory_order_relaxed) ? expire(c) : -1;
			if (tmo < 0 || tmo > MC_IDLE_WATCH_MS)
				tmo = MC_IDLE_WATCH_MS;
			np = 0;
			pfd[np].fd = c->wakefd;
			pfd[np++].events = POLLIN;
			pfd[np].fd = c->xp->rfd;
			pfd[np++].events = hup_seen ? 0 : POLLRDHUP;
			if (want_out) {
				if (c->xp->wfd == c->xp->rfd) {
					pfd[1].events |= POLLOUT;
				} else {
					pfd[np].fd = c->xp->wfd;
					pfd[np++].events = POLLOUT;
				}
			}
			if (pfd[1].events == 0)
				pfd[1].fd = -1;	/* hup_seen: ignored */
			for (i = 0; i < np; i++)
				pfd[i].revents = 0;
			if (poll(pfd, (nfds_t)np, tmo) < 0 && errno != EINTR) {
				reader_broken(c, "poll: %s", strerror(errno));
				break;
			}
			if ((pfd[0].revents & POLLIN) &&
			    read(c->wakefd, &v, sizeof(v)) < 0) {
				/* EAGAIN: another wake consumed it */
			}
			if ((want_out && c->xp->wfd == c->xp->rfd &&
			    (pfd[1].revents & (POLLOUT | POLLERR))) ||
			    (np == 3 && (pfd[2].revents & (POLLOUT | POLLERR |
			    POLLHUP))))
				finish_write(c);
			/* the peer closed: the token's holder (or we, at the
			 * top, if it lies free) reads the end of input; until
			 * the token changes hands, do not look again */
			if (pfd[1].revents & (POLLRDHUP | POLLHUP | POLLERR))
				hup_seen = 1;
			continue;
		}
		hup_seen = 0;
		/* after a read that returned data, read again before polling:
		 * under load more has usually arrived meanwhile, and the read
		 * that finds nothing is cheaper than a poll per batch. A
		 * deadline that passed meanwhile is served first. */
		if (readable && !want_out) {
			dl = atomic_load_explicit(&c->next_dl,
			    memory_order_relaxed);
			if (dl != 0 && dl <= dmx_now_ns())
				expire(c);
			goto read;
		}
		/* no async deadline pending: no lock to take */
		tmo = atomic_load_explicit(&c->next_dl, memory_order_relaxed) ?
		    expire(c) : -1;

		np = 0;
		pfd[np].fd = c->wakefd;
		pfd[np++].events = POLLIN;
		pfd[np].fd = c->xp->rfd;
		pfd[np++].events = POLLIN;
		if (want_out) {
			if (c->xp->wfd == c->xp->rfd) {
				pfd[1].events |= POLLOUT;
			} else {
				pfd[np].fd = c->xp->wfd;
				pfd[np++].events = POLLOUT;
			}
		}
		for (i = 0; i < np; i++)
			pfd[i].revents = 0;
		/* asleep in poll, a caller may take the token over */
		atomic_store(&c->rd, MC_RD_POLL);
		r = poll(pfd, (nfds_t)np, tmo);
		e = MC_RD_POLL;
		if (!atomic_compare_exchange_strong(&c->rd, &e, MC_RD_THREAD))
			own = 0;	/* taken: it reads now, we must not */
		if (r < 0) {
			if (errno == EINTR)
				continue;
			reader_broken(c, "poll: %s", strerror(errno));
			break;
		}
		if (pfd[0].revents & POLLIN) {
			if (read(c->wakefd, &v, sizeof(v)) < 0) {
				/* EAGAIN: another wake consumed it */
			}
		}
		if ((pfd[1].revents & POLLOUT) ||
		    (np == 3 && (pfd[2].revents & (POLLOUT | POLLERR |
		    POLLHUP))))
			finish_write(c);
		if (!own || !(pfd[1].revents & (POLLIN | POLLHUP | POLLERR)))
			continue;
read:
		r = read_some(c, &batch, 1);
		if (r < 0)
			break;
		readable = r > 0;
	}
	/* stopped: no call can be added any more; complete the async calls
	 * that failed with the connection, and those a caller read the
	 * answers of, then tell the owner */
	pthread_mutex_lock(&c->mu);
	dead = c->dead;
	c->dead = NULL;
	pthread_mutex_unlock(&c->mu);
	run_adone(c);
	mc_run_done(dead);
	on_stop = c->on_stop;
	on_stop_arg = c->arg;
	mc_unref(c);		/* may free c */
	if (on_stop != NULL)
		on_stop(on_stop_arg);
	return NULL;
}
