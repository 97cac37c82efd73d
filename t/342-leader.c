/*
 * 342-leader.c - libmux's leader/follower reading: a lone sync caller reads
 * its own answers (the connection's reader thread stays asleep: counted in
 * context switches), many sync callers share the reading and every one gets
 * its own answer, also with async calls and notifications mixed in; a
 * caller that times out while it reads hands the reading on (the others
 * keep being answered); mux_close and a dead server reach a caller that is
 * reading.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

static mux_t *M;
static atomic_int wrong, answered, stop;
static atomic_int async_left, async_ok, notes;

/* Context switches of every thread of this process but `skip`: the
 * threads libmux runs for the handle. */
static long
others_switches(pid_t skip)
{
	char path[300], line[128];
	struct dirent *d;
	long n = 0, v;
	DIR *dir = opendir("/proc/self/task");
	FILE *f;

	if (dir == NULL)
		return -1;
	while ((d = readdir(dir)) != NULL) {
		if (d->d_name[0] == '.' || atoi(d->d_name) == skip)
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/status",
		    d->d_name);
		if ((f = fopen(path, "r")) == NULL)
			continue;
		while (fgets(line, sizeof(line), f) != NULL)
			if (sscanf(line, "voluntary_ctxt_switches: %ld",
			    &v) == 1 || sscanf(line,
			    "nonvoluntary_ctxt_switches: %ld", &v) == 1)
				n += v;
		fclose(f);
	}
	closedir(dir);
	return n;
}

/* One echo of i, checked. */
static int
echo(mux_t *m, int64_t i, int ms)
{
	mux_result r;
	int64_t got;
	int rc;

	rc = mux_callf(m, "echo.echo", &r, ms, "i", i);
	if (rc == MUX_OK && (mux_unpack(r.data, r.len, "[i]", &got) != 0 ||
	    got != i))
		rc = -1;
	mux_result_free(&r);
	return rc;
}

static void *
sync_caller(void *arg)
{
	int64_t base = (intptr_t)arg * 1000000, i;

	for (i = 0; i < 1500; i++) {
		if (echo(M, base + i, 10000) != MUX_OK)
			atomic_fetch_add(&wrong, 1);
		else
			atomic_fetch_add(&answered, 1);
	}
	return NULL;
}

/* Echoes until told to stop, counting answers. */
static void *
steady_caller(void *arg)
{
	int64_t i = 0;

	(void)arg;
	while (!atomic_load(&stop)) {
		if (echo(M, i++, 10000) != MUX_OK)
			atomic_fetch_add(&wrong, 1);
		else
			atomic_fetch_add(&answered, 1);
	}
	return NULL;
}

/* 20 echoes of 1 MiB of bytes particular to this thread and call */
static void *
big_caller(void *arg)
{
	size_t n = 1u << 20, k;
	char *p = malloc(n + 8);
	mux_result r;
	int call;

	for (call = 0; p != NULL && call < 20; call++) {
		t_bin_params(p, n, (unsigned)(intptr_t)arg * 13 +
		    (unsigned)call);
		k = 0;
		if (mux_call(M, "echo.echo", p, n + 6, &r, 20000) == MUX_OK &&
		    r.len == n + 6 && memcmp(r.data + 1, p + 1, n + 5) == 0)
			k = 1;
		mux_result_free(&r);
		atomic_fetch_add(k ? &answered : &wrong, 1);
	}
	free(p);
	return NULL;
}

static void
async_cb(void *user, int rc, mux_result *res)
{
	int64_t got;

	if (rc == MUX_OK && mux_unpack(res->data, res->len, "[i]", &got) ==
	    0 && got == (intptr_t)user)
		atomic_fetch_add(&async_ok, 1);
	atomic_fetch_sub(&async_left, 1);
}

static void
on_note(void *user, const char *method, const char *params, size_t len)
{
	(void)user;
	(void)params;
	(void)len;
	if (strcmp(method, "timer.progress") == 0)
		atomic_fetch_add(&notes, 1);
}

typedef struct blocked {
	mux_t	*m;
	int	 rc;
	double	 ms;
} blocked;

/* A sync call that blocks (sleep.sleep [5000], no timeout): it leads. */
static void *
blocked_caller(void *arg)
{
	blocked *b = arg;
	mux_result r;
	double t0 = t_now_ms();

	b->rc = mux_call(b->m, "sleep.sleep", "\x91\xcd\x13\x88", 4, &r, 0);
	b->ms = t_now_ms() - t0;
	mux_result_free(&r);
	return NULL;
}

