/*
 * 340-async.c - mux_call_async: every callback runs exactly once, never on
 * the caller's stack, with the right answer; calls that cannot start return
 * their error and never call back; timeouts, remote errors, mux_close and a
 * dead server each reach the callback; callbacks may call libmux; and the
 * completion-fd mode drives everything from one epoll loop with no libmux
 * thread running callbacks.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

#define THREADS	8
#define PER	2000
#define TOTAL	(THREADS * PER)

static mux_t *M;
static __thread int on_caller;		/* set while a caller is inside */
static atomic_uchar seen[TOTAL];
static atomic_int wrong, on_stack, done_count;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

static void
count_done(void)
{
	pthread_mutex_lock(&mu);
	atomic_fetch_add(&done_count, 1);
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
}

/* Wait until done_count reaches n (a real signal: the callbacks'). */
static int
wait_done(int n, int ms)
{
	struct timespec ts;
	int ok_ = 1;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&mu);
	while (atomic_load(&done_count) < n && ok_)
		ok_ = pthread_cond_timedwait(&cv, &mu, &ts) == 0;
	pthread_mutex_unlock(&mu);
	return atomic_load(&done_count) >= n;
}

static void
echo_cb(void *user, int rc, mux_result *res)
{
	uintptr_t want = (uintptr_t)user;
	int64_t got;

	if (on_caller)
		atomic_fetch_add(&on_stack, 1);
	if (rc != MUX_OK || mux_unpack(res->data, res->len, "[i]", &got) != 0 ||
	    (uintptr_t)got != want)
		atomic_fetch_add(&wrong, 1);
	if (want < TOTAL)
		atomic_fetch_add(&seen[want], 1);
	count_done();
}

static void *
caller(void *arg)
{
	uintptr_t base = (uintptr_t)arg * PER, i;
	char *p;
	size_t n;
	int rc;

	on_caller = 1;
	for (i = 0; i < PER; i++) {
		mux_pack(&p, &n, "[i]", (int64_t)(base + i));
		rc = mux_call_async(M, "echo.echo", p, n, echo_cb,
		    (void *)(base + i), 10000);
		free(p);
		if (rc != MUX_OK) {
			atomic_fetch_add(&wrong, 1);
			atomic_fetch_add(&seen[base + i], 1);
			count_done();
		}
	}
	on_caller = 0;
	return NULL;
}

/* ---- results of single calls ---- */

typedef struct one {
	int	 rc;
	int64_t	 code;
	char	*message;
	double	 at;
	int	 calls;
} one;

static void
one_cb(void *user, int rc, mux_result *res)
{
	one *o = user;

	o->rc = rc;
	o->code = res->code;
	o->message = res->message;	/* taken: libmux frees the rest */
	res->message = NULL;
	o->at = t_now_ms();
	o->calls++;
	count_done();
}

/* ---- callbacks that call libmux ---- */

static atomic_int chain_left, chain_sync_ok;

static void
chain_cb(void *user, int rc, mux_result *res)
{
	mux_result r;

	(void)user;
	(void)res;
	/* a blocking call from a callback: the reader keeps reading */
	if (rc == MUX_OK && mux_callf(M, "echo.echo", &r, 5000, "s", "x") ==
	    MUX_OK)
		atomic_fetch_add(&chain_sync_ok, 1);
	mux_result_free(&r);
	mux_notify(M, "echo.echo", NULL, 0);
	if (atomic_fetch_sub(&chain_left, 1) > 1 &&
	    mux_call_async(M, "echo.echo", NULL, 0, chain_cb, NULL, 5000) ==
	    MUX_OK)
		return;
	count_done();
}

/* ---- the completion-fd mode ---- */

static pthread_t main_thread;
static atomic_int off_main, poll_done;

static void
poll_cb(void *user, int rc, mux_result *res)
{
	(void)user;
	(void)res;
	if (!pthread_equal(pthread_self(), main_thread))
		atomic_fetch_add(&off_main, 1);
	if (rc == MUX_OK)
		atomic_fetch_add(&poll_done, 1);
	else
		atomic_fetch_add(&wrong, 1);
}

static atomic_int closed_cb;

static void
closed_count(void *user, int rc, mux_result *res)
{
	(void)user;
	(void)res;
	if (rc == MUX_ECLOSED)
		atomic_fetch_add(&closed_cb, 1);
}

