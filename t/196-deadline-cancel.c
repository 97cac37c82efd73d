/*
 * 196-deadline-cancel.c - a deadline that passes tells the handler: in
 * thread and in process mode, demux_deadline() and demux_time_left_ms()
 * give the call's deadline, a handler still running at it sees
 * demux_cancelled() and stops (its only worker serves the next call), and a
 * call that timed out while queued says it was never started.
 */
#include <pthread.h>
#include <string.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

static mux_t *M;

static void
test_mode(const char *p, const char *mode)
{
	char method[64];
	mux_result r;
	int64_t left;
	double t0;
	int has, rc;

	snprintf(method, sizeof(method), "%s.left", p);
	rc = mux_call(M, method, NULL, 0, &r, 5000);
	ok(rc == MUX_OK && mux_unpack(r.data, r.len, "[bi]", &has, &left) ==
	    MUX_OK && has && left > 0 && left <= 400, "%s: demux_deadline() "
	    "is set and demux_time_left_ms() is within timeout_ms 400 "
	    "(%lld ms left)", mode, rc == MUX_OK ? (long long)left : -1LL);
	mux_result_free(&r);

	snprintf(method, sizeof(method), "%s.hang", p);
	t0 = t_now_ms();
	rc = mux_call(M, method, NULL, 0, &r, 10000);
	ok(rc == MUX_EREMOTE && r.code == -32011 && r.message != NULL &&
	    strstr(r.message, "told to stop") != NULL, "%s: a handler still "
	    "running at its deadline: -32011, told to stop (%s)", mode,
	    r.message ? r.message : mux_strerror(rc));
	mux_result_free(&r);
	snprintf(method, sizeof(method), "%s.pid", p);
	rc = mux_call(M, method, NULL, 0, &r, 5000);
	ok(rc == MUX_OK, "%s: ...it saw demux_cancelled() and stopped: the "
	    "plugin's only worker answers the next call (%s, %.0f ms after "
	    "the first)", mode, rc == MUX_OK ? "ok" : r.message ? r.message :
	    mux_strerror(rc), t_now_ms() - t0);
	mux_result_free(&r);
}

/* crashy.hang holds the only worker while crashy.pid waits behind it */
static void *
hold(void *arg)
{
	mux_result r;

	(void)arg;
	(void)mux_call(M, "crashy.hang", NULL, 0, &r, 10000);
	mux_result_free(&r);
	return NULL;
}

int
main(void)
{
	t_server s;
	char err[MUX_ERRLEN];
	mux_result r;
	pthread_t th;
	int rc;

	t_watchdog(60);
	if (t_server_start(&s,
	    "plugins:\n"
	    "  - name: crashy\n"
	    "    path: @B@/t/plugins/crashy.so\n"
	    "    workers: 1\n"
	    "    timeout_ms: 400\n"
	    "    methods: { pid: { timeout_ms: 150 } }\n"
	    "  - name: pcrashy\n"
	    "    path: @B@/t/plugins/crashy.so\n"
	    "    isolation: process\n"
	    "    workers: 1\n"
	    "    timeout_ms: 400\n", NULL) != 0)
		bail_out("cannot start demuxd");
	if ((M = mux_connect(s.uri, err, sizeof(err))) == NULL)
		bail_out("connect: %s", err);
	test_mode("crashy", "thread mode");
	test_mode("pcrashy", "process mode");

	pthread_create(&th, NULL, hold, NULL);
	/* the hang is running once $/stats says its worker is busy */
	while (t_stat_path(s.uri, "plugins/crashy/workers_busy") < 1)
		t_run_for(5);
	rc = mux_call(M, "crashy.pid", NULL, 0, &r, 5000);
	ok(rc == MUX_EREMOTE && r.code == -32011 && r.message != NULL &&
	    strstr(r.message, "not started; safe to retry") != NULL, "a call "
	    "that timed out waiting for a worker says it never started (%s)",
	    r.message ? r.message : mux_strerror(rc));
	mux_result_free(&r);
	pthread_join(th, NULL);

	mux_free(M);
	check_int(t_server_stop(&s), ==, 0, "demuxd stops cleanly");
	done_testing();
	return exit_status();
}
