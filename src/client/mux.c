/*
 * mux.c - the libmux handle: endpoints and their connections, choosing one
 * per call, retries, reconnects with backoff, waiting for a connection, and
 * delivering async completions. See include/demux/mux.h for the contract and
 * conn.h for one connection.
 *
 * DESIGN
 *
 * A handle holds a fixed array of endpoints. Each endpoint's current
 * connection (or NULL while it is down) is swapped only by the supervisor
 * thread, under the write side of eplock; a caller picks a connection under
 * the read side and takes a reference, so a swap never frees a connection a
 * caller is using. The supervisor exists only when there is something to
 * supervise (reconnects or health checks): it replaces broken connections,
 * reconnects with jittered exponential backoff, asks $/health, sends calls
 * that were waiting for a connection and fails those whose time ran out. It
 * sleeps on a condition variable that connections kick when they stop.
 *
 * Async calls are heap records holding an mc_call. The connection completes
 * them on its reader thread by calling async_done, which either sends the
 * call once more elsewhere (-32010, or refused before sending) or queues the
 * completion. Queued completions run on one dispatcher thread, started on
 * first use, or, with the completion_fd option, in mux_dispatch on the
 * application's thread, signalled through an eventfd. Either way no callback
 * runs on a reader thread, so a callback that blocks, or makes a blocking
 * call, never stops responses from being read.
 *
 * Locks: eplock (endpoint connections), mu (supervisor state, parked calls,
 * the up epoch), qmu (the completion queue). None is held while calling into
 * a connection that may call back (mc_start, mc_unref), and none while a
 * callback runs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>

#include "../common/uri.h"
#include "../common/wire.h"
#include "conn.h"
#include "demux/mux.h"

#define MUX_DEFAULT_MAX_FRAME	(64u << 20)
#define HEALTH_TIMEOUT_MS	10000

extern char **environ;

struct mux;

/* The $/health probe of one endpoint; reused, one at a time. */
typedef struct mux_probe {
	mc_call		 call;
	mux_result	 res;
	struct mux_ep	*ep;
	_Atomic int	 busy;
} mux_probe;

typedef struct mux_ep {
	struct mux	*m;
	unsigned	 idx;
	char		*uri;		/* as given; "fd"/"spawn" */
	dmx_uri		 addr;
	int		 can_connect;	/* has an address (not fd/spawn) */
	mc_conn		*conn;		/* eplock; NULL while down */
	unsigned	 gen;		/* eplock: connections made */
	/* supervisor only */
	unsigned	 fails;		/* attempts failed in a row */
	uint64_t	 retry_at;	/* next attempt, ns */
	uint64_t	 health_at;	/* next $/health, ns */
	char		 why[MUX_ERRLEN]; /* eplock: last failure */
	mux_probe	 probe;
	_Atomic int	 health_draining; /* $/health said "draining" */
	_Atomic uint64_t calls;
	_Atomic uint64_t connects;
	_Atomic uint64_t connect_failures;
} mux_ep;

typedef struct mux_async {
	mc_call		 call;		/* first: conn.c hands us this */
	mux_result	 res;
	struct mux	*m;
	mux_callback	 cb;
	void		*user;
	int		 rc;
	int		 tried;		/* sent once more already */
	unsigned	 ep;		/* where it was sent */
	uint64_t	 deadline;	/* ns; 0 none */
	struct mux_async *next;		/* parked list, completion queue */
	const char	*method;	/* copies, kept for a resend */
	const void	*params;
	size_t		 len;
	char		 store[];
} mux_async;

struct mux {
	mux_options	 opt;
	unsigned	 nep;
	mux_ep		*ep;
	pthread_rwlock_t eplock;
	_Atomic unsigned rr;		/* rotates ties between endpoints */
	_Atomic int	 closed;
	_Atomic size_t	 max_frame;

	pthread_mutex_t	 mu;
	pthread_cond_t	 cv;		/* kicks the supervisor */
	pthread_cond_t	 up_cv;		/* an endpoint connected; or closed */
	uint64_t	 up_epoch;	/* mu: connections made so far */
	int		 kick;		/* mu */
	int		 stop;		/* mu: the supervisor must exit */
	mux_async	*parked;	/* mu: async calls waiting for a conn */
	pthread_t	 sup;
	int		 sup_started;

	pthread_mutex_t	 qmu;
	pthread_cond_t	 qcv;
	mux_async	*qhead, *qtail;	/* qmu: completions to deliver */
	int		 qstop;		/* qmu: the dispatcher must exit */
	pthread_t	 disp;
	int		 disp_started;	/* qmu */
	int		 qfd;		/* completion_fd: eventfd, else -1 */

	_Atomic unsigned users;		/* threads inside API calls */
	_Atomic int	 freeing;
	unsigned	 readers;	/* mu: connection readers running */
	pthread_cond_t	 users_cv;	/* mu: users or readers reached 0 */

