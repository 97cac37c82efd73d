/*
 * 360-failover.c - one handle over three demuxd, 32 threads calling without
 * pause: one server is killed and restarted, another drained (SIGTERM) and
 * restarted. Callers see only documented errors (MUX_ECONN for calls that
 * were on the killed server, nothing at all for the drain), nothing hangs,
 * no answer reaches the wrong caller, and the load moves back to each
 * server when it returns. Also: a call answered -32010 is retried once on
 * another endpoint. The figures go to the TAP log.
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

#define THREADS	32
#define NEP	3

static mux_t *M;
static atomic_int stop;
static atomic_long n_ok, n_econn, n_other, n_wrong, n_calls;
static atomic_long phase_err[8];
static atomic_int phase;
static atomic_long last_err_us;		/* when the latest error came back */

static void *
caller(void *arg)
{
	long tid = (long)arg, seq = 0;
	int64_t a, b;
	mux_result r;
	int rc, ph;

	while (!atomic_load(&stop)) {
		seq++;
		ph = atomic_load(&phase);
		if (seq % 2)
			rc = mux_callf(M, "echo.echo", &r, 10000, "ii",
			    (int64_t)tid, (int64_t)seq);
		else
			rc = mux_callf(M, "sleep.sleep", &r, 10000, "i",
			    (int64_t)2);
		atomic_fetch_add(&n_calls, 1);
		if (rc == MUX_OK) {
			atomic_fetch_add(&n_ok, 1);
			if (seq % 2 ? mux_unpack(r.data, r.len, "[ii]", &a, &b)
			    != 0 || a != tid || b != seq :
			    mux_unpack(r.data, r.len, "i", &a) != 0 || a != 2)
				atomic_fetch_add(&n_wrong, 1);
		} else {
			if (rc == MUX_ECONN)
				atomic_fetch_add(&n_econn, 1);
			else {
				atomic_fetch_add(&n_other, 1);
				diag("unexpected: %s (%d): %s", mux_strerror(rc),
				    rc, r.message ? r.message : "");
			}
			atomic_fetch_add(&phase_err[ph], 1);
			atomic_store(&last_err_us, (long)(t_now_ms() * 1000));
		}
		mux_result_free(&r);
	}
	return NULL;
}

static atomic_int acount, abad;
static pthread_mutex_t amu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t acv = PTHREAD_COND_INITIALIZER;

static void
acb(void *user, int rc, mux_result *r)
{
	int64_t v;

	(void)user;
	pthread_mutex_lock(&amu);
	if (rc == MUX_OK && mux_unpack(r->data, r->len, "i", &v) == 0 && v == 5)
		atomic_fetch_add(&acount, 1);
	else
		atomic_fetch_add(&abad, 1);
	pthread_cond_signal(&acv);
	pthread_mutex_unlock(&amu);
}

static atomic_long n_over, n_notconn;

/* 20 slow calls in a row, counting -32010 answers. */
static void *
over_caller(void *arg)
{
	mux_result r;
	int k, rc;

	(void)arg;
	for (k = 0; k < 20; k++) {
		rc = mux_callf(M, "sleep.sleep", &r, 10000, "i", (int64_t)5);
		if (rc == MUX_EREMOTE && r.code == -32010)
			atomic_fetch_add(&n_over, 1);
		if (rc == MUX_ENOTCONN)
			atomic_fetch_add(&n_notconn, 1);
		mux_result_free(&r);
	}
	return NULL;
}

/* Calls the handle sent to each endpoint so far. */
static void
snap(uint64_t *calls)
{
	mux_endpoint_info info;
	int i;

	for (i = 0; i < NEP; i++) {
		mux_endpoint(M, (unsigned)i, &info);
		calls[i] = info.calls;
	}
}

/* Milliseconds until endpoint i is connected again (polled: a measurement,
 * not a synchronisation). */
static double
time_to_up(int i, double since)
{
	mux_endpoint_info info;
	struct timespec ts = { 0, 1000000 };

	for (;;) {
		mux_endpoint(M, (unsigned)i, &info);
		if ((info.connected && !info.draining) ||
		    t_now_ms() - since > 20000)
			return t_now_ms() - since;
		nanosleep(&ts, NULL);
	}
}

static const char CONF[] = "workers: 8\nplugins:\n"
    "  - name: echo\n    path: @B@/plugins/echo.so\n"
    "  - name: sleep\n    path: @B@/plugins/sleep.so\n";

