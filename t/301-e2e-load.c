/*
 * 301-e2e-load.c - one libmux connection under load: 64 threads whose
 * answers each reach the thread that asked, 100 handlers running at once,
 * and payloads of megabytes both ways.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "e2e.h"

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

static void
tests(t_server *s)
{
	(void)s;
	test_many_threads();
	test_parallel_sleeps();
	test_big();
}

int
main(void)
{
	return e2e_main(tests);
}
