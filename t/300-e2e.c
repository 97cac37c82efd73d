/*
 * 300-e2e.c - libmux against a real demuxd over one connection: results and
 * errors reach the thread that asked, under concurrency, across transports,
 * timeouts, close and server death.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

static const char *CONF =
    "workers: 100\n"
    "plugins:\n"
    "  - name: echo\n"
    "    path: @B@/plugins/echo.so\n"
    "  - name: sleep\n"
    "    path: @B@/plugins/sleep.so\n"
    "  - name: kv\n"
    "    path: @B@/plugins/kv.so\n"
    "    config: { capacity: 3 }\n"
    "  - name: faulty\n"
    "    path: @B@/t/plugins/faulty.so\n";

static mux_t *M;	/* the one connection most tests share */

static mux_t *
connect_or_bail(const char *uri)
{
	char err[MUX_ERRLEN];
	mux_t *m = mux_connect(uri, err, sizeof(err));

	if (m == NULL)
		bail_out("connect %s: %s", uri, err);
	return m;
}

/* ---- basics ---- */

static void
test_basics(void)
{
	mux_result r;
	const char *s;
	size_t sl;
	int64_t i;
	int rc, b;

	rc = mux_call(M, "$/ping", NULL, 0, &r, 5000);
	ok(rc == MUX_OK && mux_unpack(r.data, r.len, "s", &s, &sl) == MUX_OK &&
	    sl == 4 && memcmp(s, "pong", 4) == 0, "$/ping answers \"pong\"");
	mux_result_free(&r);

	rc = mux_callf(M, "echo.echo", &r, 5000, "is[b{si}]", (int64_t)-7,
	    "two", 1, "k", (int64_t)3);
	{
		int64_t a;
		const char *two;
		size_t tl;

		ok(rc == MUX_OK && mux_unpack(r.data, r.len, "[is[b*]]", &a,
		    &two, &tl, &b) == MUX_OK && a == -7 && tl == 3 &&
		    memcmp(two, "two", 3) == 0 && b == 1,
		    "echo.echo returns its params unchanged");
	}
	mux_result_free(&r);

	rc = mux_call(M, "$/methods", NULL, 0, &r, 5000);
	ok(rc == MUX_OK && r.len > 0 && memmem(r.data, r.len, "kv.del", 6) &&
	    memmem(r.data, r.len, "sleep.sleep", 11) &&
	    memmem(r.data, r.len, "faulty.big", 10), "$/methods lists every "
	    "method");
	mux_result_free(&r);
	rc = mux_call(M, "$/plugins", NULL, 0, &r, 5000);
	ok(rc == MUX_OK && memmem(r.data, r.len, "version", 7) &&
	    memmem(r.data, r.len, "1.0.0", 5) &&
	    memmem(r.data, r.len, "kv.so", 5), "$/plugins gives name, path, "
	    "version and methods");
	mux_result_free(&r);

	rc = mux_callf(M, "sleep.sleep", &r, 5000, "i", (int64_t)5);
	ok(rc == MUX_OK && mux_unpack(r.data, r.len, "i", &i) == MUX_OK &&
	    i == 5, "sleep.sleep [5] returns 5");
	mux_result_free(&r);
}

/* ---- errors ---- */

static void
expect_remote(const char *what, int rc, mux_result *r, int64_t code,
    const char *needle)
{
	ok(rc == MUX_EREMOTE && r->code == code && r->message != NULL &&
	    (needle == NULL || strstr(r->message, needle) != NULL),
	    "%s: code %lld, message '%s'", what, (long long)r->code,
	    r->message ? r->message : "(none)");
	mux_result_free(r);
}