int
main(void)
{
	char err[MUX_ERRLEN];
	pthread_t th[16], bt;
	t_server s;
	mux_result r;
	long before, after;
	pid_t self = (pid_t)syscall(SYS_gettid);
	int i, rc, bad, base;
	double t0, ms;
	blocked b;

	plan(11);
	t_watchdog(120);
	if (t_server_start(&s, "workers: 8\nplugins:\n"
	    "  - name: echo\n    path: @B@/plugins/echo.so\n"
	    "  - name: sleep\n    path: @B@/plugins/sleep.so\n"
	    "  - name: timer\n    path: @B@/plugins/timer.so\n", NULL) != 0)
		bail_out("cannot start demuxd");
	M = mux_connect(s.uri, err, sizeof(err));
	if (M == NULL)
		bail_out("mux_connect: %s", err);

	/* 1. one caller: no hand-off. Each call the reader thread served
	 * would cost it at least one context switch (woken by the answer). */
	for (i = 0; i < 50; i++)
		echo(M, i, 5000);	/* connected, threads started */
	before = others_switches(self);
	for (i = 0, bad = 0; i < 3000; i++)
		bad += echo(M, i, 5000) != MUX_OK;
	after = others_switches(self);
	ok(bad == 0, "one caller: 3000 echoes, each its own answer");
	ok(before >= 0 && after - before < 300, "one caller read its own "
	    "answers: libmux's other threads switched %ld times in 3000 "
	    "calls (< 300)", after - before);

	/* 2. 16 sync callers at once, each its own answers */
	for (i = 0; i < 16; i++)
		pthread_create(&th[i], NULL, sync_caller, (void *)(intptr_t)i);
	for (i = 0; i < 16; i++)
		pthread_join(th[i], NULL);
	ok(atomic_load(&wrong) == 0 && atomic_load(&answered) == 16 * 1500,
	    "16 sync callers: %d of %d answered right, %d wrong",
	    atomic_load(&answered), 16 * 1500, atomic_load(&wrong));

	/* 3. the same with async calls in flight meanwhile, and
	 * notifications wanted: the reader thread takes the reading over
	 * and gives it back */
	atomic_store(&answered, 0);
	for (i = 0; i < 8; i++)
		pthread_create(&th[i], NULL, sync_caller, (void *)(intptr_t)i);
	for (i = 0; i < 2000; i++) {
		atomic_fetch_add(&async_left, 1);
		if (mux_call_async(M, "echo.echo", "\x91\xcd\x01\x00", 4,
		    async_cb, (void *)(intptr_t)256, 10000) != MUX_OK)
			atomic_fetch_sub(&async_left, 1);
		if (i == 1000)
			mux_set_notify(M, on_note, NULL);
	}
	rc = mux_call(M, "timer.progress", "\x92\x0a\x14", 3, &r, 10000);
	mux_result_free(&r);
	for (i = 0; i < 8; i++)
		pthread_join(th[i], NULL);
	t0 = t_now_ms();
	while ((atomic_load(&async_left) > 0 || atomic_load(&notes) < 10) &&
	    t_now_ms() - t0 < 10000)
		t_run_for(10);
	ok(atomic_load(&wrong) == 0 && atomic_load(&answered) == 8 * 1500,
	    "8 sync callers beside 2000 async calls: %d answered right, %d "
	    "wrong", atomic_load(&answered), atomic_load(&wrong));
	ok(atomic_load(&async_ok) == 2000, "every async call answered right "
	    "(%d)", atomic_load(&async_ok));
	ok(rc == MUX_OK && atomic_load(&notes) == 10, "timer.progress: its "
	    "10 notifications arrived (%d)",
	    atomic_load(&notes));
	mux_set_notify(M, NULL, NULL);

	/* 4. a caller that times out while it reads: the others go on */
	atomic_store(&answered, 0);
	atomic_store(&stop, 0);
	for (i = 0; i < 4; i++)
		pthread_create(&th[i], NULL, steady_caller, NULL);
	t0 = t_now_ms();
	for (i = 0, bad = 0; i < 20; i++) {
		bad += mux_call(M, "sleep.sleep", "\x91\xcd\x01\x2c", 4, &r,
		    20) != MUX_ETIMEDOUT;	/* [300] */
		mux_result_free(&r);
	}
	ms = t_now_ms() - t0;
	base = atomic_load(&answered);
	t_run_for(200);
	atomic_store(&stop, 1);
	for (i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	ok(bad == 0 && ms < 20 * 20 + 2000, "20 calls timed out after 20 ms "
	    "each (%.0f ms in all)", ms);
	ok(atomic_load(&wrong) == 0 && atomic_load(&answered) > base,
	    "4 callers kept being answered across the time-outs and after "
	    "(%d, then %d more)", base, atomic_load(&answered) - base);

	/* 5. big params go out from the caller's buffer (written directly
	 * when the socket is free; what the kernel does not take at once is
	 * copied and sent after): 8 threads x 20 echoes of 1 MiB, each its
	 * own bytes back */
	atomic_store(&wrong, 0);
	atomic_store(&answered, 0);
	for (i = 0; i < 8; i++)
		pthread_create(&th[i], NULL, big_caller, (void *)(intptr_t)i);
	for (i = 0; i < 8; i++)
		pthread_join(th[i], NULL);
	ok(atomic_load(&wrong) == 0 && atomic_load(&answered) == 160,
	    "8 callers x 20 echoes of 1 MiB: %d right, %d wrong",
	    atomic_load(&answered), atomic_load(&wrong));

	/* 6. mux_close reaches a caller that is reading */
	b.m = mux_connect(s.uri, err, sizeof(err));
	if (b.m == NULL)
		bail_out("mux_connect: %s", err);
	echo(b.m, 1, 5000);
	pthread_create(&bt, NULL, blocked_caller, &b);
	t_run_for(100);
	mux_close(b.m);
	pthread_join(bt, NULL);
	ok(b.rc == MUX_ECLOSED && b.ms < 1500, "mux_close: the reading "
	    "caller returned MUX_ECLOSED after %.0f ms", b.ms);
	mux_free(b.m);

	/* 7. a dead server reaches a caller that is reading */
	b.m = mux_connect(s.uri, err, sizeof(err));
	if (b.m == NULL)
		bail_out("mux_connect: %s", err);
	echo(b.m, 1, 5000);
	pthread_create(&bt, NULL, blocked_caller, &b);
	t_run_for(100);
	t_server_crash(&s);
	pthread_join(bt, NULL);
	ok(b.rc == MUX_ECONN && b.ms < 1500, "server killed: the reading "
	    "caller returned MUX_ECONN after %.0f ms", b.ms);
	mux_free(b.m);
	mux_free(M);
	t_server_cleanup(&s);
	return exit_status();
}