int
main(void)
{
	pthread_t th[THREADS];
	char err[MUX_ERRLEN];
	mux_options o;
	mux_stats st;
	t_server s;
	one o1, o2, oc[10];
	int i, n, rc, bad, ep, dispatched, loops;
	struct epoll_event ev;
	double t0, tk;
	mux_t *P;

	t_watchdog(120);
	main_thread = pthread_self();
	if (t_server_start(&s, "workers: 16\nplugins:\n"
	    "  - name: echo\n    path: @B@/plugins/echo.so\n"
	    "  - name: sleep\n    path: @B@/plugins/sleep.so\n", NULL) != 0)
		bail_out("cannot start demuxd");
	M = mux_connect(s.uri, err, sizeof(err));
	if (M == NULL)
		bail_out("connect: %s", err);

	/* many threads, many calls, one connection */
	t0 = t_now_ms();
	for (i = 0; i < THREADS; i++)
		pthread_create(&th[i], NULL, caller, (void *)(uintptr_t)i);
	for (i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	n = wait_done(TOTAL, 30000);
	ok(n, "%d async calls from %d threads all called back (%.0f ms)",
	    TOTAL, THREADS, t_now_ms() - t0);
	for (i = 0, bad = 0; i < TOTAL; i++)
		bad += atomic_load(&seen[i]) != 1;
	check_int(bad, ==, 0, "each callback ran exactly once");
	check_int(atomic_load(&wrong), ==, 0, "each got its own answer");
	check_int(atomic_load(&on_stack), ==, 0,
	    "no callback ran on a caller's stack");
	mux_get_stats(M, &st);
	check_int(st.calls, >=, TOTAL, "the handle counted the calls");

	/* calls that cannot start: an error now, no callback ever */
	atomic_store(&done_count, 0);
	rc = mux_call_async(M, "echo.echo", "\x01", 1, echo_cb, NULL, 0);
	check_int(rc, ==, MUX_EINVAL, "params not an array: MUX_EINVAL");
	rc = mux_call_async(M, "echo.echo", NULL, 0, NULL, NULL, 0);
	check_int(rc, ==, MUX_EINVAL, "no callback: MUX_EINVAL");

	/* a remote error and a timeout reach their callbacks */
	memset(&o1, 0, sizeof(o1));
	memset(&o2, 0, sizeof(o2));
	{
		char *p;
		size_t len;

		mux_pack(&p, &len, "[i]", (int64_t)-1);
		rc = mux_call_async(M, "sleep.sleep", p, len, one_cb, &o1,
		    5000);
		free(p);
		ok(rc == MUX_OK, "failing call started");
		mux_pack(&p, &len, "[i]", (int64_t)2000);
		t0 = t_now_ms();
		rc = mux_call_async(M, "sleep.sleep", p, len, one_cb, &o2, 100);
		free(p);
		ok(rc == MUX_OK, "slow call with a 100 ms timeout started");
	}
	ok(wait_done(2, 10000), "both called back");
	ok(o1.rc == MUX_EREMOTE && o1.code == 1 && o1.message &&
	    strstr(o1.message, "negative"), "remote error: code %lld, '%s'",
	    (long long)o1.code, o1.message ? o1.message : "");
	ok(o2.rc == MUX_ETIMEDOUT && o2.at - t0 >= 95 && o2.at - t0 < 1000,
	    "timeout: MUX_ETIMEDOUT after %.0f ms, message '%s'", o2.at - t0,
	    o2.message ? o2.message : "");
	ok(o1.calls == 1 && o2.calls == 1, "each exactly once");
	free(o1.message);
	free(o2.message);

	/* cancelling an async call: the request and the cancel leave on one
	 * stream in that order, so the server always knows the call */
	{
		mux_token tok = MUX_TOKEN_INIT;
		one oc1;

		memset(&oc1, 0, sizeof(oc1));
		atomic_store(&done_count, 0);
		t0 = t_now_ms();
		rc = mux_call_async_token(M, "sleep.sleep", "\x91\xcd\x0b\xb8",
		    4, one_cb, &oc1, 0, &tok);
		ok(rc == MUX_OK && tok.opaque != 0, "async call with a token "
		    "started; the token names it");
		rc = mux_cancel(M, &tok);
		n = wait_done(1, 5000);
		ok(rc == MUX_OK && n && oc1.rc == MUX_EREMOTE &&
		    oc1.code == -32800, "mux_cancel: called back -32800 after "
		    "%.0f ms, not the 3 s sleep (%s)", oc1.at - t0,
		    oc1.message ? oc1.message : "");
		ok(tok.opaque == 0 && mux_cancel(M, &tok) == MUX_EINVAL,
		    "the token was cleared before the callback");
		free(oc1.message);
		rc = mux_call_async_token(M, "echo.echo", "\x01", 1, one_cb,
		    &oc1, 0, &tok);
		ok(rc == MUX_EINVAL && tok.opaque == 0,
		    "a call that does not start leaves the token empty");
	}

	/* callbacks calling libmux: a chain of 200, each making a blocking
	 * call, a notification and the next async call */
	atomic_store(&done_count, 0);
	atomic_store(&chain_left, 200);
	rc = mux_call_async(M, "echo.echo", NULL, 0, chain_cb, NULL, 5000);
	n = rc == MUX_OK && wait_done(1, 30000);
	ok(n && atomic_load(&chain_sync_ok) == 200, "200 chained callbacks, "
	    "each with a blocking call: %d ok", atomic_load(&chain_sync_ok));

	/* mux_close: calls in flight called back with MUX_ECLOSED, once */
	atomic_store(&done_count, 0);
	memset(oc, 0, sizeof(oc));
	for (i = 0; i < 10; i++) {
		char *p;
		size_t len;

		mux_pack(&p, &len, "[i]", (int64_t)3000);
		mux_call_async(M, "sleep.sleep", p, len, one_cb, &oc[i], 0);
		free(p);
	}
	tk = t_now_ms();
	mux_close(M);
	n = wait_done(10, 5000);
	ok(n, "mux_close: 10 callbacks in %.0f ms", t_now_ms() - tk);
	for (i = 0, bad = 0; i < 10; i++) {
		bad += oc[i].rc != MUX_ECLOSED || oc[i].calls != 1;
		free(oc[i].message);
	}
	check_int(bad, ==, 0, "each MUX_ECLOSED, exactly once");
	rc = mux_call_async(M, "echo.echo", NULL, 0, one_cb, &o1, 0);
	check_int(rc, ==, MUX_ECLOSED, "after mux_close: MUX_ECLOSED at once");
	ok(mux_completion_fd(M) == -1, "no completion fd without the option");
	mux_free(M);

	/* the completion-fd mode: one epoll loop, callbacks on this thread */
	mux_options_init(&o);
	o.completion_fd = 1;
	P = mux_open(s.uri, &o, err, sizeof(err));
	if (P == NULL)
		bail_out("mux_open: %s", err);
	ok(mux_completion_fd(P) >= 0, "completion fd %d", mux_completion_fd(P));
	ep = epoll_create1(EPOLL_CLOEXEC);
	ev.events = EPOLLIN;
	ev.data.fd = mux_completion_fd(P);
	epoll_ctl(ep, EPOLL_CTL_ADD, ev.data.fd, &ev);
	atomic_store(&wrong, 0);
	for (i = 0; i < 5000; i++)
		if (mux_call_async(P, "echo.echo", "\x91\x01", 2, poll_cb, NULL,
		    10000) != MUX_OK)
			atomic_fetch_add(&wrong, 1);
	dispatched = loops = 0;
	t0 = t_now_ms();
	while (dispatched < 5000 && t_now_ms() - t0 < 30000) {
		n = epoll_wait(ep, &ev, 1, 1000);
		if (n == 1) {
			dispatched += mux_dispatch(P);
			loops++;
		}
	}
	check_int(dispatched, ==, 5000, "5000 completions through epoll + "
	    "mux_dispatch (%d wake-ups)", loops);
	check_int(atomic_load(&poll_done), ==, 5000, "all succeeded");
	check_int(atomic_load(&off_main), ==, 0,
	    "every callback ran on the dispatching thread");
	check_int(mux_dispatch(P), ==, 0, "nothing left to dispatch");
	/* mux_free runs what was never dispatched, once, with MUX_ECLOSED */
	for (i = 0; i < 5; i++)
		mux_call_async(P, "sleep.sleep", "\x91\xcd\x0b\xb8", 4,
		    closed_count, NULL, 0);
	mux_free(P);
	check_int(atomic_load(&closed_cb), ==, 5, "mux_free called back the "
	    "5 undispatched calls with MUX_ECLOSED");
	close(ep);

	/* a dead server: calls in flight fail with MUX_ECONN, effect unknown */
	M = mux_connect(s.uri, err, sizeof(err));
	if (M == NULL)
		bail_out("connect: %s", err);
	atomic_store(&done_count, 0);
	memset(oc, 0, sizeof(oc));
	for (i = 0; i < 10; i++)
		mux_call_async(M, "sleep.sleep", "\x91\xcd\x0b\xb8", 4, one_cb,
		    &oc[i], 0);
	/* all 10 were read and dispatched once a ping after them returns */
	{
		mux_result r;

		mux_call(M, "$/ping", NULL, 0, &r, 5000);
		mux_result_free(&r);
	}
	tk = t_now_ms();
	t_server_kill(&s);
	n = wait_done(10, 5000);
	ok(n, "demuxd killed: 10 callbacks in %.0f ms", t_now_ms() - tk);
	for (i = 0, bad = 0; i < 10; i++) {
		bad += oc[i].rc != MUX_ECONN || oc[i].calls != 1 ||
		    oc[i].message == NULL || !strstr(oc[i].message, "unknown");
		if (i == 0)
			diag("message: %s", oc[i].message ? oc[i].message : "");
		free(oc[i].message);
	}
	check_int(bad, ==, 0, "each MUX_ECONN (effect unknown), exactly once");
	rc = mux_call_async(M, "echo.echo", NULL, 0, one_cb, &o1, 0);
	check_int(rc, ==, MUX_ENOTCONN, "then MUX_ENOTCONN at once, not sent");
	mux_free(M);
	done_testing();
	return 0;
}
