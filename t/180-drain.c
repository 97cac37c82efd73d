/*
 * 180-drain.c - libmux and a draining demuxd: on SIGTERM the calls in
 * flight are answered, the client learns of $/drain, and calls made after it
 * fail at once with MUX_EDRAINING without being sent (safe to retry
 * elsewhere); demuxd exits 0.
 */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

static mux_t *M;
static atomic_int answered, started;

static void *
caller(void *arg)
{
	mux_result r;
	int64_t v;

	(void)arg;
	atomic_fetch_add(&started, 1);
	if (mux_callf(M, "sleep.sleep", &r, 30000, "i", (int64_t)300) ==
	    MUX_OK && mux_unpack(r.data, r.len, "i", &v) == 0 && v == 300)
		atomic_fetch_add(&answered, 1);
	mux_result_free(&r);
	return NULL;
}

int
main(void)
{
	pthread_t th[4];
	char err[MUX_ERRLEN];
	mux_result r;
	t_server s;
	double t0;
	int i, rc, st;

	t_watchdog(60);
	if (t_server_start(&s, "workers: 4\nplugins:\n  - name: sleep\n"
	    "    path: @B@/plugins/sleep.so\n", NULL) != 0)
		bail_out("cannot start demuxd");
	M = mux_connect(s.uri, err, sizeof(err));
	if (M == NULL)
		bail_out("connect: %s", err);
	for (i = 0; i < 4; i++)
		pthread_create(&th[i], NULL, caller, NULL);
	/* all 4 running on the server: its pool says so (a caller that has
	 * started may not have written its request yet) */
	while (t_stat(s.uri, "pool", "busy") < 4)
		t_run_for(1);
	ok(atomic_load(&started) == 4, "4 slow calls in flight");

	kill(s.pid, SIGTERM);
	t0 = t_now_ms();
	while (!mux_draining(M) && t_now_ms() - t0 < 10000)
		sched_yield();
	ok(mux_draining(M), "the client learned of $/drain");
	rc = mux_call(M, "$/ping", NULL, 0, &r, 5000);
	ok(rc == MUX_EDRAINING && r.message != NULL,
	    "a call after $/drain fails at once with MUX_EDRAINING (%s)",
	    r.message ? r.message : "");
	mux_result_free(&r);
	for (i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	check_int(atomic_load(&answered), ==, 4, "the calls in flight were "
	    "all answered");
	mux_free(M);
	st = t_server_wait(&s);	/* already stopping: no second signal */
	check_int(st, ==, 0, "demuxd drained and exited 0");
	done_testing();
	return exit_status();
}