static void
test_errors(void)
{
	mux_result r;
	int rc;

	rc = mux_call(M, "nosuch.method", NULL, 0, &r, 5000);
	expect_remote("unknown method", rc, &r, -32601, "nosuch.method");
	rc = mux_call(M, "$/nosuch", NULL, 0, &r, 5000);
	expect_remote("unknown built-in", rc, &r, -32601, NULL);
	rc = mux_callf(M, "sleep.sleep", &r, 5000, "s", "soon");
	expect_remote("bad params", rc, &r, -32602, "integer");
	rc = mux_callf(M, "kv.set", &r, 5000, "i", (int64_t)1);
	expect_remote("kv.set with a bad key", rc, &r, -32602, NULL);

	rc = mux_callf(M, "sleep.sleep", &r, 5000, "i", (int64_t)-5);
	ok(rc == MUX_EREMOTE && r.code == 1 && r.message &&
	    strstr(r.message, "-5") != NULL, "handler error: code %lld, "
	    "message '%s'", (long long)r.code, r.message ? r.message : "");
	ok(r.trace != NULL && strstr(r.trace, "sleep.so") != NULL,
	    "handler error carries the worker's backtrace as trace");
	mux_result_free(&r);

	rc = mux_call(M, "faulty.two", NULL, 0, &r, 5000);
	expect_remote("a handler packing two objects", rc, &r, -32603,
	    "exactly one");
	rc = mux_call(M, "faulty.reserved", NULL, 0, &r, 5000);
	expect_remote("a handler using a reserved code", rc, &r, -32603,
	    "-32000");
	rc = mux_call(M, "faulty.trace", NULL, 0, &r, 5000);
	ok(rc == MUX_EREMOTE && r.code == 7 && r.trace &&
	    strcmp(r.trace, "line 1\nline 2") == 0 &&
	    strcmp(r.message, "with trace 7") == 0,
	    "a handler's own trace travels as the third element");
	mux_result_free(&r);
	rc = mux_call(M, "faulty.late", NULL, 0, &r, 5000);
	expect_remote("a handler that packs then errors", rc, &r, 3,
	    "changed my mind");
	rc = mux_call(M, "faulty.none", NULL, 0, &r, 5000);
	ok(rc == MUX_OK && r.len == 1 && (unsigned char)r.data[0] == 0xc0,
	    "a handler that answers nothing returns nil");
	mux_result_free(&r);

	/* a libmux caller cannot corrupt the stream */
	rc = mux_call(M, "echo.echo", "\x01", 1, &r, 5000);
	ok(rc == MUX_EINVAL, "params that are not an array are refused "
	    "locally");
	mux_result_free(&r);
	rc = mux_call(M, "echo.echo", "\x92\x01", 2, &r, 5000);
	ok(rc == MUX_EINVAL, "truncated params are refused locally");
	mux_result_free(&r);
	rc = mux_call(M, "$/ping", NULL, 0, &r, 5000);
	ok(rc == MUX_OK, "the connection still works after all of that");
	mux_result_free(&r);
}

/* ---- kv and notifications ---- */

