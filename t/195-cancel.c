/*
 * 195-cancel.c - cancellation: mux_cancel from another thread; a queued call
 * is answered -32800 and never runs, a running one gives up through
 * demux_cancelled(), and a call that times out is cancelled on the server
 * too (its worker is free again at once).
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

static mux_t *M;

typedef struct cl {
	mux_token tok;
	int	  rc;
	int64_t	  code;
	char	  msg[200];
	double	  done_ms;
	atomic_int started;
} cl;

static void *
slow_call(void *arg)
{
	cl *c = arg;
	mux_result r;

	atomic_store(&c->started, 1);
	c->rc = mux_call_token(M, "sleep.sleep", "\x91\xcd\x07\xd0", 4, &r,
	    30000, &c->tok);		/* [2000] */
	c->code = r.code;
	snprintf(c->msg, sizeof(c->msg), "%s", r.message ? r.message : "");
	c->done_ms = t_now_ms();
	mux_result_free(&r);
	return NULL;
}

int
main(void)
{
	static cl a = { MUX_TOKEN_INIT, 0, 0, "", 0, 0 };
	static cl b = { MUX_TOKEN_INIT, 0, 0, "", 0, 0 };
	pthread_t ta, tb;
	char err[MUX_ERRLEN];
	mux_result r;
	t_server s;
	double t0;
	int rc;

	t_watchdog(60);
	if (t_server_start(&s, "workers: 1\nplugins:\n  - name: sleep\n"
	    "    path: @B@/plugins/sleep.so\n", NULL) != 0)
		bail_out("cannot start demuxd");
	M = mux_connect(s.uri, err, sizeof(err));
	if (M == NULL)
		bail_out("connect: %s", err);

	pthread_create(&ta, NULL, slow_call, &a);
	while (!atomic_load(&a.started) ||
	    __atomic_load_n(&a.tok.opaque, __ATOMIC_ACQUIRE) == 0)
		sched_yield();
	pthread_create(&tb, NULL, slow_call, &b);
	while (!atomic_load(&b.started) ||
	    __atomic_load_n(&b.tok.opaque, __ATOMIC_ACQUIRE) == 0)
		sched_yield();
	/* a ping after both: A runs on the only worker, B waits behind it */
	rc = mux_call(M, "$/ping", NULL, 0, &r, 5000);
	mux_result_free(&r);
	ok(rc == MUX_OK, "two 2 s calls in flight, one running, one queued");

	t0 = t_now_ms();
	ok(mux_cancel(M, &b.tok) == MUX_OK, "mux_cancel sends $/cancelRequest");
	pthread_join(tb, NULL);
	ok(b.rc == MUX_EREMOTE && b.code == -32800 &&
	    strstr(b.msg, "before it ran") != NULL, "the queued call is "
	    "answered -32800 and never runs (%s)", b.msg);
	ok(b.done_ms - t0 < 500, "...at once (%.0f ms)", b.done_ms - t0);

	t0 = t_now_ms();
	mux_cancel(M, &a.tok);
	pthread_join(ta, NULL);
	ok(a.rc == MUX_EREMOTE && a.code == -32800 &&
	    strstr(a.msg, "cancelled after") != NULL, "the running call gives "
	    "up through demux_cancelled() and is answered -32800 (%s)", a.msg);
	ok(a.done_ms - t0 < 500, "...within a slice, not after 2 s (%.0f ms)",
	    a.done_ms - t0);
	ok(mux_cancel(M, &a.tok) == MUX_EINVAL, "a token with no call in "
	    "flight cannot be cancelled");

	rc = mux_call(M, "sleep.sleep", "\x91\xcd\x07\xd0", 4, &r, 100);
	ok(rc == MUX_ETIMEDOUT, "a 2 s call with a 100 ms timeout times out");
	mux_result_free(&r);
	t0 = t_now_ms();
	rc = mux_call(M, "sleep.sleep", "\x91\x0a", 2, &r, 5000);	/* [10] */
	ok(rc == MUX_OK && t_now_ms() - t0 < 800, "...and is cancelled on the "
	    "server too: the only worker was free again at once (next call "
	    "took %.0f ms)", t_now_ms() - t0);
	mux_result_free(&r);

	mux_free(M);
	check_int(t_server_stop(&s), ==, 0, "demuxd stops cleanly");
	done_testing();
	return exit_status();
}