	_Atomic uint64_t calls, retries, late_retired;
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
set_msg(mux_result *res, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
set_msg(mux_result *res, const char *fmt, ...)
{
	char buf[2 * MUX_ERRLEN];
	va_list ap;

	if (res->message != NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	res->message = strdup(buf);
}

static void
deadline_ts(struct timespec *ts, int timeout_ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += timeout_ms / 1000;
	ts->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

/* ---- entering and leaving the API ---- */

static void
enter(mux_t *m)
{
	atomic_fetch_add(&m->users, 1);
}

static void
leave(mux_t *m)
{
	if (atomic_fetch_sub(&m->users, 1) == 1 && atomic_load(&m->freeing)) {
		pthread_mutex_lock(&m->mu);
		pthread_cond_broadcast(&m->users_cv);
		pthread_mutex_unlock(&m->mu);
	}
}

/* params must be exactly one msgpack array: anything else would corrupt the
 * stream for every other caller. */
static int
check_args(mux_t *m, const char *method, const void *params, size_t len,
    mux_result *res)
{
	dmx_rd r;

	if (m == NULL || method == NULL || (len > 0 && params == NULL)) {
		if (res != NULL)
			set_msg(res, "invalid argument");
		return MUX_EINVAL;
	}
	if (len > 0) {
		dmx_rd_init(&r, params, len);
		if (!dmx_rd_is_array(&r) ||
		    dmx_wire_one_object(params, len) != len) {
			if (res != NULL)
				set_msg(res, "invalid argument: params must "
				    "be one msgpack array");
			return MUX_EINVAL;
		}
	}
	if (len > atomic_load(&m->max_frame)) {
		if (res != NULL)
			set_msg(res, "params larger than the frame limit");
		return MUX_ETOOBIG;
	}
	return MUX_OK;
}

/* ---- choosing an endpoint ---- */

/*
 * The open, non-draining connection with the fewest calls in flight, other
 * than endpoint `skip` (-1: none); referenced, with its index. NULL when
 * there is none, with *why MUX_ECLOSED, MUX_EDRAINING (some endpoint is up
 * but draining) or MUX_ENOTCONN, and a reason in res.
 */
static mc_conn *
pick(mux_t *m, int skip, unsigned *idx, unsigned *gen, int *why,
    mux_result *res)
{
	mc_conn *best = NULL, *c;
	unsigned i, k, start, n, bestn = ~0u, draining = 0;
	char reason[MUX_ERRLEN] = "", *cut;

	if (atomic_load(&m->closed)) {
		*why = MUX_ECLOSED;
		if (res != NULL)
			set_msg(res, "the handle was closed (mux_close)");
		return NULL;
	}
	start = m->nep > 1 ? atomic_fetch_add_explicit(&m->rr, 1,
	    memory_order_relaxed) % m->nep : 0;
	pthread_rwlock_rdlock(&m->eplock);
	for (k = 0; k < m->nep; k++) {
		i = start + k < m->nep ? start + k : start + k - m->nep;
		c = m->ep[i].conn;
		if ((int)i == skip)
			continue;
		if (c == NULL || !mc_is_open(c)) {
			if (reason[0] == '\0') {
				if (c != NULL)
					mc_why(c, reason, sizeof(reason));
				else
					snprintf(reason, sizeof(reason), "%s",
					    m->ep[i].why);
			}
			continue;
		}
		if (mc_is_draining(c) ||
		    atomic_load_explicit(&m->ep[i].health_draining,
		    memory_order_relaxed)) {
			draining++;
			continue;
		}
		n = mc_inflight(c);
		if (n < bestn) {
			best = c;
			bestn = n;
			*idx = i;
		}
	}
	if (best != NULL) {
		mc_ref(best);
		*gen = m->ep[*idx].gen;
	}
	pthread_rwlock_unlock(&m->eplock);
	if (best != NULL)
		return best;
	/* "...; the effect of calls in flight is unknown" was about those
	 * calls; this one was not sent */
	if ((cut = strstr(reason, "; the effect")) != NULL)
		*cut = '\0';
	if (draining) {
		*why = MUX_EDRAINING;
		if (res != NULL)
			set_msg(res, "%s", mux_strerror(MUX_EDRAINING));
	} else {
		*why = MUX_ENOTCONN;
		if (res != NULL)
			set_msg(res, "not connected%s%s%s; the call was not "
			    "sent", reason[0] ? " (" : "", reason,
			    reason[0] ? ")" : "");
	}
	return NULL;
}

/* Would sending this call elsewhere be safe and useful? Only if it was
 * certainly not executed: refused before sending, overloaded, or refused by
 * a draining server (which says so in a fixed prefix, see wire.h). */
static int
retryable(int rc, const mux_result *res)
{
	if (rc == MUX_ENOTCONN || rc == MUX_EDRAINING)
		return 1;
	if (rc != MUX_EREMOTE)
		return 0;
	return res->code == DMX_E_OVERLOADED ||
	    (res->code == DMX_E_SHUTTING_DOWN && res->message != NULL &&
	    strncmp(res->message, DMX_NOT_EXECUTED_DRAINING,
	    sizeof(DMX_NOT_EXECUTED_DRAINING) - 1) == 0);
}

/* Wait until a connection is made after epoch e0, the handle closes or *dl
 * passes. Returns 0 to try again, -1 on timeout. */
static int
wait_up(mux_t *m, uint64_t e0, const struct timespec *dl)
{
	int rc = 0;

	pthread_mutex_lock(&m->mu);
	while (m->up_epoch == e0 && !atomic_load(&m->closed) && rc == 0) {
		if (dl == NULL)
			pthread_cond_wait(&m->up_cv, &m->mu);
		else if (pthread_cond_timedwait(&m->up_cv, &m->mu, dl) ==
		    ETIMEDOUT)
			rc = -1;
	}
	if (m->up_epoch != e0 || atomic_load(&m->closed))
		rc = 0;
	pthread_mutex_unlock(&m->mu);
	return rc;
}

static uint64_t
up_epoch(mux_t *m)
{
	uint64_t e;

	pthread_mutex_lock(&m->mu);
	e = m->up_epoch;
	pthread_mutex_unlock(&m->mu);
	return e;
}

static int
can_wait(mux_t *m)
{
	return m->opt.wait_connected && m->sup_started;
}

/* ---- sync calls ---- */

/* The token: endpoint + 1 (16 bits), its connection's generation (16 bits)
 * and the msgid; 0 means no call. */
static unsigned long long
token_make(unsigned ep, unsigned gen, uint32_t msgid)
{
	return (unsigned long long)(ep + 1) << 48 |
	    (unsigned long long)(gen & 0xffff) << 32 | msgid;
}

int
mux_call_token(mux_t *m, const char *method, const void *params, size_t len,
    mux_result *res, int timeout_ms, mux_token *tok)
{
	struct timespec dl, *dlp = NULL;
	mux_result first;		/* the answer a retry replaces */
	mc_call call;
	mc_conn *c;
	unsigned ep = 0, gen = 0;
	int rc, first_rc = MUX_OK, skip = -1, attempt;
	uint64_t e0;

	memset(res, 0, sizeof(*res));
	if ((rc = check_args(m, method, params, len, res)) != MUX_OK)
		return rc;
	if (timeout_ms > 0) {
		deadline_ts(&dl, timeout_ms);
		dlp = &dl;
	}
	memset(&first, 0, sizeof(first));
	enter(m);
	for (attempt = 0;;) {
		mux_result_free(res);	/* what a refused attempt left */
		e0 = can_wait(m) ? up_epoch(m) : 0;
		c = pick(m, skip, &ep, &gen, &rc, res);
		if (c == NULL && skip >= 0 &&
		    !(first_rc == MUX_ENOTCONN && can_wait(m))) {
			/* nowhere else to retry: the first answer stands */
			mux_result_free(res);
			*res = first;
			memset(&first, 0, sizeof(first));
			rc = first_rc;
			break;
		}
		if (c == NULL) {
			if (rc == MUX_ENOTCONN && can_wait(m)) {
				/* wait for any endpoint, the first one too */
				skip = -1;
				if (wait_up(m, e0, dlp) == 0)
					continue;
				free(res->message);
				res->message = strdup("no endpoint connected "
				    "within the timeout; the call was not sent");
			}
			break;
		}
		memset(&call, 0, sizeof(call));
		call.res = res;
		atomic_fetch_add_explicit(&m->calls, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&m->ep[ep].calls, 1,
		    memory_order_relaxed);
		rc = mc_start(c, &call, method, params, len);
		if (rc == MUX_OK) {
			if (tok != NULL)
				__atomic_store_n(&tok->opaque, token_make(ep,
				    gen, call.msgid), __ATOMIC_RELEASE);
			rc = mc_wait(c, &call, dlp);
			if (tok != NULL)
				__atomic_store_n(&tok->opaque, 0,
				    __ATOMIC_RELEASE);
		}
		mc_unref(c);
		if (attempt++ == 0 && retryable(rc, res) && m->nep > 1) {
			/* not executed: once more, elsewhere */
			first = *res;
			first_rc = rc;
			memset(res, 0, sizeof(*res));
			skip = (int)ep;
			atomic_fetch_add_explicit(&m->retries, 1,
			    memory_order_relaxed);
			continue;
		}
		if ((rc == MUX_ENOTCONN || rc == MUX_EDRAINING) && skip < 0 &&
		    attempt < 2)
			continue;	/* refused by the connection it was
					 * given: the next pick sees why */
		if ((rc == MUX_ENOTCONN || rc == MUX_EDRAINING) && skip >= 0) {
			/* the retry was refused: the first answer stands */
			mux_result_free(res);
			*res = first;
			memset(&first, 0, sizeof(first));
			rc = first_rc;
		}
		break;
	}
	leave(m);
	mux_result_free(&first);
	if (rc != MUX_OK && rc != MUX_EREMOTE)
		set_msg(res, "%s", mux_strerror(rc));
	return rc;
}

int
mux_call(mux_t *m, const char *method, const void *params, size_t len,
    mux_result *res, int timeout_ms)
{
	return mux_call_token(m, method, params, len, res, timeout_ms, NULL);
}

int
mux_cancel(mux_t *m, mux_token *tok)
{
	unsigned long long v;
	unsigned ep, gen;
	mc_conn *c = NULL;

	if (m == NULL || tok == NULL ||
	    (v = __atomic_load_n(&tok->opaque, __ATOMIC_ACQUIRE)) == 0)
		return MUX_EINVAL;
	ep = (unsigned)(v >> 48) - 1;
	gen = (unsigned)(v >> 32) & 0xffff;
	if (ep >= m->nep)
		return MUX_EINVAL;
	pthread_rwlock_rdlock(&m->eplock);
	if (m->ep[ep].conn != NULL && (m->ep[ep].gen & 0xffff) == gen) {
		c = m->ep[ep].conn;
		mc_ref(c);
	}
	pthread_rwlock_unlock(&m->eplock);
	if (c == NULL)
		return MUX_EINVAL;	/* its connection is gone, and it */
	mc_cancel(c, (uint32_t)v);
	mc_unref(c);
	return MUX_OK;
}

int
mux_notify(mux_t *m, const char *method, const void *params, size_t len)
{
	unsigned ep, gen;
	mc_conn *c;
	int rc;

	if ((rc = check_args(m, method, params, len, NULL)) != MUX_OK)
		return rc;
	enter(m);
	c = pick(m, -1, &ep, &gen, &rc, NULL);
	if (c != NULL) {
		rc = mc_notify(c, method, params, len);
		mc_unref(c);
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

/* ---- async calls ---- */

static void *dispatch_main(void *arg);

/* Queue a finished call for its callback. */
static void
deliver(mux_async *a, int rc)
{
	mux_t *m = a->m;
	uint64_t one = 1;
	int first;

	if (rc != MUX_OK && rc != MUX_EREMOTE)
		set_msg(&a->res, "%s", mux_strerror(rc));
	a->rc = rc;
	a->next = NULL;
	pthread_mutex_lock(&m->qmu);
	first = m->qhead == NULL;
	if (first)
		m->qhead = a;
	else
		m->qtail->next = a;
	m->qtail = a;
	if (m->qfd < 0)
		pthread_cond_signal(&m->qcv);
	pthread_mutex_unlock(&m->qmu);
	if (m->qfd >= 0 && first && write(m->qfd, &one, sizeof(one)) < 0) {
		/* EAGAIN: already readable */
	}
}

static void async_done(mc_call *call);

/*
 * Send a on the best endpoint other than `skip`. Returns MUX_OK once it is
 * in flight; else the reason (nothing sent), with *no_endpoint set when no
 * endpoint could be picked at all.
 */
static int
async_send(mux_t *m, mux_async *a, int skip, int *no_endpoint)
{
	unsigned ep, gen;
	mc_conn *c;
	int rc, attempt;

	*no_endpoint = 0;
	for (attempt = 0; attempt < 2; attempt++) {
		c = pick(m, skip, &ep, &gen, &rc, NULL);
		if (c == NULL) {
			*no_endpoint = 1;
			return rc;
		}
		memset(&a->call, 0, sizeof(a->call));
		a->call.res = &a->res;
		a->call.on_done = async_done;
		a->call.deadline_ns = a->deadline;
		a->ep = ep;
		atomic_fetch_add_explicit(&m->calls, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&m->ep[ep].calls, 1,
		    memory_order_relaxed);
		rc = mc_start(c, &a->call, a->method, a->params, a->len);
		mc_unref(c);	/* in flight, the reader keeps it alive */
		if (rc != MUX_ENOTCONN && rc != MUX_EDRAINING)
			return rc;
	}
	return rc;
}

static void
park(mux_t *m, mux_async *a)
{
	pthread_mutex_lock(&m->mu);
	a->next = m->parked;
	m->parked = a;
	m->kick = 1;
	pthread_cond_signal(&m->cv);
	pthread_mutex_unlock(&m->mu);
}

/* Completion of an async call, on a reader thread. */
static void
async_done(mc_call *call)
{
	mux_async *a = (mux_async *)call;
	mux_t *m = a->m;
	mux_result first;
	int rc = call->rc, rc2, none;

	if (atomic_load(&m->closed) || !retryable(rc, &a->res)) {
		deliver(a, rc);
		return;
	}
	if (!a->tried && m->nep > 1) {
		/* not executed: once more, elsewhere */
		a->tried = 1;
		first = a->res;
		memset(&a->res, 0, sizeof(a->res));
		rc2 = async_send(m, a, (int)a->ep, &none);
		if (rc2 == MUX_OK) {
			atomic_fetch_add_explicit(&m->retries, 1,
			    memory_order_relaxed);
			mux_result_free(&first);
			return;
		}
		mux_result_free(&a->res);
		a->res = first;		/* report what happened first */
	}
	if (rc == MUX_ENOTCONN && can_wait(m)) {
		/* never sent, and the caller chose to wait for a connection */
		mux_result_free(&a->res);
		park(m, a);
		return;
	}
	deliver(a, rc);
}

static int
start_dispatcher(mux_t *m)
{
	int rc = 0;

	if (m->qfd >= 0)
		return 0;
	pthread_mutex_lock(&m->qmu);
	if (!m->disp_started) {
		rc = pthread_create(&m->disp, NULL, dispatch_main, m);
		m->disp_started = rc == 0;
	}
	pthread_mutex_unlock(&m->qmu);
	return rc;
}

int
mux_call_async(mux_t *m, const char *method, const void *params, size_t len,
    mux_callback cb, void *user, int timeout_ms)
{
	size_t mlen;
	mux_async *a;
	int rc, none;

	if ((rc = check_args(m, method, params, len, NULL)) != MUX_OK)
		return rc;
	if (cb == NULL)
		return MUX_EINVAL;
	if (start_dispatcher(m) != 0)
		return MUX_ENOMEM;
	mlen = strlen(method);
	a = malloc(sizeof(*a) + mlen + 1 + len);
	if (a == NULL)
		return MUX_ENOMEM;
	memset(a, 0, sizeof(*a));
	a->m = m;
	a->cb = cb;
	a->user = user;
	a->method = memcpy(a->store, method, mlen + 1);
	a->params = len ? memcpy(a->store + mlen + 1, params, len) : NULL;
	a->len = len;
	if (timeout_ms > 0)
		a->deadline = mc_now_ns() + (uint64_t)timeout_ms * 1000000u;
	enter(m);
	rc = async_send(m, a, -1, &none);
	if (rc == MUX_ENOTCONN && none && can_wait(m)) {
		park(m, a);	/* the supervisor sends or fails it */
		rc = MUX_OK;
	} else if (rc != MUX_OK) {
		free(a);
	}
	leave(m);
	return rc;
}

/* Run one completion's callback and free it. */
static void
run_callback(mux_async *a)
{
	a->cb(a->user, a->rc, &a->res);
	mux_result_free(&a->res);
	free(a);
}

static mux_async *
take_queue(mux_t *m)
{
	mux_async *list;

	list = m->qhead;
	m->qhead = m->qtail = NULL;
	return list;
}

static int
run_list(mux_async *list)
{
	mux_async *a, *next;
	int n = 0;

	for (a = list; a != NULL; a = next) {
		next = a->next;
		run_callback(a);
		n++;
	}
	return n;
}

static void *
dispatch_main(void *arg)
{
	mux_t *m = arg;
	mux_async *list;

	pthread_mutex_lock(&m->qmu);
	for (;;) {
		while (m->qhead == NULL && !m->qstop)
			pthread_cond_wait(&m->qcv, &m->qmu);
		if (m->qhead == NULL)
			break;
		list = take_queue(m);
		pthread_mutex_unlock(&m->qmu);
		run_list(list);
		pthread_mutex_lock(&m->qmu);
	}
	pthread_mutex_unlock(&m->qmu);
	return NULL;
}

int
mux_completion_fd(mux_t *m)
{
	return m->qfd;
}

int
mux_dispatch(mux_t *m)
{
	mux_async *list;
	uint64_t v;

	if (m->qfd < 0)
		return 0;
	/* reset the eventfd before taking the queue: a completion queued
	 * after this point makes it readable again */
	if (read(m->qfd, &v, sizeof(v)) < 0) {
		/* EAGAIN: nothing signalled, the queue may still hold some */
	}
	pthread_mutex_lock(&m->qmu);
	list = take_queue(m);
	pthread_mutex_unlock(&m->qmu);
	return run_list(list);
}

/* ---- the supervisor: reconnects, health, parked calls ---- */

static uint64_t
rand_u64(void)
{
	uint64_t v;

	if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v))
		v = mc_now_ns() * 6364136223846793005ull + 1442695040888963407ull;
	return v;
}

/* The delay before attempt `fails` + 1: exponential, capped, jittered to
 * 50..100 % so that many clients of one restarted server do not all come
 * back in the same instant. */
static uint64_t
backoff_ns(const mux_options *o, unsigned fails)
{
	uint64_t d = (uint64_t)o->backoff_min_ms * 1000000u;
	uint64_t cap = (uint64_t)o->backoff_max_ms * 1000000u;

	while (fails-- > 0 && d < cap)
		d *= 2;
	if (d > cap)
		d = cap;
	return d / 2 + rand_u64() % (d / 2 + 1);
}

/* Called by a connection's reader as its last act: the supervisor looks
 * for the broken connection, and mux_free counts the reader out. */
static void
on_conn_stop(void *arg)
{
	mux_ep *ep = arg;
	mux_t *m = ep->m;

	pthread_mutex_lock(&m->mu);
	m->kick = 1;
	pthread_cond_signal(&m->cv);
	if (--m->readers == 0)
		pthread_cond_broadcast(&m->users_cv);
	pthread_mutex_unlock(&m->mu);
}

/* Start a connection for ep over fds it takes; counts its reader in. */
static mc_conn *
conn_start(mux_t *m, mux_ep *ep, int rfd, int wfd, pid_t child, char *err,
    size_t errlen)
{
	mc_conn *c;

	pthread_mutex_lock(&m->mu);
	m->readers++;
	pthread_mutex_unlock(&m->mu);
	c = mc_open(rfd, wfd, child, atomic_load(&m->max_frame), on_conn_stop,
	    ep, err, errlen);
	if (c == NULL) {
		pthread_mutex_lock(&m->mu);
		m->readers--;
		pthread_mutex_unlock(&m->mu);
	}
	return c;
}

static void
probe_done(mc_call *call)
{
	mux_probe *p = (mux_probe *)call;
	const char *s;
	size_t n;

	if (call->rc == MUX_OK &&
	    mux_unpack(p->res.data, p->res.len, "s", &s, &n) == MUX_OK)
		atomic_store(&p->ep->health_draining,
		    n == 8 && memcmp(s, "draining", 8) == 0);
	mux_result_free(&p->res);
	atomic_store(&p->busy, 0);
}

static void
probe(mux_ep *ep, mc_conn *c)
{
	mux_probe *p = &ep->probe;

	if (atomic_load(&p->busy) || mc_is_draining(c))
		return;
	atomic_store(&p->busy, 1);
	memset(&p->call, 0, sizeof(p->call));
	p->call.res = &p->res;
	p->call.on_done = probe_done;
	p->call.deadline_ns = mc_now_ns() + HEALTH_TIMEOUT_MS * 1000000ull;
	if (mc_start(c, &p->call, "$/health", NULL, 0) != MUX_OK)
		atomic_store(&p->busy, 0);
}

/* Connect endpoint ep now (supervisor or mux_open). */
static mc_conn *
ep_connect(mux_t *m, mux_ep *ep, char *err, size_t errlen)
{
	int fd;

	fd = dmx_uri_connect(&ep->addr, m->opt.connect_timeout_ms, err,
	    errlen);
	if (fd < 0)
		return NULL;
	return conn_start(m, ep, fd, fd, 0, err, errlen);
}

/* Make c the endpoint's connection (NULL: down); returns the old one for
 * the caller to release. */
static mc_conn *
ep_swap(mux_t *m, mux_ep *ep, mc_conn *c, const char *why)
{
	mc_conn *old;

	pthread_rwlock_wrlock(&m->eplock);
	old = ep->conn;
	ep->conn = c;
	if (c != NULL)
		ep->gen++;
	if (why != NULL)
		snprintf(ep->why, sizeof(ep->why), "%s", why);
	pthread_rwlock_unlock(&m->eplock);
	if (c != NULL) {
		atomic_store(&ep->health_draining, 0);
		atomic_fetch_add(&ep->connects, 1);
	}
	return old;
}

/* Send the parked calls again, or fail those past their deadline (or all,
 * when the handle is closed). Returns the next deadline (ns), 0 if none. */
static uint64_t
service_parked(mux_t *m, uint64_t now)
{
	mux_async *list, *a, *next, *keep = NULL;
	uint64_t next_dl = 0;
	int rc, none;

	pthread_mutex_lock(&m->mu);
	list = m->parked;
	m->parked = NULL;
	pthread_mutex_unlock(&m->mu);
	for (a = list; a != NULL; a = next) {
		next = a->next;
		if (atomic_load(&m->closed)) {
			set_msg(&a->res, "the handle was closed (mux_close)");
			deliver(a, MUX_ECLOSED);
			continue;
		}
		if (a->deadline != 0 && a->deadline <= now) {
			set_msg(&a->res, "no endpoint connected within the "
			    "timeout; the call was not sent");
			deliver(a, MUX_ENOTCONN);
			continue;
		}
		rc = async_send(m, a, -1, &none);
		if (rc == MUX_OK)
			continue;
		if (rc == MUX_ENOTCONN && none) {
			a->next = keep;
			keep = a;
			if (a->deadline != 0 &&
			    (next_dl == 0 || a->deadline < next_dl))
				next_dl = a->deadline;
			continue;
		}
		deliver(a, rc);
	}
	if (keep != NULL) {
		pthread_mutex_lock(&m->mu);
		for (a = keep; a != NULL; a = next) {
			next = a->next;
			a->next = m->parked;
			m->parked = a;
		}
		pthread_mutex_unlock(&m->mu);
	}
	return next_dl;
}

static void
soonest(uint64_t *next, uint64_t t)
{
	if (t != 0 && t < *next)
		*next = t;
}

static void *
sup_main(void *arg)
{
	mux_t *m = arg;
	uint64_t now, next, hi = m->opt.health_interval_ms * 1000000ull;
	char err[MUX_ERRLEN];
	struct timespec ts;
	mc_conn *c, *old;
	mux_ep *ep;
	unsigned i;
	int up;

	pthread_mutex_lock(&m->mu);
	while (!m->stop) {
		m->kick = 0;
		pthread_mutex_unlock(&m->mu);
		now = mc_now_ns();
		next = now + 3600ull * 1000000000u;
		up = 0;
		for (i = 0; i < m->nep && !atomic_load(&m->closed); i++) {
			ep = &m->ep[i];
			c = ep->conn;	/* only this thread changes it */
			if (c != NULL && !mc_is_open(c)) {
				/* broken: take it out, retry soon */
				mc_why(c, err, sizeof(err));
				old = ep_swap(m, ep, NULL, err);
				atomic_fetch_add(&m->late_retired, mc_late(old));
				mc_unref(old);
				c = NULL;
				ep->fails = 0;
				ep->retry_at = now + (m->opt.reconnect ?
				    backoff_ns(&m->opt, 0) : 0);
			}
			if (c == NULL && m->opt.reconnect && ep->can_connect &&
			    now >= ep->retry_at) {
				c = ep_connect(m, ep, err, sizeof(err));
				now = mc_now_ns();
				if (c == NULL) {
					atomic_fetch_add(&ep->connect_failures,
					    1);
					ep_swap(m, ep, NULL, err);
					ep->retry_at = now +
					    backoff_ns(&m->opt, ++ep->fails);
				} else {
					ep_swap(m, ep, c, NULL);
					ep->fails = 0;
					ep->health_at = now + hi;
					up = 1;
				}
			}
			if (c == NULL) {
				if (m->opt.reconnect && ep->can_connect)
					soonest(&next, ep->retry_at);
				continue;
			}
			if (hi != 0) {
				if (now >= ep->health_at) {
					probe(ep, c);
					ep->health_at = now + hi;
				}
				soonest(&next, ep->health_at);
			}
		}
		if (up) {
			pthread_mutex_lock(&m->mu);
			m->up_epoch++;
			pthread_cond_broadcast(&m->up_cv);
			pthread_mutex_unlock(&m->mu);
		}
		soonest(&next, service_parked(m, mc_now_ns()));

		ts.tv_sec = (time_t)(next / 1000000000u);
		ts.tv_nsec = (long)(next % 1000000000u);
		pthread_mutex_lock(&m->mu);
		while (!m->kick && !m->stop &&
		    pthread_cond_timedwait(&m->cv, &m->mu, &ts) != ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&m->mu);
	return NULL;
}

/* ---- opening and closing ---- */

void
mux_options_init(mux_options *o)
{
	memset(o, 0, sizeof(*o));
	o->size = sizeof(*o);
	o->reconnect = 1;
	o->backoff_min_ms = 100;
	o->backoff_max_ms = 5000;
	o->wait_connected = 0;
	o->connect_timeout_ms = 2000;
	o->health_interval_ms = 1000;
	o->completion_fd = 0;
	o->max_frame = MUX_DEFAULT_MAX_FRAME;
}

static void
cond_init_mono(pthread_cond_t *cv)
{
	pthread_condattr_t ca;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(cv, &ca);
	pthread_condattr_destroy(&ca);
}

/* A handle with n endpoints and no connections yet. */
static mux_t *
mux_new(unsigned n, const mux_options *o, char *err, size_t errlen)
{
	mux_t *m;
	unsigned i;

	m = calloc(1, sizeof(*m));
	if (m != NULL)
		m->ep = calloc(n, sizeof(*m->ep));
	if (m == NULL || m->ep == NULL) {
		free(m);
		set_err(err, errlen, "out of memory");
		errno = ENOMEM;
		return NULL;
	}
	mux_options_init(&m->opt);
	if (o != NULL)
		memcpy(&m->opt, o, o->size < sizeof(m->opt) && o->size != 0 ?
		    o->size : sizeof(m->opt));
	m->opt.size = sizeof(m->opt);
	if (m->opt.backoff_min_ms <= 0)
		m->opt.backoff_min_ms = 100;
	if (m->opt.backoff_max_ms < m->opt.backoff_min_ms)
		m->opt.backoff_max_ms = m->opt.backoff_min_ms;
	if (m->opt.health_interval_ms < 0)
		m->opt.health_interval_ms = 0;
	m->max_frame = m->opt.max_frame >= 64 ? m->opt.max_frame :
	    MUX_DEFAULT_MAX_FRAME;
	m->nep = n;
	for (i = 0; i < n; i++) {
		m->ep[i].m = m;
		m->ep[i].idx = i;
		m->ep[i].probe.ep = &m->ep[i];
	}
	pthread_rwlock_init(&m->eplock, NULL);
	pthread_mutex_init(&m->mu, NULL);
	pthread_mutex_init(&m->qmu, NULL);
	cond_init_mono(&m->cv);
	cond_init_mono(&m->up_cv);
	pthread_cond_init(&m->qcv, NULL);
	pthread_cond_init(&m->users_cv, NULL);
	m->qfd = -1;
	if (m->opt.completion_fd) {
		m->qfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (m->qfd < 0) {
			set_err(err, errlen, "eventfd: %s", strerror(errno));
			mux_free(m);
			return NULL;
		}
	}
	return m;
}

/* Split a comma-separated list into endpoints of a new handle. */
static mux_t *
parse_list(const char *list, const mux_options *o, char *err, size_t errlen)
{
	const char *p, *e;
	char one[sizeof(((dmx_uri *)0)->host) + 128];
	unsigned n = 1, i;
	size_t l;
	mux_t *m;

	for (p = list; *p; p++)
		n += *p == ',';
	if (n > 0xfffe) {
		set_err(err, errlen, "too many endpoints");
		errno = EINVAL;
		return NULL;
	}
	if ((m = mux_new(n, o, err, errlen)) == NULL)
		return NULL;
	for (p = list, i = 0; i < n; i++, p = e + 1) {
		e = strchr(p, ',');
		if (e == NULL)
			e = p + strlen(p);
		while (p < e && (*p == ' ' || *p == '\t'))
			p++;
		l = (size_t)(e - p);
		while (l > 0 && (p[l - 1] == ' ' || p[l - 1] == '\t'))
			l--;
		if (l == 0 || l >= sizeof(one)) {
			set_err(err, errlen, "endpoint %u of '%s': %s", i + 1,
			    list, l ? "too long" : "empty");
			goto bad;
		}
		memcpy(one, p, l);
		one[l] = '\0';
		if (dmx_uri_parse(one, &m->ep[i].addr, err, errlen) != 0)
			goto bad;
		m->ep[i].uri = strdup(one);
		if (m->ep[i].uri == NULL) {
			set_err(err, errlen, "out of memory");
			goto bad;
		}
		m->ep[i].can_connect = 1;
	}
	return m;
bad:
	mux_free(m);
	errno = EINVAL;
	return NULL;
}

static int
start_supervisor(mux_t *m, char *err, size_t errlen)
{
	int rc;

	if (!m->opt.reconnect && m->opt.health_interval_ms == 0)
		return 0;
	rc = pthread_create(&m->sup, NULL, sup_main, m);
	if (rc != 0) {
		set_err(err, errlen, "cannot start the supervisor thread: %s",
		    strerror(rc));
		errno = rc;
		return -1;
	}
	m->sup_started = 1;
	return 0;
}

mux_t *
mux_open(const char *endpoints, const mux_options *o, char *err,
    size_t errlen)
{
	char why[MUX_ERRLEN];
	mux_t *m;
	mc_conn *c;
	unsigned i;

	if (endpoints == NULL) {
		set_err(err, errlen, "no address");
		errno = EINVAL;
		return NULL;
	}
	if ((m = parse_list(endpoints, o, err, errlen)) == NULL)
		return NULL;
	for (i = 0; i < m->nep; i++) {
		c = ep_connect(m, &m->ep[i], why, sizeof(why));
		if (c == NULL && !m->opt.reconnect) {
			set_err(err, errlen, "%s", why);
			mux_free(m);
			errno = ECONNREFUSED;
			return NULL;
		}
		ep_swap(m, &m->ep[i], c, c == NULL ? why : NULL);
		if (c == NULL)
			m->ep[i].retry_at = mc_now_ns() +
			    backoff_ns(&m->opt, m->ep[i].fails++);
		else
			m->ep[i].health_at = mc_now_ns() +
			    m->opt.health_interval_ms * 1000000ull;
	}
	if (start_supervisor(m, err, errlen) != 0) {
		mux_free(m);
		return NULL;
	}
	return m;
}

mux_t *
mux_connect(const char *uri, char *err, size_t errlen)
{
	mux_options o;

	mux_options_init(&o);
	o.reconnect = 0;
	o.health_interval_ms = 0;
	return mux_open(uri, &o, err, errlen);
}

/* A handle over one existing connection (fds or a child). */
static mux_t *
mux_wrap(int rfd, int wfd, pid_t child, const char *name, char *err,
    size_t errlen)
{
	mux_options o;
	mc_conn *c;
	mux_t *m;

	mux_options_init(&o);
	o.reconnect = 0;
	o.health_interval_ms = 0;
	m = mux_new(1, &o, err, errlen);
	if (m == NULL || (m->ep[0].uri = strdup(name)) == NULL) {
		set_err(err, errlen, "out of memory");
		mux_free(m);
		if (wfd != rfd)
			close(wfd);
		close(rfd);
		return NULL;
	}
	c = conn_start(m, &m->ep[0], rfd, wfd, child, err, errlen);
	if (c == NULL) {
		mux_free(m);
		return NULL;
	}
	ep_swap(m, &m->ep[0], c, NULL);
	return m;
}

mux_t *
mux_open_fds(int rfd, int wfd, char *err, size_t errlen)
{
	if (rfd < 0 || wfd < 0) {
		set_err(err, errlen, "invalid file descriptors");
		errno = EBADF;
		return NULL;
	}
	return mux_wrap(rfd, wfd, 0, "fd", err, errlen);
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
	return mux_wrap(out[0], in[1], pid, "spawn", err, errlen);
}

void
mux_set_max_frame(mux_t *m, size_t bytes)
{
	unsigned i;

	if (bytes < 64)
		return;
	atomic_store(&m->max_frame, bytes);
	pthread_rwlock_rdlock(&m->eplock);
	for (i = 0; i < m->nep; i++)
		if (m->ep[i].conn != NULL)
			mc_set_max_frame(m->ep[i].conn, bytes);
	pthread_rwlock_unlock(&m->eplock);
}

int
mux_draining(mux_t *m)
{
	unsigned i, draining = 0, serving = 0;
	mc_conn *c;

	pthread_rwlock_rdlock(&m->eplock);
	for (i = 0; i < m->nep; i++) {
		c = m->ep[i].conn;
		if (c == NULL || !mc_is_open(c))
			continue;
		if (mc_is_draining(c) ||
		    atomic_load(&m->ep[i].health_draining))
			draining++;
		else
			serving++;
	}
	pthread_rwlock_unlock(&m->eplock);
	return draining > 0 && serving == 0;
}

uint64_t
mux_late_responses(mux_t *m)
{
	uint64_t v = atomic_load(&m->late_retired);
	unsigned i;

	pthread_rwlock_rdlock(&m->eplock);
	for (i = 0; i < m->nep; i++)
		if (m->ep[i].conn != NULL)
			v += mc_late(m->ep[i].conn);
	pthread_rwlock_unlock(&m->eplock);
	return v;
}

int
mux_endpoint(mux_t *m, unsigned i, mux_endpoint_info *info)
{
	mux_ep *ep;
	mc_conn *c;

	if (m == NULL || info == NULL || i >= m->nep)
		return MUX_EINVAL;
	ep = &m->ep[i];
	memset(info, 0, sizeof(*info));
	info->uri = ep->uri;
	info->calls = atomic_load(&ep->calls);
	info->connects = atomic_load(&ep->connects);
	info->connect_failures = atomic_load(&ep->connect_failures);
	pthread_rwlock_rdlock(&m->eplock);
	c = ep->conn;
	if (c != NULL && mc_is_open(c)) {
		info->connected = 1;
		info->draining = mc_is_draining(c) ||
		    atomic_load(&ep->health_draining);
		info->inflight = mc_inflight(c);
	} else if (c != NULL) {
		mc_why(c, info->why, sizeof(info->why));
	} else {
		snprintf(info->why, sizeof(info->why), "%s", ep->why);
	}
	pthread_rwlock_unlock(&m->eplock);
	return MUX_OK;
}

void
mux_get_stats(mux_t *m, mux_stats *st)
{
	mux_endpoint_info info;
	unsigned i;

	memset(st, 0, sizeof(*st));
	st->calls = atomic_load(&m->calls);
	st->retries = atomic_load(&m->retries);
	st->late = mux_late_responses(m);
	st->endpoints = m->nep;
	for (i = 0; i < m->nep; i++) {
		mux_endpoint(m, i, &info);
		st->connects += info.connects;
		st->up += info.connected && !info.draining;
	}
}

void
mux_close(mux_t *m)
{
	unsigned i;

	if (m == NULL || atomic_exchange(&m->closed, 1))
		return;
	pthread_rwlock_rdlock(&m->eplock);
	for (i = 0; i < m->nep; i++)
		if (m->ep[i].conn != NULL)
			mc_close(m->ep[i].conn);
	pthread_rwlock_unlock(&m->eplock);
	pthread_mutex_lock(&m->mu);
	m->kick = 1;
	pthread_cond_signal(&m->cv);
	pthread_cond_broadcast(&m->up_cv);
	pthread_mutex_unlock(&m->mu);
	if (!m->sup_started)
		service_parked(m, mc_now_ns());
}

void
mux_free(mux_t *m)
{
	unsigned i;
	mc_conn *c;

	if (m == NULL)
		return;
	mux_close(m);
	if (m->sup_started) {
		pthread_mutex_lock(&m->mu);
		m->stop = 1;
		pthread_cond_signal(&m->cv);
		pthread_mutex_unlock(&m->mu);
		pthread_join(m->sup, NULL);
	}
	atomic_store(&m->freeing, 1);
	pthread_mutex_lock(&m->mu);
	while (atomic_load(&m->users) > 0)
		pthread_cond_wait(&m->users_cv, &m->mu);
	pthread_mutex_unlock(&m->mu);
	/* the connections are closed: their readers complete every async
	 * call still on them (MUX_ECLOSED) and stop; wait for the last */
	for (i = 0; i < m->nep; i++) {
		c = ep_swap(m, &m->ep[i], NULL, NULL);
		if (c != NULL)
			mc_unref(c);
	}
	pthread_mutex_lock(&m->mu);
	while (m->readers > 0)
		pthread_cond_wait(&m->users_cv, &m->mu);
	pthread_mutex_unlock(&m->mu);
	service_parked(m, mc_now_ns());		/* none can be sent now */
	/* every callback runs exactly once: on the dispatcher, which drains
	 * the queue before it exits, or here */
	pthread_mutex_lock(&m->qmu);
	m->qstop = 1;
	pthread_cond_signal(&m->qcv);
	pthread_mutex_unlock(&m->qmu);
	if (m->disp_started)
		pthread_join(m->disp, NULL);
	run_list(take_queue(m));
	if (m->qfd >= 0)
		close(m->qfd);
	for (i = 0; i < m->nep; i++)
		free(m->ep[i].uri);
	free(m->ep);
	pthread_cond_destroy(&m->users_cv);
	pthread_cond_destroy(&m->qcv);
	pthread_cond_destroy(&m->up_cv);
	pthread_cond_destroy(&m->cv);
	pthread_mutex_destroy(&m->qmu);
	pthread_mutex_destroy(&m->mu);
	pthread_rwlock_destroy(&m->eplock);
	free(m);
}
