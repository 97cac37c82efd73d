/*
^ * recipe.c - the original Mux/DeMux recipe's own test, in C: 700
 * submitting threads, each making three transactions that sleep (scaled to
 * milliseconds) and one that must fail with the handler's error; first on a
 * pool of 100 workers, then in on-demand mode (a thread per request).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

#define NTHREADS 700

static mux_t *M;
static atomic_int good, bad_result, bad_error;

static void *
submitter(void *arg)
{
	long id = (long)arg;
	mux_result r;
	int64_t v, ms;
	int i, rc;

	for (i = 0; i < 3; i++) {
		ms = 1 + (id * 7 + i * 3) % 10;	/* 1..10 ms */
		rc = mux_callf(M, "sleep.sleep", &r, 60000, "i", ms);
		if (rc == MUX_OK && mux_unpack(r.data, r.len, "i", &v) == 0 &&
		    v == ms)
			atomic_fetch_add(&good, 1);
		else
			atomic_fetch_add(&bad_result, 1);
		mux_result_free(&r);
	}
	/* the recipe's failing transaction: the handler raises */
	rc = mux_callf(M, "sleep.sleep", &r, 60000, "i", -id - 1);
	if (rc == MUX_EREMOTE && r.code == 1 && r.message != NULL &&
	    strstr(r.message, "negative") != NULL && r.trace != NULL)
		atomic_fetch_add(&good, 1);
	else
		atomic_fetch_add(&bad_error, 1);
	mux_result_free(&r);
	return NULL;
}

static void
run(const char *mode, const char *yaml)
{
	pthread_t th[NTHREADS];
	pthread_attr_t attr;
	char err[MUX_ERRLEN];
	t_server s;
	double t0, dt;
	long i;
	int started = 0;

	if (t_server_start(&s, yaml, NULL) != 0)
		bail_out("cannot start demuxd (%s)", mode);
	M = mux_connect(s.uri, err, sizeof(err));
	if (M == NULL)
		bail_out("connect: %s", err);
	atomic_store(&good, 0);
	atomic_store(&bad_result, 0);
	atomic_store(&bad_error, 0);

	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 256 << 10);
	t0 = t_now_ms();
	for (i = 0; i < NTHREADS; i++)
		if (pthread_create(&th[i], &attr, submitter, (void *)i) == 0)
			started++;
	for (i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	dt = t_now_ms() - t0;
	pthread_attr_destroy(&attr);

	check_int(started, ==, NTHREADS, "%s: %d submitting threads started",
	    mode, NTHREADS);
	check_int(atomic_load(&bad_result), ==, 0, "%s: every sleep returned "
	    "its own duration", mode);
	check_int(atomic_load(&bad_error), ==, 0, "%s: every failing "
	    "transaction raised the handler's error with its trace", mode);
	check_int(atomic_load(&good), ==, NTHREADS * 4, "%s: all %d "
	    "transactions correct", mode, NTHREADS * 4);
	diag("%s: %d transactions in %.0f ms", mode, NTHREADS * 4, dt);
	mux_free(M);
	check_int(t_server_stop(&s), ==, 0, "%s: demuxd stops cleanly", mode);
}

/* on-demand past max_threads: -32010 (not executed, safe to retry), never a
 * failure to spawn or a lost call */
static atomic_int cap_ok, cap_overloaded, cap_other;

static void *
cap_caller(void *arg)
{
	mux_result r;
	int rc;

	(void)arg;
	rc = mux_callf(M, "sleep.sleep", &r, 60000, "i", (int64_t)300);
	if (rc == MUX_OK)
		atomic_fetch_add(&cap_ok, 1);
	else if (rc == MUX_EREMOTE && r.code == -32010)
		atomic_fetch_add(&cap_overloaded, 1);
	else
		atomic_fetch_add(&cap_other, 1);
	mux_result_free(&r);
	return NULL;
}

static void
run_cap(void)
{
	pthread_t th[40];
	char err[MUX_ERRLEN];
	t_server s;
	int i;

	if (t_server_start(&s, "workers: on-demand\nmax_threads: 4\n"
	    "plugins:\n  - name: sleep\n    path: @B@/plugins/sleep.so\n",
	    NULL) != 0)
		bail_out("cannot start demuxd (cap)");
	M = mux_connect(s.uri, err, sizeof(err));
	if (M == NULL)
		bail_out("connect: %s", err);
	for (i = 0; i < 40; i++)
		pthread_create(&th[i], NULL, cap_caller, NULL);
	for (i = 0; i < 40; i++)
		pthread_join(th[i], NULL);
	ok(atomic_load(&cap_ok) >= 4 && atomic_load(&cap_overloaded) > 0 &&
	    atomic_load(&cap_ok) + atomic_load(&cap_overloaded) == 40,
	    "on-demand, max_threads 4, 40 concurrent 300 ms calls: %d ran, %d "
	    "answered -32010, %d other", atomic_load(&cap_ok),
	    atomic_load(&cap_overloaded), atomic_load(&cap_other));
	mux_free(M);
	check_int(t_server_stop(&s), ==, 0, "cap: demuxd stops cleanly");
}

int
main(void)
{
	t_watchdog(240);
	run("pool of 100",
	    "workers: 100\n"
	    "plugins:\n"
	    "  - name: sleep\n"
	    "    path: @B@/plugins/sleep.so\n");
	run("on-demand",
	    "workers: on-demand\n"
	    "max_threads: 1024\n"
	    "plugins:\n"
	    "  - name: sleep\n"
	    "    path: @B@/plugins/sleep.so\n");
	run_cap();
	done_testing();
	return exit_status();
}
