/*
 * 197-abandoned.c - a thread-mode worker stuck for good is written off:
 * past timeout_ms + kill_after_ms a new thread takes its place and serves
 * the calls queued behind it; past max_abandoned, $/health answers
 * "unhealthy" and queued calls say they never started; once the stuck
 * handlers return their threads leave and the plugin is healthy again.
 * crashy.nap is the handler deaf to cancellation.
 */
#include <pthread.h>
#include <string.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

static mux_t *M;

static int
health_is(const char *want, int tries)
{
	mux_result r;
	const char *s;
	size_t n;
	int hit = 0;

	while (!hit && tries-- > 0) {
		if (mux_call(M, "$/health", NULL, 0, &r, 5000) == MUX_OK &&
		    mux_unpack(r.data, r.len, "s", &s, &n) == MUX_OK &&
		    n == strlen(want) && memcmp(s, want, n) == 0)
			hit = 1;
		mux_result_free(&r);
		if (!hit)
			t_run_for(20);	/* polling $/health: what operators do */
	}
	return hit;
}

int
main(void)
{
	t_server s;
	char err[MUX_ERRLEN];
	mux_result r;
	int rc;

	t_watchdog(60);
	if (t_server_start(&s,
	    "plugins:\n"
	    "  - name: crashy\n"
	    "    path: @B@/t/plugins/crashy.so\n"
	    "    workers: 1\n"
	    "    timeout_ms: 100\n"
	    "    kill_after_ms: 200\n"
	    "    max_abandoned: 1\n", NULL) != 0)
		bail_out("cannot start demuxd");
	if ((M = mux_connect(s.uri, err, sizeof(err))) == NULL)
		bail_out("connect: %s", err);

	rc = mux_callf(M, "crashy.nap", &r, 10000, "i", (int64_t)3000);
	ok(rc == MUX_EREMOTE && r.code == -32011, "a handler deaf to its "
	    "deadline: -32011 at timeout_ms, its only worker still held");
	mux_result_free(&r);
	/* the write-off comes at 100 + 200 ms; $/stats shows it */
	while (t_stat_path(s.uri, "plugins/crashy/workers_abandoned") < 1)
		t_run_for(20);
	check_int(t_stat_path(s.uri, "plugins/crashy/workers_abandoned"), ==,
	    1, "past timeout_ms + kill_after_ms the worker is written off");
	rc = mux_call(M, "crashy.pid", NULL, 0, &r, 5000);
	ok(rc == MUX_OK, "...and a new one serves the plugin's next call "
	    "while the stuck handler still runs (%s)", rc == MUX_OK ? "ok" :
	    r.message ? r.message : mux_strerror(rc));
	mux_result_free(&r);
	ok(health_is("serving", 1), "...$/health still serving: within "
	    "max_abandoned 1");

	rc = mux_callf(M, "crashy.nap", &r, 10000, "i", (int64_t)3000);
	mux_result_free(&r);
	ok(health_is("unhealthy", 500), "a second worker stuck for good, past "
	    "max_abandoned 1: $/health says unhealthy");
	check_int(t_stat_path(s.uri, "plugins/crashy/workers_abandoned"), ==,
	    2, "...with both written off");
	rc = mux_call(M, "crashy.pid", NULL, 0, &r, 5000);
	ok(rc == MUX_EREMOTE && r.code == -32011 && r.message != NULL &&
	    strstr(r.message, "not started; safe to retry") != NULL, "...and "
	    "a call finds no worker: -32011, never started (%s)",
	    r.message ? r.message : mux_strerror(rc));
	mux_result_free(&r);

	ok(health_is("serving", 500), "once the stuck handlers return, their "
	    "threads leave and $/health is serving again");
	rc = mux_call(M, "crashy.pid", NULL, 0, &r, 5000);
	ok(rc == MUX_OK, "...and the plugin answers");
	mux_result_free(&r);
	ok(health_is("serving", 1) && t_stat_path(s.uri,
	    "plugins/crashy/workers_abandoned") <= 1, "...(the second stuck "
	    "handler may still be napping)");
	while (t_stat_path(s.uri, "plugins/crashy/workers_abandoned") > 0)
		t_run_for(20);
	check_int(t_stat_path(s.uri, "plugins/crashy/workers_abandoned"), ==,
	    0, "...then none is written off any more");
	mux_free(M);
	check_int(t_server_stop(&s), ==, 0, "demuxd stops cleanly");
	done_testing();
	return exit_status();
}
