/*
 * async.c - mux_call_async and the delivery of its completions: a queue run
 * by a dispatcher thread, or by mux_dispatch on the application's thread
 * when the completion fd (an eventfd) says so. A completion that was
 * certainly not executed is sent once more elsewhere first, and one that was
 * never sent waits for a connection when the handle waits.
 *
 * Locks: m->qmu (the completion queue) and m->mu (parked calls) are leaves:
 * neither is held while calling into a connection or a callback, and they
 * are never held together.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
#include <unistd.h>

#include "handle.h"

static void *dispatch_main(void *arg);
static int start_dispatcher(mux_t *m);

/* Queue a finished call for its callback. */
void
mh_deliver(mh_async *a, int rc)
{
	mux_t *m = a->m;
	uint64_t one = 1;
	int first;

	if (rc != MUX_OK && rc != MUX_EREMOTE)
		mh_set_msg(&a->res, "%s", mux_strerror(rc));
	a->rc = rc;
	a->next = NULL;
	mh_token_set(a->tok, 0);	/* no call in flight any more */
	pthread_mutex_lock(&m->qmu);
	first = m->qhead == NULL;
	if (first)
		m->qhead = a;
	else
		m->qtail->next = a;
	m->qtail = a;
	if (m->qfd < 0 && first)	/* it sleeps only on an empty queue */
		pthread_cond_signal(&m->qcv);
	pthread_mutex_unlock(&m->qmu);
	if (m->qfd >= 0 && first && write(m->qfd, &one, sizeof(one)) < 0) {
		/* EAGAIN: already readable */
	}
}

static void async_done(mc_call *call);

/* Under the connection's lock, once the call has its msgid: whatever
 * completes it comes later, so the token can never outlive the call. */
static void
async_inserted(mc_call *call)
{
	mh_async *a = (mh_async *)call;

	mh_token_set(a->tok, mh_token(a->ep, a->gen, call->msgid));
}

/*
 * Send a on the best endpoint its attempts allow (a->try.skip), picking
 * again as mh_next_attempt says when a connection refuses it before it is
 * sent. Returns MUX_OK once it is in flight; else the reason (nothing
 * sent), with *no_endpoint set when no endpoint could be picked at all.
 */
int
mh_async_send(mux_t *m, mh_async *a, int *no_endpoint)
{
	unsigned ep, gen;
	mc_conn *c;
	int rc;

	*no_endpoint = 0;
	for (;;) {
		c = mh_pick(m, a->try.skip, &ep, &gen, &rc, NULL);
		if (c == NULL) {
			*no_endpoint = 1;
			return rc;
		}
		memset(&a->call, 0, sizeof(a->call));
		a->call.res = &a->res;
		a->call.on_done = async_done;
		a->call.deadline_ns = a->deadline;
		a->call.on_insert = a->tok != NULL ? async_inserted : NULL;
		a->ep = ep;
		a->gen = gen;
		atomic_fetch_add_explicit(&m->calls, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&m->ep[ep].calls, 1,
		    memory_order_relaxed);
		rc = mc_start(c, &a->call, a->method, a->params, a->len);
		mc_unref(c);	/* in flight, the reader keeps it alive */
		if (rc == MUX_OK)
			return MUX_OK;
		if (mh_next_attempt(m, &a->try, ep, rc, &a->res) == MH_DONE)
			return rc;
	}
}

static void
park(mux_t *m, mh_async *a)
{
	mh_token_set(a->tok, 0);	/* nothing on a server to cancel */
	a->try.skip = -1;		/* it waits for any endpoint */
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
	mh_async *a = (mh_async *)call;
	mux_t *m = a->m;
	mux_result first;
	int rc = call->rc, rc2, none, next;

	next = mh_next_attempt(m, &a->try, a->ep, rc, &a->res);
	if (next != MH_DONE) {
		first = a->res;
		memset(&a->res, 0, sizeof(a->res));
		rc2 = mh_async_send(m, a, &none);
		if (rc2 == MUX_OK) {
			if (next == MH_ELSEWHERE)
				atomic_fetch_add_explicit(&m->retries, 1,
				    memory_order_relaxed);
			mux_result_free(&first);
			return;
		}
		mux_result_free(&a->res);
		a->res = first;		/* report what happened first */
	}
	if (rc == MUX_ENOTCONN && mh_can_wait(m) && !atomic_load(&m->closed)) {
		/* never sent, and the caller chose to wait for a connection */
		mux_result_free(&a->res);
		park(m, a);
		return;
	}
	mh_deliver(a, rc);
}

static int
start_dispatcher(mux_t *m)
{
	int rc = 0;

	/* every async call passes here: no lock once the thread runs */
	if (m->qfd >= 0 || atomic_load(&m->disp_started))
		return 0;
	pthread_mutex_lock(&m->qmu);
	if (!m->disp_started) {
		rc = pthread_create(&m->disp, NULL, dispatch_main, m);
		atomic_store(&m->disp_started, rc == 0);
	}
	pthread_mutex_unlock(&m->qmu);
	return rc;
}

