/*
 * 302-e2e-lifecycle.c - a libmux connection's life: timeouts and the late
 * answers they leave, mux_close under waiting callers, a server that dies
 * under them, and the other transports (a spawned child's pipes, TCP over
 * IPv4 and IPv6).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "e2e.h"

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
	check_int(rc, ==, MUX_ETIMEDOUT, "a call past its timeout returns "
	    "MUX_ETIMEDOUT (%s)", r.message ? r.message : "");
	ok(dt >= 90 && dt < 500, "...after its 100 ms (%.0f ms), not the "
	    "handler's 600", dt);
	mux_result_free(&r);
	rc = mux_call(M, "$/ping", NULL, 0, &r, 5000);
	check_int(rc, ==, MUX_OK, "the connection still serves other calls");
	mux_result_free(&r);
	/* the late response arrives ~500 ms later and must be dropped */
	for (i = 0; i < 300 && mux_late_responses(M) == 0; i++) {
		struct timespec ts = { 0, 10 * 1000000L };

		nanosleep(&ts, NULL);	/* polling a counter: no event exists */
	}
	check_int(mux_late_responses(M), ==, 1, "the late response was "
	    "recognised and dropped");
	rc = mux_call(M, "$/ping", NULL, 0, &r, 5000);
	check_int(rc, ==, MUX_OK, "...and the connection is fine after it");
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
	check_int(rc, ==, MUX_ECLOSED, "later calls fail with MUX_ECLOSED");
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
	ok(fast, "...promptly");
	ok(strstr(w[0].msg, "unknown") != NULL, "...and the error says the "
	    "effect is unknown: %s", w[0].msg);
	rc = mux_call(m, "$/ping", NULL, 0, &r, 5000);
	check_int(rc, ==, MUX_ENOTCONN, "later calls fail fast with "
	    "MUX_ENOTCONN (not sent)");
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

/* Our children, zombies included, over every thread (/proc). */
static int
children(void)
{
	char path[64], buf[4096];
	struct dirent *de;
	DIR *d = opendir("/proc/self/task");
	int n = 0;
	FILE *f;
	char *p;

	while (d != NULL && (de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%.20s/children",
		    de->d_name);
		if ((f = fopen(path, "r")) == NULL)
			continue;
		if (fgets(buf, sizeof(buf), f) != NULL)
			for (p = strtok(buf, " \n"); p; p = strtok(NULL, " \n"))
				n++;
		fclose(f);
	}
	if (d != NULL)
		closedir(d);
	return n;
}

static void
test_transports(const char *conf)
{
	char err[MUX_ERRLEN], yaml[2048], uri[64];
	char *argv[] = { (char *)t_build("demuxd"), "--stdio", "-q", "-c",
	    (char *)conf, NULL };
	t_server s3;
	mux_t *m;
	int port, rc, before;

	before = children();
	m = mux_spawn(argv, err, sizeof(err));
	ok(m != NULL, "mux_spawn starts demuxd --stdio (%s)", m ? "" : err);
	if (m != NULL) {
		check_int(children(), ==, before + 1, "...as our child");
		check_int(run_transport(m), ==, 1600, "stdio: 8 threads x 200 "
		    "calls over the child's pipe pair");
		mux_free(m);
		check_int(children(), ==, before, "mux_free closes the pipes "
		    "and reaps the child (no zombie left)");
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

static void
tests(t_server *s)
{
	test_timeout();
	test_close();
	test_transports(s->conf);
}

int
main(void)
{
	return e2e_main(tests);
}
