/*
 * 344-in-place.c - results of every size, with results_in_place (large
 * ones handed over in the buffer they were read into) and without it
 * (every result a block of its own, which free() takes, as documented):
 * each caller gets its own bytes back; results kept from async callbacks
 * stay intact while later answers are read (a buffer handed to one result
 * is never read into again); small and large answers read together are
 * split right; a late answer is dropped while large ones are read.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

static t_server S;
static mux_t *M;
static atomic_int good, bad;

/* Sizes around the hand-over threshold (16 KiB), the read chunk (256 KiB)
 * and well past both. */
static const size_t sizes[] = {
	1, 100, 4000, 16383, 16384, 16385, 65536, 200000, 262144, 300000,
	1u << 20,
};
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))

/* [bin32 n] whose bytes are particular to (who, call); returns the length */
static size_t
make_params(char *p, size_t n, unsigned who, unsigned call)
{
	return t_bin_params(p, n, who * 7919 + call * 31);
}

static int
same(const mux_result *r, const char *p, size_t len)
{
	return r->len == len && memcmp(r->data, p, len) == 0;
}

/* blocking callers, every size in turn */
static void *
caller(void *arg)
{
	unsigned who = (unsigned)(uintptr_t)arg, call;
	char *p = malloc((1u << 20) + 8);
	mux_result r;
	size_t len;

	for (call = 0; p != NULL && call < 3 * NSIZES; call++) {
		len = make_params(p, sizes[(call + who) % NSIZES], who, call);
		if (mux_call(M, "echo.echo", p, len, &r, 20000) == MUX_OK &&
		    same(&r, p, len))
			atomic_fetch_add(&good, 1);
		else
			atomic_fetch_add(&bad, 1);
		mux_result_free(&r);
	}
	free(p);
	return NULL;
}

/* async calls whose results are all kept, then checked */
#define NASYNC 120
typedef struct kept {
	mux_result	res;
	int		rc;
	atomic_int	done;
} kept;
static kept K[NASYNC];
static atomic_int kept_left;

static void
keep_cb(void *user, int rc, mux_result *res)
{
	kept *k = user;

	k->rc = rc;
	k->res = *res;			/* take it whole */
	memset(res, 0, sizeof(*res));
	atomic_store(&k->done, 1);
	atomic_fetch_sub(&kept_left, 1);
}

static int
run_callers(void)
{
	pthread_t th[8];
	unsigned i;

	atomic_store(&good, 0);
	atomic_store(&bad, 0);
	for (i = 0; i < 8; i++)
		pthread_create(&th[i], NULL, caller, (void *)(uintptr_t)i);
	for (i = 0; i < 8; i++)
		pthread_join(th[i], NULL);
	return atomic_load(&bad) == 0 && atomic_load(&good) ==
	    (int)(8 * 3 * NSIZES);
}

static mux_t *
open_handle(int in_place)
{
	mux_options o;
	char err[MUX_ERRLEN];
	mux_t *m;

	mux_options_init(&o);
	o.reconnect = 0;
	o.results_in_place = in_place;
	m = mux_open(S.uri, &o, err, sizeof(err));
	if (m == NULL)
		bail_out("mux_open: %s", err);
	return m;
}

int
main(void)
{
	char *p = malloc((1u << 20) + 8);
	mux_result r;
	unsigned i, right;
	size_t len;
	double t0;
	void *d;
	int rc;

	plan(6);
	t_watchdog(120);
	if (p == NULL)
		bail_out("out of memory");
	if (t_server_start(&S, "workers: 4\nplugins:\n"
	    "  - name: echo\n    path: @B@/plugins/echo.so\n"
	    "  - name: sleep\n    path: @B@/plugins/sleep.so\n", NULL) != 0)
		bail_out("cannot start demuxd");

	/* 1. results in place: 8 threads, every size */
	M = open_handle(1);
	right = (unsigned)run_callers();
	ok(right, "results_in_place: 8 callers x %zu echoes of 1 B to "
	    "1 MiB: %d right, %d wrong", 3 * NSIZES, atomic_load(&good),
	    atomic_load(&bad));

	/* 2. 120 async calls of mixed sizes in flight at once, so that small
	 * and large answers share reads; every result kept until all are in,
	 * then checked */
	atomic_store(&kept_left, NASYNC);
	for (i = 0; i < NASYNC; i++) {
		len = make_params(p, sizes[i % NSIZES] % 300001, 100 + i, i);
		if (mux_call_async(M, "echo.echo", p, len, keep_cb, &K[i],
		    20000) != MUX_OK)
			atomic_fetch_sub(&kept_left, 1);
	}
	t0 = t_now_ms();
	while (atomic_load(&kept_left) > 0 && t_now_ms() - t0 < 30000)
		t_run_for(5);
	for (i = 0, right = 0; i < NASYNC; i++) {
		len = make_params(p, sizes[i % NSIZES] % 300001, 100 + i, i);
		right += atomic_load(&K[i].done) && K[i].rc == MUX_OK &&
		    same(&K[i].res, p, len);
		mux_result_free(&K[i].res);
	}
	ok(right == NASYNC, "120 async answers of mixed sizes kept whole from "
	    "their callbacks: %u intact after all were read", right);

	/* 3. an answer that comes after its caller gave up is dropped
	 * while large answers are read and handed over around it */
	len = make_params(p, 100000, 9, 9);
	rc = mux_call(M, "sleep.sleep", "\x91\xcd\x01\x2c", 4, &r, 50);
	mux_result_free(&r);	/* sleep.sleep [300] times out ... */
	for (i = 0; i < 20; i++) {	/* ... while large echoes go on */
		if (mux_call(M, "echo.echo", p, len, &r, 5000) != MUX_OK ||
		    !same(&r, p, len))
			break;
		mux_result_free(&r);
	}
	mux_result_free(&r);
	t0 = t_now_ms();
	while (mux_late_responses(M) < 1 && t_now_ms() - t0 < 5000)
		t_run_for(10);
	ok(rc == MUX_ETIMEDOUT && i == 20 && mux_late_responses(M) == 1,
	    "a call that timed out: its late answer dropped (%llu), 20 large "
	    "echoes right meanwhile (%u)",
	    (unsigned long long)mux_late_responses(M), i);
	mux_free(M);

	/* 4. without the option: the same, and every result's data is a
	 * block free() takes (what docs/client.md lets a callback do) */
	M = open_handle(0);
	right = (unsigned)run_callers();
	ok(right, "default: 8 callers x %zu echoes of 1 B to 1 MiB: "
	    "%d right, %d wrong", 3 * NSIZES, atomic_load(&good),
	    atomic_load(&bad));
	len = make_params(p, 65536, 1, 1);
	rc = mux_call(M, "echo.echo", p, len, &r, 5000);
	right = rc == MUX_OK && same(&r, p, len);
	d = r.data;		/* a pointer inside a block would abort here */
	r.data = NULL;
	mux_result_free(&r);
	free(d);
	ok(right, "default: a 64 KiB echo, its data taken and released with "
	    "free()");
	mux_free(M);

	ok(t_server_stop(&S) == 0, "demuxd stopped cleanly");
	free(p);
	t_server_cleanup(&S);
	return exit_status();
}