int
mux_call_async(mux_t *m, const char *method, const void *params, size_t len,
    mux_callback cb, void *user, int timeout_ms)
{
	return mux_call_async_token(m, method, params, len, cb, user,
	    timeout_ms, NULL);
}

int
mux_call_async_token(mux_t *m, const char *method, const void *params,
    size_t len, mux_callback cb, void *user, int timeout_ms, mux_token *tok)
{
	size_t mlen;
	mh_async *a;
	int rc, none;

	if ((rc = mh_check_args(m, method, params, len, NULL)) != MUX_OK)
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
	a->try = (mh_try)MH_TRY_INIT;
	a->m = m;
	a->cb = cb;
	a->user = user;
	a->tok = tok;
	a->method = memcpy(a->store, method, mlen + 1);
	a->params = len ? memcpy(a->store + mlen + 1, params, len) : NULL;
	a->len = len;
	if (timeout_ms > 0)
		a->deadline = dmx_now_ns() + (uint64_t)timeout_ms * 1000000u;
	mh_enter(m);
	rc = mh_async_send(m, a, &none);
	if (rc == MUX_ENOTCONN && none && mh_can_wait(m)) {
		park(m, a);	/* the supervisor sends or fails it */
		rc = MUX_OK;
	} else if (rc != MUX_OK) {
		mh_token_set(tok, 0);
		free(a);
	}
	mh_leave(m);
	return rc;
}

/* Run one completion's callback (or a notification's) and free it. */
static void
run_callback(mh_async *a)
{
	if (a->cb == NULL) {
		mux_notify_fn fn = atomic_load(&a->m->notify_fn);

		if (fn != NULL)
			fn(atomic_load(&a->m->notify_user), a->method,
			    a->params, a->len);
		free(a);
		return;
	}
	a->cb(a->user, a->rc, &a->res);
	mux_result_free(&a->res);
	free(a);
}

void
mux_set_notify(mux_t *m, mux_notify_fn fn, void *user)
{
	unsigned i;

	atomic_store(&m->notify_user, user);
	atomic_store(&m->notify_fn, fn);
	/* notifications are read as they come only by a reader thread that
	 * keeps reading while sync callers read their own answers; a
	 * connection made meanwhile reads notify_fn itself (conn_start) */
	pthread_rwlock_rdlock(&m->eplock);
	for (i = 0; i < m->nep; i++)
		if (m->ep[i].conn != NULL)
			mc_keep_reader(m->ep[i].conn, fn != NULL);
	pthread_rwlock_unlock(&m->eplock);
}

/* On a connection's reader thread: queue the notification for the
 * callback, which runs where async callbacks run (the dispatcher, or
 * mux_dispatch), in the order they arrived. */
void
mh_on_notify(void *arg, const char *method, size_t mlen,
    const uint8_t *params, size_t plen)
{
	mux_t *m = arg;
	mh_async *a;
	uint64_t one = 1;
	int first;

	if (atomic_load(&m->notify_fn) == NULL || start_dispatcher(m) != 0)
		return;
	a = malloc(sizeof(*a) + mlen + 1 + plen);
	if (a == NULL)
		return;
	memset(a, 0, sizeof(*a));
	a->m = m;
	a->method = memcpy(a->store, method, mlen);
	a->store[mlen] = '\0';
	a->params = memcpy(a->store + mlen + 1, params, plen);
	a->len = plen;
	pthread_mutex_lock(&m->qmu);
	first = m->qhead == NULL;
	if (first)
		m->qhead = a;
	else
		m->qtail->next = a;
	m->qtail = a;
	if (m->qfd < 0 && first)
		pthread_cond_signal(&m->qcv);
	pthread_mutex_unlock(&m->qmu);
	if (m->qfd >= 0 && first && write(m->qfd, &one, sizeof(one)) < 0) {
		/* EAGAIN: already readable */
	}
}

static mh_async *
take_queue(mux_t *m)
{
	mh_async *list;

	list = m->qhead;
	m->qhead = m->qtail = NULL;
	return list;
}

static int
run_list(mh_async *list)
{
	mh_async *a, *next;
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
	mh_async *list;

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
	mh_async *list;
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

/* mux_free, once no reader, caller or supervisor can queue anything: every
 * callback runs exactly once, on the dispatcher, which drains the queue
 * before it exits, or here. */
void
mh_async_finish(mux_t *m)
{
	pthread_mutex_lock(&m->qmu);
	m->qstop = 1;
	pthread_cond_signal(&m->qcv);
	pthread_mutex_unlock(&m->qmu);
	if (m->disp_started)
		pthread_join(m->disp, NULL);
	run_list(take_queue(m));
	if (m->qfd >= 0)
		close(m->qfd);
}
