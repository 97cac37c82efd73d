/*
 * mux.c - libmux: the handle, its pending-call table, the writer path and
 * the reader thread. See include/demux/mux.h for the contract.
 *
 * DESIGN
 *
 * Every caller registers a `pending` record (on its own stack) under its
 * msgid in a hash table, appends its request to the handle's write buffer
 * and, if no other thread is writing, becomes the writer: it swaps the buffer
 * out and writes everything queued so far, its own request and any that other
 * callers appended meanwhile, so coinciding calls share one syscall. The fds
 * are non-blocking: when the kernel buffer is full the writer leaves the rest
 * to the reader thread (want_out), so no caller ever blocks in write and every
 * caller's timeout holds.
 *
 * The reader thread polls the read fd (plus the write fd while want_out is
 * set, plus an eventfd used to wake it), frames responses with the same
 * scanner as the server, copies each result out, and completes the matching
 * record: it signals that caller's own condition variable, so one response
 * wakes exactly one thread. A response for an unknown msgid (its caller timed
 * out) is dropped and counted.
 *
 * When the connection breaks, every pending call fails with MUX_ECONN; after
 * mux_close with MUX_ECLOSED. The records live on the callers' stacks, so a
 * record is always completed (or removed by its own timed-out caller) under
 * the lock, and its caller frees nothing until it has seen `done`.
 *
 * Waiting: each caller sleeps on its own record's `done` word with a futex,
 * without holding or re-taking the handle's lock, so a completion costs one
 * FUTEX_WAKE of exactly that thread and no lock hand-off. The record lives on
 * the waiter's stack and may vanish the moment the waiter sees done == 1; a
 * wake that arrives after that hits memory that is still mapped and at worst
 * causes a spurious wake-up, which every waiter tolerates (the pattern of
 * glibc's own semaphores).
 *
 * Locks: m->mu guards the pending table and the state (callers inserting,
 * the reader completing); m->wmu guards the write buffers (callers queueing,
 * whoever writes). Two locks, because the reader and the writers would
 * otherwise contend for one on every message. Order: wmu before mu.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>

#include "../common/buf.h"
#include "../common/uri.h"
#include "../common/wire.h"
#include "demux/mux.h"

#define MUX_DEFAULT_MAX_FRAME	(64u << 20)
#define READ_CHUNK		(256u << 10)

extern char **environ;

enum mux_state { MUX_OPEN, MUX_CLOSED, MUX_BROKEN };

typedef struct mux_pending {
	struct mux_pending *next;	/* hash chain (mu) */
	uint32_t	 msgid;
	int		 rc;		/* written before done */
	mux_result	*res;		/* written before done */
	_Atomic uint32_t done;		/* 0 -> 1 once, under mu; a futex */
} mux_pending;

struct mux {
	int		 rfd, wfd;
	int		 is_sock;	/* send(MSG_NOSIGNAL) on wfd */
	pid_t		 child;		/* mux_spawn, else 0 */
	int		 wakefd;	/* eventfd: wake the reader */
	pthread_t	 reader;
	int		 reader_started;
	size_t		 max_frame;

	pthread_mutex_t	 mu;		/* the table and the state */
	pthread_mutex_t	 wmu;		/* the write buffers; taken before mu */
	_Atomic int	 state;		/* enum mux_state; written under mu */
	char		 why[MUX_ERRLEN]; /* mu: reason for BROKEN */
	uint32_t	 next_id;	/* mu */
	mux_pending	**buckets;	/* mu: power-of-two hash table */
	size_t		 nbuckets;	/* mu */
	size_t		 npending;	/* mu */
	dmx_buf		 wbuf;		/* wmu: requests not yet being written */
	dmx_buf		 wcur;		/* owned by the writer (writing=1) */
	size_t		 wcur_off;	/* owned by the writer */
	int		 writing;	/* wmu: a thread owns wcur */
	int		 want_out;	/* wmu: the reader must finish the write */
	_Atomic unsigned users;		/* threads inside API calls */
	_Atomic int	 freeing;	/* mux_free waits for users == 0 */
	pthread_cond_t	 users_cv;	/* mu: users dropped to 0 */
	uint64_t	 late;		/* mu: responses nobody waited for */
	_Atomic int	 draining;	/* the server sent $/drain */
};