int
main(void)
{
	char err[MUX_ERRLEN], list[3 * 330];
	uint64_t c0[NEP], c1[NEP], c2[NEP], c3[NEP], c4[NEP], c5[NEP], c6[NEP];
	pthread_t th[THREADS];
	t_server s[NEP];
	mux_options o;
	mux_stats st;
	double tk, tr, rec1, rec2, td, err_span, up_ms;
	long econn_kill;
	int i, rc;

	t_watchdog(120);
	for (i = 0; i < NEP; i++)
		if (t_server_start(&s[i], CONF, NULL) != 0)
			bail_out("cannot start demuxd %d", i);
		else
			s[i].keep = 1;
	snprintf(list, sizeof(list), "%s,%s,%s", s[0].uri, s[1].uri, s[2].uri);
	mux_options_init(&o);
	o.backoff_min_ms = 20;
	o.backoff_max_ms = 500;
	o.health_interval_ms = 100;
	M = mux_open(list, &o, err, sizeof(err));
	if (M == NULL)
		bail_out("mux_open: %s", err);
	for (i = 0; i < THREADS; i++)
		pthread_create(&th[i], NULL, caller, (void *)(long)i);

	t_run_for(500);
	snap(c0);
	ok(c0[0] > 0 && c0[1] > 0 && c0[2] > 0, "load spread over 3 servers: "
	    "%llu / %llu / %llu calls", (unsigned long long)c0[0],
	    (unsigned long long)c0[1], (unsigned long long)c0[2]);

	/* kill server 1 under load */
	atomic_store(&phase, 1);
	tk = t_now_ms();
	t_server_crash(&s[1]);
	t_run_for(200);
	snap(c1);
	t_run_for(500);
	snap(c2);
	econn_kill = atomic_load(&n_econn);
	err_span = atomic_load(&last_err_us) / 1000.0 - tk;
	ok(c2[1] == c1[1], "nothing sent to the dead server (%llu calls "
	    "before, %llu after)", (unsigned long long)c1[1],
	    (unsigned long long)c2[1]);
	ok(c2[0] > c1[0] && c2[2] > c1[2], "the others took the load");
	ok(econn_kill > 0 && econn_kill <= THREADS, "%ld calls in flight on "
	    "it failed with MUX_ECONN (at most one per thread), the last %.1f "
	    "ms after the kill", econn_kill, err_span);

	/* restart it: it is reconnected and gets its share back */
	atomic_store(&phase, 2);
	tr = t_now_ms();
	if (t_server_restart(&s[1]) != 0)
		bail_out("cannot restart demuxd 1");
	rec1 = time_to_up(1, tr);
	snap(c3);
	t_run_for(700);
	snap(c4);
	/* the time includes demuxd's own start, some seconds under valgrind
	 * (make valgrind): the bound is for libmux's backoff, not for it */
	up_ms = getenv("DEMUX_VALGRIND") ? 10000 : 2000;
	ok(rec1 < up_ms, "reconnected %.0f ms after the restart (%.0f ms "
	    "after the kill)", rec1, tr + rec1 - tk);
	ok(c4[1] - c3[1] > (c4[0] - c3[0]) / 4, "the load moved back: %llu "
	    "calls to it in 700 ms (others %llu, %llu)",
	    (unsigned long long)(c4[1] - c3[1]),
	    (unsigned long long)(c4[0] - c3[0]),
	    (unsigned long long)(c4[2] - c3[2]));

	/* drain server 2: taken out without a single failed call */
	atomic_store(&phase, 3);
	td = t_now_ms();
	kill(s[2].pid, SIGTERM);
	rc = t_server_wait(&s[2]);
	check_int(rc, ==, 0, "drained server exited 0 after %.0f ms",
	    t_now_ms() - td);
	t_run_for(200);
	check_int(atomic_load(&phase_err[3]), ==, 0,
	    "no caller saw an error while it drained");
	/* back at the same address: the load returns */
	atomic_store(&phase, 4);
	tr = t_now_ms();
	if (t_server_restart(&s[2]) != 0)
		bail_out("cannot restart demuxd 2");
	rec2 = time_to_up(2, tr);
	snap(c5);
	t_run_for(700);
	snap(c6);
	ok(rec2 < up_ms && c6[2] - c5[2] > (c6[0] - c5[0]) / 4, "drained "
	    "server restarted: reconnected in %.0f ms, %llu calls to it in "
	    "700 ms", rec2, (unsigned long long)(c6[2] - c5[2]));

	atomic_store(&stop, 1);
	for (i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	mux_get_stats(M, &st);
	check_int(atomic_load(&n_wrong), ==, 0, "no answer reached the wrong "
	    "caller");
	check_int(atomic_load(&n_other), ==, 0, "no error but MUX_ECONN");
	ok(atomic_load(&n_calls) == atomic_load(&n_ok) +
	    atomic_load(&n_econn), "every call accounted for: %ld calls, "
	    "%ld ok, %ld MUX_ECONN", atomic_load(&n_calls), atomic_load(&n_ok),
	    atomic_load(&n_econn));
	diag("FIGURES calls=%ld ok=%ld econn=%ld other=%ld retries=%llu "
	    "connects=%llu errors_for_ms=%.1f recover_ms=%.0f drain_errors=%ld",
	    atomic_load(&n_calls), atomic_load(&n_ok), atomic_load(&n_econn),
	    atomic_load(&n_other), (unsigned long long)st.retries,
	    (unsigned long long)st.connects, err_span, rec1,
	    atomic_load(&phase_err[3]));
	mux_free(M);
	for (i = 0; i < NEP; i++)
		if (s[i].pid > 0)
			check_int(t_server_stop(&s[i]), ==, 0,
			    "demuxd %d exits 0", i);
	for (i = 0; i < NEP; i++)
		t_server_cleanup(&s[i]);

	/* -32010 (not executed) is retried once on another endpoint */
	{
		t_server a, b;
		mux_result r;
		int good = 0;

		if (t_server_start(&a, "workers: on-demand\nmax_threads: 1\n"
		    "plugins:\n  - name: sleep\n    path: @B@/plugins/sleep.so\n"
		    "  - name: echo\n    path: @B@/plugins/echo.so\n",
		    NULL) != 0 || t_server_start(&b, CONF, NULL) != 0)
			bail_out("cannot start demuxd");
		snprintf(list, sizeof(list), "%s,%s", a.uri, b.uri);
		o.health_interval_ms = 0;
		M = mux_open(list, &o, err, sizeof(err));
		if (M == NULL)
			bail_out("mux_open: %s", err);
		atomic_store(&stop, 0);
		atomic_store(&n_other, 0);
		for (i = 0; i < 6; i++)
			pthread_create(&th[i], NULL, caller, (void *)(long)i);
		t_run_for(300);
		atomic_store(&stop, 1);
		for (i = 0; i < 6; i++)
			pthread_join(th[i], NULL);
		rc = mux_callf(M, "$/ping", &r, 1000, "");
		good = rc == MUX_OK;
		mux_result_free(&r);
		mux_get_stats(M, &st);
		ok(good && st.retries > 0 && atomic_load(&n_other) == 0,
		    "6 threads against a 1-thread server and a roomy one: %llu "
		    "calls answered -32010 were retried, no caller saw an error",
		    (unsigned long long)st.retries);
		{
			/* the same for async calls: 100 at once */
			uint64_t before = st.retries;

			atomic_store(&acount, 0);
			for (i = 0; i < 100; i++)
				if (mux_call_async(M, "sleep.sleep",
				    "\x91\x05", 2, acb, NULL, 10000) != MUX_OK)
					atomic_fetch_add(&abad, 1);
			pthread_mutex_lock(&amu);
			while (atomic_load(&acount) + atomic_load(&abad) < 100)
				pthread_cond_wait(&acv, &amu);
			pthread_mutex_unlock(&amu);
			mux_get_stats(M, &st);
			ok(atomic_load(&abad) == 0 && st.retries > before,
			    "100 async calls at once: all answered, %llu "
			    "retried elsewhere", (unsigned long long)(st.retries -
			    before));
		}
		mux_free(M);

		/* with nowhere else to go, the caller gets the -32010 */
		snprintf(list, sizeof(list), "%s,unix:%s/nobody.sock", a.uri,
		    a.dir);
		M = mux_open(list, &o, err, sizeof(err));
		if (M == NULL)
			bail_out("mux_open: %s", err);
		atomic_store(&n_over, 0);
		atomic_store(&n_notconn, 0);
		for (i = 0; i < 6; i++)
			pthread_create(&th[i], NULL, over_caller, NULL);
		for (i = 0; i < 6; i++)
			pthread_join(th[i], NULL);
		ok(atomic_load(&n_over) > 0 && atomic_load(&n_notconn) == 0,
		    "other endpoint down: %ld calls got their -32010 back, "
		    "none a MUX_ENOTCONN from the retry", atomic_load(&n_over));
		mux_free(M);
		t_server_stop(&a);
		t_server_stop(&b);
	}
	done_testing();
	return 0;
}