static void
test_kv(void)
{
	mux_result r;
	int64_t v = 0;
	int rc, b = 0, i, seen = 0;
	char *p;
	size_t pl;

	rc = mux_callf(M, "kv.set", &r, 5000, "s[ii]", "a", (int64_t)1,
	    (int64_t)2);
	ok(rc == MUX_OK && mux_unpack(r.data, r.len, "b", &b) == 0 && b,
	    "kv.set returns true");
	mux_result_free(&r);
	rc = mux_callf(M, "kv.get", &r, 5000, "s", "a");
	{
		int64_t x, y;

		ok(rc == MUX_OK && mux_unpack(r.data, r.len, "[ii]", &x, &y) ==
		    0 && x == 1 && y == 2, "kv.get returns the stored value");
	}
	mux_result_free(&r);
	rc = mux_callf(M, "kv.get", &r, 5000, "s", "missing");
	ok(rc == MUX_OK && mux_unpack(r.data, r.len, "n") == 0,
	    "kv.get of a missing key returns nil");
	mux_result_free(&r);

	/* a notification is executed but never answered */
	mux_pack(&p, &pl, "[si]", "n", (int64_t)42);
	rc = mux_notify(M, "kv.set", p, pl);
	free(p);
	ok(rc == MUX_OK, "mux_notify sends");
	/* it runs on another worker: ask until it has (bounded, no sleep) */
	for (i = 0; i < 100000 && !seen; i++) {
		rc = mux_callf(M, "kv.get", &r, 5000, "s", "n");
		seen = rc == MUX_OK && mux_unpack(r.data, r.len, "i", &v) == 0 &&
		    v == 42;
		mux_result_free(&r);
	}
	ok(seen, "the notification kv.set [\"n\", 42] took effect");
	rc = mux_notify(M, "nosuch.method", NULL, 0);
	rc = mux_call(M, "$/ping", NULL, 0, &r, 5000);
	ok(rc == MUX_OK, "a notification to an unknown method gets no answer "
	    "and harms nothing");
	mux_result_free(&r);

	rc = mux_callf(M, "kv.set", &r, 5000, "si", "c", (int64_t)3);
	mux_result_free(&r);
	rc = mux_callf(M, "kv.set", &r, 5000, "si", "d", (int64_t)4);
	expect_remote("kv.set past capacity 3", rc, &r, 1, "full");
	rc = mux_callf(M, "kv.del", &r, 5000, "s", "a");
	ok(rc == MUX_OK && mux_unpack(r.data, r.len, "b", &b) == 0 && b,
	    "kv.del of a present key returns true");
	mux_result_free(&r);
	rc = mux_callf(M, "kv.del", &r, 5000, "s", "a");
	ok(rc == MUX_OK && mux_unpack(r.data, r.len, "b", &b) == 0 && !b,
	    "kv.del of an absent key returns false");
	mux_result_free(&r);
	rc = mux_callf(M, "kv.set", &r, 5000, "si", "d", (int64_t)4);
	ok(rc == MUX_OK, "after a delete there is room again");
	mux_result_free(&r);
}

/* ---- many threads, one connection ---- */

#define NTHREADS 64
#define NCALLS 2000

static atomic_int mismatches, failures;

static void *
hammer(void *arg)
{
	long id = (long)arg;
	char payload[600], *params;
	size_t plen, len;
	mux_result r;
	int64_t tid, seq;
	const char *s;
	int n, rc;

	for (n = 0; n < NCALLS; n++) {
		/* each call's payload is its own: thread, sequence, and a
		 * length that varies */
		len = (size_t)((id * 131 + n * 17) % 500) + 1;
		memset(payload, 'a' + (int)((id + n) % 26), len);
		mux_pack(&params, &plen, "[iiS]", (int64_t)id, (int64_t)n,
		    payload, len);
		rc = mux_call(M, "echo.echo", params, plen, &r, 30000);
		free(params);
		if (rc != MUX_OK) {
			if (atomic_fetch_add(&failures, 1) < 3)
				diag("thread %ld call %d: %s (%s)", id, n,
				    mux_strerror(rc), r.message ? r.message : "");
		} else if (mux_unpack(r.data, r.len, "[iis]", &tid, &seq, &s,
		    &plen) != 0 || tid != id || seq != n || plen != len ||
		    memcmp(s, payload, len) != 0) {
			atomic_fetch_add(&mismatches, 1);
		}
		mux_result_free(&r);
	}
	return NULL;
}

static void
test_many_threads(void)
{
	pthread_t th[NTHREADS];
	double t0, dt;
	long i;

	t0 = t_now_ms();
	for (i = 0; i < NTHREADS; i++)
		pthread_create(&th[i], NULL, hammer, (void *)i);
	for (i = 0; i < NTHREADS; i++)
		pthread_join(th[i], NULL);
	dt = t_now_ms() - t0;
	check_int(atomic_load(&failures), ==, 0, "%d threads x %d calls on one "
	    "connection: no call failed", NTHREADS, NCALLS);
	check_int(atomic_load(&mismatches), ==, 0, "every response reached the "
	    "thread that asked, with its own payload");
	diag("%d calls in %.0f ms (%.0f calls/s)", NTHREADS * NCALLS, dt,
	    NTHREADS * NCALLS / (dt / 1000));
}