const char *
mux_strerror(int err)
{
	switch (err) {
#define MUX_XX(name, val, desc) case MUX_##name: return (desc);
	MUX_ERRORS(MUX_XX)
#undef MUX_XX
	default:
		return "unknown error";
	}
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static void
wake_reader(mux_t *m)
{
	uint64_t one = 1;

	if (write(m->wakefd, &one, sizeof(one)) < 0) {
		/* EAGAIN: the counter is already non-zero, it will wake */
	}
}

static void
futex_wake_one(_Atomic uint32_t *w)
{
	syscall(SYS_futex, w, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* Sleep while *w == 0, at most *rel (NULL: no limit). Spurious returns are
 * fine: callers loop. */
static void
futex_wait_zero(_Atomic uint32_t *w, const struct timespec *rel)
{
	syscall(SYS_futex, w, FUTEX_WAIT_PRIVATE, 0, rel, NULL, 0);
}

/* Mark p finished (mu held) and wake its caller. */
static void
complete(mux_pending *p, int rc)
{
	p->rc = rc;
	atomic_store_explicit(&p->done, 1, memory_order_release);
	futex_wake_one(&p->done);
}

/* ---- pending table (mu held) ---- */

static int
table_grow(mux_t *m)
{
	size_t n = m->nbuckets ? m->nbuckets * 2 : 64, i;
	mux_pending **b = calloc(n, sizeof(*b)), *p, *next;

	if (b == NULL)
		return -1;
	for (i = 0; i < m->nbuckets; i++)
		for (p = m->buckets[i]; p != NULL; p = next) {
			next = p->next;
			p->next = b[p->msgid & (n - 1)];
			b[p->msgid & (n - 1)] = p;
		}
	free(m->buckets);
	m->buckets = b;
	m->nbuckets = n;
	return 0;
}

static mux_pending **
table_find(mux_t *m, uint32_t id)
{
	mux_pending **pp;

	if (m->nbuckets == 0)
		return NULL;
	for (pp = &m->buckets[id & (m->nbuckets - 1)]; *pp != NULL;
	    pp = &(*pp)->next)
		if ((*pp)->msgid == id)
			return pp;
	return NULL;
}

/* Give p a msgid no call in flight uses and insert it. */
static int
table_insert(mux_t *m, mux_pending *p)
{
	if (m->npending >= m->nbuckets && table_grow(m) != 0)
		return -1;
	do
		p->msgid = m->next_id++;
	while (table_find(m, p->msgid) != NULL);
	p->next = m->buckets[p->msgid & (m->nbuckets - 1)];
	m->buckets[p->msgid & (m->nbuckets - 1)] = p;
	m->npending++;
	return 0;
}

static void
table_remove(mux_t *m, mux_pending **pp)
{
	*pp = (*pp)->next;
	m->npending--;
}

/* Complete p with a local error (mu held). */
static void
complete_local(mux_pending *p, int rc, const char *why)
{
	if (p->res->message == NULL)
		p->res->message = strdup(why ? why : mux_strerror(rc));
	complete(p, rc);
}

/* Fail every pending call (mu held). */
static void
fail_all(mux_t *m, int rc, const char *why)
{
	mux_pending *p, *next;
	size_t i;

	for (i = 0; i < m->nbuckets; i++) {
		for (p = m->buckets[i]; p != NULL; p = next) {
			next = p->next;
			complete_local(p, rc, why);
		}
		m->buckets[i] = NULL;
	}
	m->npending = 0;
	/* queued requests are dropped by the next writer, which checks the
	 * state */
}

/* The connection is unusable (mu held). */
static void
set_broken(mux_t *m, const char *fmt, ...)
{
	char why[MUX_ERRLEN];
	va_list ap;

	if (m->state != MUX_OPEN)
		return;
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	m->state = MUX_BROKEN;
	snprintf(m->why, sizeof(m->why), "%s", why);
	fail_all(m, MUX_ECONN, why);
	wake_reader(m);
}

/* ---- writing ---- */

/*
 * Sockets have MSG_NOSIGNAL. A pipe to a child that died raises SIGPIPE, and a
 * library must not change the process's disposition, so block it in this
 * thread around the write and consume the one the write raised.
 */
static ssize_t
raw_write(mux_t *m, const void *p, size_t n)
{
	static const struct timespec zero = { 0, 0 };
	sigset_t pipe_set, old;
	ssize_t r;
	int e;

	if (m->is_sock)
		return send(m->wfd, p, n, MSG_NOSIGNAL);
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
	r = write(m->wfd, p, n);
	e = errno;
	if (r < 0 && e == EPIPE)
		while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
			;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	errno = e;
	return r;
}

/*
 * Write queued requests until none are left or the fd is full. Called with wmu
 * held and writing == 0; drops wmu around each syscall. On EAGAIN the rest is
 * left to the reader thread (want_out).
 */
static void
flush_locked(mux_t *m)
{
	dmx_buf tmp;
	ssize_t n;

	m->writing = 1;
	while (atomic_load(&m->state) == MUX_OPEN) {
		if (m->wcur_off == m->wcur.len) {
			m->wcur.len = 0;
			m->wcur_off = 0;
			if (m->wbuf.len == 0)
				break;
			tmp = m->wcur;
			m->wcur = m->wbuf;
			m->wbuf = tmp;
		}
		pthread_mutex_unlock(&m->wmu);
		do
			n = raw_write(m, m->wcur.data + m->wcur_off,
			    m->wcur.len - m->wcur_off);
		while (n < 0 && errno == EINTR);
		pthread_mutex_lock(&m->wmu);
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			if (!m->want_out) {
				m->want_out = 1;
				wake_reader(m);
			}
			break;
		}
		if (n < 0) {
			int e = errno;

			pthread_mutex_lock(&m->mu);
			set_broken(m, "connection lost (write: %s); the "
			    "effect of calls in flight is unknown", strerror(e));
			pthread_mutex_unlock(&m->mu);
			break;
		}
		m->wcur_off += (size_t)n;
	}
	if (atomic_load(&m->state) != MUX_OPEN) {
		m->wcur.len = m->wcur_off = 0;
		m->wbuf.len = 0;
	}
	m->writing = 0;
}

/* Queue one message (header + params) and write if nobody else is. wmu
 * held. */
static int
queue_msg(mux_t *m, int type, uint32_t msgid, const char *method,
    const void *params, size_t len)
{
	msgpack_packer pk;
	size_t mlen = strlen(method);

	/* reserve everything first: the packer ignores a failing sink */
	if (mlen > UINT32_MAX || dmx_buf_reserve(&m->wbuf, 16 + mlen + len) != 0)
		return MUX_ENOMEM;
	msgpack_packer_init(&pk, &m->wbuf, dmx_buf_pack_write);
	if (type == DMX_MSG_REQUEST) {
		msgpack_pack_array(&pk, 4);
		msgpack_pack_uint8(&pk, DMX_MSG_REQUEST);
		msgpack_pack_uint32(&pk, msgid);
	} else {
		msgpack_pack_array(&pk, 3);
		msgpack_pack_uint8(&pk, DMX_MSG_NOTIFY);
	}
	msgpack_pack_str(&pk, mlen);
	msgpack_pack_str_body(&pk, method, mlen);
	if (len == 0)
		msgpack_pack_array(&pk, 0);
	else
		dmx_buf_append(&m->wbuf, params, len);
	if (!m->writing && !m->want_out)
		flush_locked(m);
	return MUX_OK;
}

/* ---- entering and leaving the API ---- */

/* Count the caller in and take the lock; returns MUX_OK if the handle is
 * open. The lock is held on return either way. */
static int
enter(mux_t *m, mux_result *res)
{
	int rc;

	atomic_fetch_add(&m->users, 1);
	pthread_mutex_lock(&m->mu);
	if (atomic_load(&m->state) == MUX_OPEN) {
		if (!atomic_load(&m->draining))
			return MUX_OK;
		if (res != NULL)
			res->message = strdup(mux_strerror(MUX_EDRAINING));
		return MUX_EDRAINING;
	}
	rc = atomic_load(&m->state) == MUX_CLOSED ? MUX_ECLOSED : MUX_ECONN;
	if (res != NULL)
		res->message = strdup(rc == MUX_ECONN && m->why[0] ? m->why :
		    mux_strerror(rc));
	return rc;
}

/* Count the caller out (no lock held). */
static void
leave(mux_t *m)
{
	if (atomic_fetch_sub(&m->users, 1) == 1 && atomic_load(&m->freeing)) {
		pthread_mutex_lock(&m->mu);
		pthread_cond_broadcast(&m->users_cv);
		pthread_mutex_unlock(&m->mu);
	}
}

/* Wait for p to finish, until *dl (CLOCK_MONOTONIC; NULL: no limit). */
static int
wait_done(mux_t *m, mux_pending *p, const struct timespec *dl)
{
	struct timespec now, rel;
	mux_pending **pp;

	for (;;) {
		if (atomic_load_explicit(&p->done, memory_order_acquire))
			return p->rc;
		if (dl == NULL) {
			futex_wait_zero(&p->done, NULL);
			continue;
		}
		clock_gettime(CLOCK_MONOTONIC, &now);
		rel.tv_sec = dl->tv_sec - now.tv_sec;
		rel.tv_nsec = dl->tv_nsec - now.tv_nsec;
		if (rel.tv_nsec < 0) {
			rel.tv_sec--;
			rel.tv_nsec += 1000000000L;
		}
		if (rel.tv_sec >= 0) {
			futex_wait_zero(&p->done, &rel);
			continue;
		}
		/* timed out: unless the reader completed it meanwhile, take
		 * the record out of the table so that nobody will */
		pthread_mutex_lock(&m->mu);
		if (!atomic_load_explicit(&p->done, memory_order_acquire)) {
			pp = table_find(m, p->msgid);
			if (pp != NULL && *pp == p)
				table_remove(m, pp);
			p->res->message = strdup(mux_strerror(MUX_ETIMEDOUT));
			p->rc = MUX_ETIMEDOUT;
			atomic_store_explicit(&p->done, 1, memory_order_relaxed);
		}
		pthread_mutex_unlock(&m->mu);
		return p->rc;
	}
}

/* params must be exactly one msgpack array: anything else would corrupt the
 * stream for every other caller. */
static int
check_params(const void *params, size_t len)
{
	dmx_rd r;

	if (len == 0)
		return 0;
	if (params == NULL)
		return -1;
	dmx_rd_init(&r, params, len);
	if (!dmx_rd_is_array(&r) || dmx_wire_one_object(params, len) != len)
		return -1;
	return 0;
}

/* [2, "$/cancelRequest", [msgid]]: best effort, from any thread. */
static void
send_cancel(mux_t *m, uint32_t msgid)
{
	unsigned char p[6] = { 0x91, 0xce };

	p[2] = (unsigned char)(msgid >> 24);
	p[3] = (unsigned char)(msgid >> 16);
	p[4] = (unsigned char)(msgid >> 8);
	p[5] = (unsigned char)msgid;
	if (atomic_load(&m->state) != MUX_OPEN)
		return;
	pthread_mutex_lock(&m->wmu);
	queue_msg(m, DMX_MSG_NOTIFY, 0, "$/cancelRequest", p, sizeof(p));
	pthread_mutex_unlock(&m->wmu);
}

int
mux_cancel(mux_t *m, mux_token *tok)
{
	unsigned long long v;

	if (m == NULL || tok == NULL ||
	    (v = __atomic_load_n(&tok->opaque, __ATOMIC_ACQUIRE)) == 0)
		return MUX_EINVAL;
	send_cancel(m, (uint32_t)(v - 1));
	return MUX_OK;
}

int
mux_call(mux_t *m, const char *method, const void *params, size_t len,
    mux_result *res, int timeout_ms)
{
	return mux_call_token(m, method, params, len, res, timeout_ms, NULL);
}

int
mux_call_token(mux_t *m, const char *method, const void *params, size_t len,
    mux_result *res, int timeout_ms, mux_token *tok)
{
	mux_pending p;
	struct timespec dl;
	int rc;

	memset(res, 0, sizeof(*res));
	if (m == NULL || method == NULL || check_params(params, len) != 0) {
		res->message = strdup("invalid argument: params must be one "
		    "msgpack array");
		return MUX_EINVAL;
	}
	if (len > m->max_frame) {
		res->message = strdup("params larger than the frame limit");
		return MUX_ETOOBIG;
	}
	if (timeout_ms > 0) {
		clock_gettime(CLOCK_MONOTONIC, &dl);
		dl.tv_sec += timeout_ms / 1000;
		dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
		if (dl.tv_nsec >= 1000000000L) {
			dl.tv_sec++;
			dl.tv_nsec -= 1000000000L;
		}
	}
	if ((rc = enter(m, res)) != MUX_OK) {
		pthread_mutex_unlock(&m->mu);
		leave(m);
		return rc;
	}
	memset(&p, 0, sizeof(p));
	p.res = res;
	if (table_insert(m, &p) != 0) {
		pthread_mutex_unlock(&m->mu);
		rc = MUX_ENOMEM;
		goto out;
	}
	pthread_mutex_unlock(&m->mu);
	if (tok != NULL)	/* msgid + 1: 0 means no call */
		__atomic_store_n(&tok->opaque, (unsigned long long)p.msgid + 1,
		    __ATOMIC_RELEASE);
	pthread_mutex_lock(&m->wmu);
	rc = queue_msg(m, DMX_MSG_REQUEST, p.msgid, method, params, len);
	pthread_mutex_unlock(&m->wmu);
	if (rc != MUX_OK) {
		mux_pending **pp;

		pthread_mutex_lock(&m->mu);
		pp = table_find(m, p.msgid);
		if (pp != NULL && *pp == &p)
			table_remove(m, pp);
		else
			rc = p.rc;	/* completed (failed) meanwhile, under mu */
		pthread_mutex_unlock(&m->mu);
		goto out;
	}
	rc = wait_done(m, &p, timeout_ms > 0 ? &dl : NULL);
	if (rc == MUX_ETIMEDOUT)
		send_cancel(m, p.msgid);	/* stop the work on the server */
out:
	if (tok != NULL)
		__atomic_store_n(&tok->opaque, 0, __ATOMIC_RELEASE);
	leave(m);
	if (rc != MUX_OK && rc != MUX_EREMOTE && res->message == NULL)
		res->message = strdup(mux_strerror(rc));
	return rc;
}

int
mux_notify(mux_t *m, const char *method, const void *params, size_t len)
{
	int rc;

	if (m == NULL || method == NULL || check_params(params, len) != 0)
		return MUX_EINVAL;
	if (len > m->max_frame)
		return MUX_ETOOBIG;
	rc = enter(m, NULL);
	pthread_mutex_unlock(&m->mu);
	if (rc == MUX_OK) {
		pthread_mutex_lock(&m->wmu);
		rc = queue_msg(m, DMX_MSG_NOTIFY, 0, method, params, len);
		pthread_mutex_unlock(&m->wmu);
	}
	leave(m);
	return rc;
}

void
mux_result_free(mux_result *res)
{
	if (res == NULL)
		return;
	free(res->data);
	free(res->message);
	free(res->trace);
	memset(res, 0, sizeof(*res));
}

/* ---- reading ---- */

static char *
dup_str(const char *s, uint32_t n)
{
	char *p = malloc((size_t)n + 1);

	if (p != NULL) {
		memcpy(p, s, n);
		p[n] = '\0';
	}
	return p;
}

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

static void
batch_flush(mux_t *m, done_batch *b)
{
	mux_pending **pp, *p;
	unsigned i;

	if (b->n == 0)
		return;
	pthread_mutex_lock(&m->mu);
	for (i = 0; i < b->n; i++) {
		pp = table_find(m, b->item[i].id);
		if (pp == NULL) {
			m->late++;	/* its caller timed out: drop it */
			continue;
		}
		p = *pp;
		table_remove(m, pp);
		*p->res = b->item[i].res;
		memset(&b->item[i].res, 0, sizeof(b->item[i].res));
		if (b->item[i].rc == MUX_ENOMEM)
			p->res->message = strdup(mux_strerror(MUX_ENOMEM));
		complete(p, b->item[i].rc);
	}
	pthread_mutex_unlock(&m->mu);
	for (i = 0; i < b->n; i++)
		mux_result_free(&b->item[i].res);	/* the dropped ones */
	b->n = 0;
}

/*
 * Decode one response into a detached result and add it to the batch.
 * Returns -1 if the frame is not a valid message (protocol error).
 */
static int
on_response(mux_t *m, dmx_rd *r, done_batch *b)
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
		tmp.data = malloc(tmp.len);
		if (tmp.data == NULL) {
			tmp.message = NULL;
			rc = MUX_ENOMEM;
		} else {
			memcpy(tmp.data, r->p, tmp.len);
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
			tmp.message = dup_str(s, sl);
			if (n == 3 && dmx_rd_str(r, &s, &sl) == 0)
				tmp.trace = dup_str(s, sl);
		} else {
			/* another server's error object: keep it raw */
			dmx_rd e;

			dmx_rd_init(&e, err_start, (size_t)(r->end - err_start));
			if (dmx_rd_str(&e, &s, &sl) == 0) {
				tmp.message = dup_str(s, sl);
			} else {
				tmp.message = strdup("(non-standard error "
				    "object; see data)");
				r->p = err_start;
				if (dmx_rd_skip(r) == 0) {
					tmp.len = (size_t)(r->p - err_start);
					tmp.data = malloc(tmp.len);
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
		batch_flush(m, b);
	b->item[b->n].id = (uint32_t)id;
	b->item[b->n].rc = rc;
	b->item[b->n].res = tmp;
	b->n++;
	return 0;
}

/* A notification from the server: $/error carries the reason it is about to
 * close the connection; remember it for the callers that will fail. */
static void
on_notify(mux_t *m, dmx_rd *r)
{
	const char *meth, *msg;
	uint32_t ml, n, sl;
	int64_t code;

	if (dmx_rd_str(r, &meth, &ml) != 0)
		return;
	if (ml == 7 && memcmp(meth, "$/drain", 7) == 0) {
		/* send nothing new on this connection */
		atomic_store(&m->draining, 1);
		return;
	}
	if (ml == 7 && memcmp(meth, "$/error", 7) == 0 &&
	    dmx_rd_array(r, &n) == 0 && n >= 2 && dmx_rd_int(r, &code) == 0 &&
	    dmx_rd_str(r, &msg, &sl) == 0) {
		pthread_mutex_lock(&m->mu);
		snprintf(m->why, sizeof(m->why), "server error %lld: %.*s",
		    (long long)code, (int)sl, msg);
		pthread_mutex_unlock(&m->mu);
	}
}

static int
on_frame(mux_t *m, const uint8_t *p, size_t n, done_batch *b)
{
	uint32_t cnt;
	uint64_t type;
	dmx_rd r;

	dmx_rd_init(&r, p, n);
	if (dmx_rd_array(&r, &cnt) != 0 || dmx_rd_uint(&r, &type) != 0)
		return -1;
	if (type == DMX_MSG_RESPONSE && cnt == 4)
		return on_response(m, &r, b);
	if (type == DMX_MSG_NOTIFY && cnt == 3) {
		on_notify(m, &r);
		return 0;
	}
	return -1;
}

static void
reader_broken(mux_t *m, const char *fmt, const char *detail)
{
	char why[MUX_ERRLEN];

	pthread_mutex_lock(&m->mu);
	if (m->why[0] && strncmp(m->why, "server error", 12) == 0)
		snprintf(why, sizeof(why), "connection closed by the server "
		    "(%.160s); the effect of calls in flight is unknown", m->why);
	else
		snprintf(why, sizeof(why), fmt, detail);
	set_broken(m, "%s", why);
	pthread_mutex_unlock(&m->mu);
}

static void *
reader_main(void *arg)
{
	mux_t *m = arg;
	dmx_buf rb = DMX_BUF_INIT;
	dmx_scan sc = DMX_SCAN_INIT;
	struct pollfd pfd[3];
	size_t off, flen, room;
	ssize_t n;
	int np, want_out, rc, i, readable = 0;
	uint64_t v;
	static __thread done_batch batch;

	for (;;) {
		if (atomic_load(&m->state) != MUX_OPEN)
			break;
		pthread_mutex_lock(&m->wmu);
		want_out = m->want_out && !m->writing;
		pthread_mutex_unlock(&m->wmu);
		/* after a read that returned data, read again before polling:
		 * under load more has usually arrived meanwhile, and the read
		 * that finds nothing is cheaper than a poll per batch */
		if (readable && !want_out)
			goto read;

		np = 0;
		pfd[np].fd = m->wakefd;
		pfd[np++].events = POLLIN;
		pfd[np].fd = m->rfd;
		pfd[np++].events = POLLIN;
		if (want_out) {
			if (m->wfd == m->rfd) {
				pfd[1].events |= POLLOUT;
			} else {
				pfd[np].fd = m->wfd;
				pfd[np++].events = POLLOUT;
			}
		}
		for (i = 0; i < np; i++)
			pfd[i].revents = 0;
		if (poll(pfd, (nfds_t)np, -1) < 0) {
			if (errno == EINTR)
				continue;
			reader_broken(m, "poll: %s", strerror(errno));
			break;
		}
		if (pfd[0].revents & POLLIN) {
			if (read(m->wakefd, &v, sizeof(v)) < 0) {
				/* EAGAIN: another wake consumed it */
			}
		}
		if ((pfd[1].revents & POLLOUT) ||
		    (np == 3 && (pfd[2].revents & (POLLOUT | POLLERR |
		    POLLHUP)))) {
			pthread_mutex_lock(&m->wmu);
			if (!m->writing && m->want_out) {
				m->want_out = 0;
				flush_locked(m);
			}
			pthread_mutex_unlock(&m->wmu);
		}
		if (!(pfd[1].revents & (POLLIN | POLLHUP | POLLERR)))
			continue;
read:
		/* read as much as there is, frame, dispatch */
		room = READ_CHUNK;
		if (sc.pos + 1 > rb.len && sc.pos + 1 - rb.len > room)
			room = sc.pos + 1 - rb.len;
		if (dmx_buf_reserve(&rb, room) != 0) {
			reader_broken(m, "%s", "out of memory for a response");
			break;
		}
		n = read(m->rfd, rb.data + rb.len, rb.cap - rb.len);
		readable = n > 0 && (size_t)n == rb.cap - rb.len;
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0) {
			reader_broken(m, "connection lost (%s); the effect of "
			    "calls in flight is unknown", n == 0 ?
			    "the server closed it" : strerror(errno));
			break;
		}
		rb.len += (size_t)n;
		off = 0;
		rc = DMX_SCAN_MORE;
		while (off < rb.len) {
			rc = dmx_scan_frame(&sc, (uint8_t *)rb.data + off,
			    rb.len - off, m->max_frame, &flen);
			if (rc != DMX_SCAN_FRAME)
				break;
			if (on_frame(m, (uint8_t *)rb.data + off, flen, &batch) !=
			    0) {
				rc = DMX_SCAN_INVALID;
				break;
			}
			off += flen;
		}
		batch_flush(m, &batch);
		if (rc == DMX_SCAN_INVALID) {
			reader_broken(m, "%s", "protocol error: the server sent "
			    "a message that is not a valid response");
			break;
		}
		if (rc == DMX_SCAN_TOOBIG) {
			reader_broken(m, "%s", "a response is larger than the "
			    "frame limit (mux_set_max_frame)");
			break;
		}
		dmx_buf_consume(&rb, off);
		if (rb.len == 0 && rb.cap > 4 * READ_CHUNK)
			dmx_buf_release(&rb);
	}
	dmx_buf_release(&rb);
	return NULL;
}

/* ---- opening and closing ---- */

static uint32_t
random_u32(void)
{
	uint32_t v;
	struct timespec ts;

	if (getrandom(&v, sizeof(v), GRND_NONBLOCK) == (ssize_t)sizeof(v))
		return v;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint32_t)ts.tv_nsec ^ (uint32_t)getpid() << 16;
}

static int
set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static mux_t *
mux_new(int rfd, int wfd, pid_t child, char *err, size_t errlen)
{
	struct stat st;
	mux_t *m;
	int rc;

	m = calloc(1, sizeof(*m));
	if (m == NULL) {
		set_err(err, errlen, "out of memory");
		goto fail_fds;
	}
	m->rfd = rfd;
	m->wfd = wfd;
	m->child = child;
	m->max_frame = MUX_DEFAULT_MAX_FRAME;
	m->is_sock = fstat(wfd, &st) == 0 && S_ISSOCK(st.st_mode);
	m->next_id = random_u32();
	if (set_nonblock(rfd) != 0 || set_nonblock(wfd) != 0) {
		set_err(err, errlen, "fcntl: %s", strerror(errno));
		free(m);
		goto fail_fds;
	}
	m->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (m->wakefd < 0) {
		set_err(err, errlen, "eventfd: %s", strerror(errno));
		free(m);
		goto fail_fds;
	}
	{
		/* callers hold the lock briefly and often: spin a little
		 * before sleeping */
		pthread_mutexattr_t ma;

		pthread_mutexattr_init(&ma);
		pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
		pthread_mutex_init(&m->mu, &ma);
		pthread_mutex_init(&m->wmu, &ma);
		pthread_mutexattr_destroy(&ma);
	}
	pthread_cond_init(&m->users_cv, NULL);
	rc = pthread_create(&m->reader, NULL, reader_main, m);
	if (rc != 0) {
		set_err(err, errlen, "cannot start the reader thread: %s",
		    strerror(rc));
		m->state = MUX_CLOSED;
		mux_free(m);
		errno = rc;
		return NULL;
	}
	m->reader_started = 1;
	return m;
fail_fds:
	if (wfd != rfd)
		close(wfd);
	close(rfd);
	return NULL;
}

mux_t *
mux_connect(const char *uri, char *err, size_t errlen)
{
	dmx_uri u;
	int fd;

	if (uri == NULL) {
		set_err(err, errlen, "no address");
		errno = EINVAL;
		return NULL;
	}
	if (dmx_uri_parse(uri, &u, err, errlen) != 0) {
		errno = EINVAL;
		return NULL;
	}
	fd = dmx_uri_connect(&u, err, errlen);
	if (fd < 0)
		return NULL;
	return mux_new(fd, fd, 0, err, errlen);
}

mux_t *
mux_open_fds(int rfd, int wfd, char *err, size_t errlen)
{
	if (rfd < 0 || wfd < 0) {
		set_err(err, errlen, "invalid file descriptors");
		errno = EBADF;
		return NULL;
	}
	return mux_new(rfd, wfd, 0, err, errlen);
}

mux_t *
mux_spawn(char *const argv[], char *err, size_t errlen)
{
	posix_spawn_file_actions_t fa;
	int in[2], out[2], rc;
	pid_t pid;

	if (argv == NULL || argv[0] == NULL) {
		set_err(err, errlen, "no program to spawn");
		errno = EINVAL;
		return NULL;
	}
	if (pipe2(in, O_CLOEXEC) != 0) {
		set_err(err, errlen, "pipe: %s", strerror(errno));
		return NULL;
	}
	if (pipe2(out, O_CLOEXEC) != 0) {
		set_err(err, errlen, "pipe: %s", strerror(errno));
		close(in[0]);
		close(in[1]);
		return NULL;
	}
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, in[0], STDIN_FILENO);
	posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
	rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(in[0]);
	close(out[1]);
	if (rc != 0) {
		set_err(err, errlen, "cannot run %s: %s", argv[0],
		    strerror(rc));
		close(in[1]);
		close(out[0]);
		errno = rc;
		return NULL;
	}
	return mux_new(out[0], in[1], pid, err, errlen);
}

void
mux_set_max_frame(mux_t *m, size_t bytes)
{
	if (bytes >= 64)
		m->max_frame = bytes;
}

int
mux_draining(mux_t *m)
{
	return atomic_load(&m->draining);
}

uint64_t
mux_late_responses(mux_t *m)
{
	uint64_t v;

	pthread_mutex_lock(&m->mu);
	v = m->late;
	pthread_mutex_unlock(&m->mu);
	return v;
}

void
mux_close(mux_t *m)
{
	if (m == NULL)
		return;
	pthread_mutex_lock(&m->mu);
	if (m->state == MUX_OPEN) {
		m->state = MUX_CLOSED;
		fail_all(m, MUX_ECLOSED, "the handle was closed (mux_close)");
	} else if (m->state == MUX_BROKEN) {
		m->state = MUX_CLOSED;
	}
	pthread_mutex_unlock(&m->mu);
	wake_reader(m);
	if (m->is_sock)
		shutdown(m->wfd, SHUT_RDWR);
}

/* Reap a spawned child: it exits once it has seen EOF on its stdin and
 * answered what it had accepted. Give it time, then insist. */
static void
reap(pid_t pid)
{
	static const int sigs[] = { 0, SIGTERM, SIGKILL };
	struct pollfd pfd;
	int fd, i, st;

	fd = (int)syscall(SYS_pidfd_open, pid, 0);
	for (i = 0; fd >= 0 && i < 3; i++) {
		if (sigs[i] != 0)
			kill(pid, sigs[i]);
		pfd.fd = fd;
		pfd.events = POLLIN;
		if (poll(&pfd, 1, 5000) > 0)
			break;
	}
	if (fd >= 0)
		close(fd);
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
}

void
mux_free(mux_t *m)
{
	if (m == NULL)
		return;
	mux_close(m);
	if (m->reader_started)
		pthread_join(m->reader, NULL);
	atomic_store(&m->freeing, 1);
	pthread_mutex_lock(&m->mu);
	while (atomic_load(&m->users) > 0)
		pthread_cond_wait(&m->users_cv, &m->mu);
	pthread_mutex_unlock(&m->mu);
	if (m->wfd != m->rfd)
		close(m->wfd);
	close(m->rfd);
	close(m->wakefd);
	if (m->child > 0)
		reap(m->child);
	free(m->buckets);
	dmx_buf_release(&m->wbuf);
	dmx_buf_release(&m->wcur);
	pthread_cond_destroy(&m->users_cv);
	pthread_mutex_destroy(&m->wmu);
	pthread_mutex_destroy(&m->mu);
	free(m);
}