/* ---- concurrency of the pool ---- */

static atomic_int sleep_ok;

static void *
sleeper(void *arg)
{
	mux_result r;
	int64_t v;

	(void)arg;
	if (mux_callf(M, "sleep.sleep", &r, 30000, "i", (int64_t)200) ==
	    MUX_OK && mux_unpack(r.data, r.len, "i", &v) == 0 && v == 200)
		atomic_fetch_add(&sleep_ok, 1);
	mux_result_free(&r);
	return NULL;
}

static void
test_parallel_sleeps(void)
{
	pthread_t th[100];
	double t0, dt;
	int i;

	t0 = t_now_ms();
	for (i = 0; i < 100; i++)
		pthread_create(&th[i], NULL, sleeper, NULL);
	for (i = 0; i < 100; i++)
		pthread_join(th[i], NULL);
	dt = t_now_ms() - t0;
	check_int(atomic_load(&sleep_ok), ==, 100, "100 concurrent "
	    "sleep.sleep [200] all return 200");
	ok(dt < 100 * 200 / 4, "...in %.0f ms with 100 workers, far less than "
	    "the 20000 ms of running them one by one", dt);
}

/* ---- big payloads ---- */

static void
test_big(void)
{
	size_t n = 3u << 20, sl;
	char *big = malloc(n), *params;
	size_t plen;
	const char *s;
	mux_result r;
	int rc;

	memset(big, 'z', n);
	big[n / 2] = 'y';
	mux_pack(&params, &plen, "[S]", big, n);
	rc = mux_call(M, "echo.echo", params, plen, &r, 30000);
	ok(rc == MUX_OK && mux_unpack(r.data, r.len, "[s]", &s, &sl) == 0 &&
	    sl == n && memcmp(s, big, n) == 0, "a 3 MiB payload echoes intact");
	mux_result_free(&r);
	free(params);
	free(big);
	rc = mux_callf(M, "faulty.big", &r, 30000, "i", (int64_t)(5u << 20));
	ok(rc == MUX_OK && r.len > (5u << 20), "a 5 MiB result arrives");
	mux_result_free(&r);
}

/* ---- timeouts ---- */

static void
test_timeout(void)
{
	mux_result r;
	double t0, dt;
	int rc, i;

	t0 = t_now_ms();
	rc = mux_callf(M, "sleep.sleep", &r, 100, "i", (int64_t)600);
	dt = t_now_ms() - t0;
	ok(rc == MUX_ETIMEDOUT && r.message != NULL, "a call past its timeout "
	    "returns MUX_ETIMEDOUT (%s)", r.message ? r.message : "");
	ok(dt >= 90 && dt < 500, "...after its 100 ms (%.0f ms), not the "
	    "handler's 600", dt);
	mux_result_free(&r);
	rc = mux_call(M, "$/ping", NULL, 0, &r, 5000);
	ok(rc == MUX_OK, "the connection still serves other calls");
	mux_result_free(&r);
	/* the late response arrives ~500 ms later and must be dropped */
	for (i = 0; i < 300 && mux_late_responses(M) == 0; i++) {
		struct timespec ts = { 0, 10 * 1000000L };

		nanosleep(&ts, NULL);	/* polling a counter: no event exists */
	}
	check_int(mux_late_responses(M), ==, 1, "the late response was "
	    "recognised and dropped");
	rc = mux_call(M, "$/ping", NULL, 0, &r, 5000);
	ok(rc == MUX_OK, "...and the connection is fine after it");
	mux_result_free(&r);
}

/* ---- close and death ---- */

typedef struct waiter {
	mux_t	*m;
	int	 rc;
	double	 done_ms;
	char	 msg[MUX_ERRLEN];
} waiter;

static atomic_int started;

static void *
waiter_main(void *arg)
{
	waiter *w = arg;
	mux_result r;

	atomic_fetch_add(&started, 1);
	w->rc = mux_callf(w->m, "sleep.sleep", &r, 0, "i", (int64_t)8000);
	w->done_ms = t_now_ms();
	snprintf(w->msg, sizeof(w->msg), "%s", r.message ? r.message : "");
	mux_result_free(&r);
	return NULL;
}

/* Start n waiters on m and wait until they are all (almost certainly) in
 * flight: the server has answered a ping sent after them. */
static void
start_waiters(mux_t *m, waiter *w, pthread_t *th, int n)
{
	mux_result r;
	int i;

	atomic_store(&started, 0);
	for (i = 0; i < n; i++) {
		w[i].m = m;
		pthread_create(&th[i], NULL, waiter_main, &w[i]);
	}
	while (atomic_load(&started) < n)
		sched_yield();
	mux_call(m, "$/ping", NULL, 0, &r, 5000);
	mux_result_free(&r);
}

static void
test_close(void)
{
	char err[MUX_ERRLEN];
	mux_t *m;
	waiter w[8];
	pthread_t th[8];
	mux_result r;
	double t0;
	int i, all = 1, fast = 1, rc;
	t_server s2;

	(void)err;
	m = connect_or_bail(getenv("T_URI"));
	start_waiters(m, w, th, 8);
	t0 = t_now_ms();
	mux_close(m);
	for (i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		all &= w[i].rc == MUX_ECLOSED;
		fast &= w[i].done_ms - t0 < 2000;
	}
	ok(all, "mux_close wakes every waiting caller with MUX_ECLOSED");
	ok(fast, "...promptly, not after the handlers' 8 s");
	rc = mux_call(m, "$/ping", NULL, 0, &r, 5000);
	ok(rc == MUX_ECLOSED, "later calls fail with MUX_ECLOSED");
	mux_result_free(&r);
	mux_free(m);

	/* a server that dies under waiting callers */
	if (t_server_start(&s2, CONF, NULL) != 0)
		bail_out("second server");
	m = connect_or_bail(s2.uri);
	start_waiters(m, w, th, 8);
	t0 = t_now_ms();
	t_server_kill(&s2);
	all = fast = 1;
	for (i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		all &= w[i].rc == MUX_ECONN;
		fast &= w[i].done_ms - t0 < 2000;
	}
	ok(all, "demuxd killed: every waiting caller gets MUX_ECONN (%s)",
	    w[0].msg);
	ok(fast && strstr(w[0].msg, "unknown") != NULL, "...promptly, and the "
	    "error says the effect is unknown");
	rc = mux_call(m, "$/ping", NULL, 0, &r, 5000);
	ok(rc == MUX_ENOTCONN, "later calls fail fast with MUX_ENOTCONN (not sent)");
	mux_result_free(&r);
	mux_free(m);
}

/* ---- other transports ---- */

static atomic_int tr_ok;

static void *
transport_worker(void *arg)
{
	mux_t *m = arg;
	mux_result r;
	int64_t v;
	int i;

	for (i = 0; i < 200; i++) {
		if (mux_callf(m, "echo.echo", &r, 10000, "i", (int64_t)i) ==
		    MUX_OK && mux_unpack(r.data, r.len, "[i]", &v) == 0 &&
		    v == i)
			atomic_fetch_add(&tr_ok, 1);
		mux_result_free(&r);
	}
	return NULL;
}

static int
run_transport(mux_t *m)
{
	pthread_t th[8];
	int i;

	atomic_store(&tr_ok, 0);
	for (i = 0; i < 8; i++)
		pthread_create(&th[i], NULL, transport_worker, m);
	for (i = 0; i < 8; i++)
		pthread_join(th[i], NULL);
	return atomic_load(&tr_ok);
}

static void
test_transports(const char *conf)
{
	char err[MUX_ERRLEN], yaml[2048], uri[64];
	char *argv[] = { (char *)t_build("demuxd"), "--stdio", "-q", "-c",
	    (char *)conf, NULL };
	t_server s3;
	mux_t *m;
	int port, rc;

	m = mux_spawn(argv, err, sizeof(err));
	ok(m != NULL, "mux_spawn starts demuxd --stdio (%s)", m ? "" : err);
	if (m != NULL) {
		check_int(run_transport(m), ==, 1600, "stdio: 8 threads x 200 "
		    "calls over the child's pipe pair");
		mux_free(m);
		ok(1, "mux_free closes the pipes and reaps the child");
	}
	{
		char *bad[] = { "/nonexistent/demuxd", "--stdio", NULL };

		m = mux_spawn(bad, err, sizeof(err));
		ok(m == NULL && strstr(err, "nonexistent") != NULL,
		    "mux_spawn of a missing program fails with a reason: %s",
		    m ? "" : err);
	}

	/* tcp on a loopback port picked from our pid (retry a few), on IPv4
	 * and IPv6 loopback when the machine has IPv6 */
	port = 20000 + getpid() % 20000;
	for (rc = -1; port < 65000; port += 997) {
		snprintf(yaml, sizeof(yaml), "listen: [ \"tcp:127.0.0.1:%d\", "
		    "\"tcp:[::1]:%d\" ]\n%s", port, port, CONF);
		if ((rc = t_server_start(&s3, yaml, NULL)) == 0)
			break;
		snprintf(yaml, sizeof(yaml), "listen: [ \"tcp:127.0.0.1:%d\" ]"
		    "\n%s", port, CONF);
		if ((rc = t_server_start(&s3, yaml, NULL)) == 0) {
			diag("no IPv6 loopback here: tcp:[::1] not tested");
			break;
		}
	}
	if (rc != 0) {
		ok(0, "a tcp server could be started");
		return;
	}
	snprintf(uri, sizeof(uri), "tcp:127.0.0.1:%d", port);
	m = mux_connect(uri, err, sizeof(err));
	ok(m != NULL, "mux_connect %s (%s)", uri, m ? "ok" : err);
	if (m != NULL) {
		check_int(run_transport(m), ==, 1600, "tcp: 8 threads x 200 "
		    "calls on one connection");
		mux_free(m);
	}
	if (strstr(yaml, "[::1]") != NULL) {
		snprintf(uri, sizeof(uri), "tcp:[::1]:%d", port);
		m = mux_connect(uri, err, sizeof(err));
		ok(m != NULL, "mux_connect %s (%s)", uri, m ? "ok" : err);
		if (m != NULL) {
			check_int(run_transport(m), ==, 1600, "tcp over IPv6: "
			    "8 threads x 200 calls on one connection");
			mux_free(m);
		}
	}
	check_int(t_server_stop(&s3), ==, 0, "tcp server stops cleanly");
	m = mux_connect("unix:/nonexistent/x.sock", err, sizeof(err));
	ok(m == NULL && strstr(err, "No such file") != NULL, "connecting to a "
	    "missing socket fails with a reason: %s", err);
}

int
main(void)
{
	t_server s;
	int st;

	t_watchdog(240);
	if (t_server_start(&s, CONF, NULL) != 0)
		bail_out("cannot start demuxd");
	setenv("T_URI", s.uri, 1);
	M = connect_or_bail(s.uri);

	test_basics();
	test_errors();
	test_kv();
	test_many_threads();
	test_parallel_sleeps();
	test_big();
	test_timeout();
	test_close();
	test_transports(s.conf);

	mux_free(M);
	st = t_server_stop(&s);
	check_int(st, ==, 0, "demuxd stops cleanly on SIGTERM%s",
	    getenv("DEMUX_VALGRIND") ? " (and valgrind found no leak)" : "");
	done_testing();
	return exit_status();
}
