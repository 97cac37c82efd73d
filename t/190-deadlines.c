/*
 * 190-deadlines.c - timeout_ms per plugin and per method: past it the caller
 * gets -32011 at once, the late result is never sent, the stuck worker is
 * counted; a call within its deadline is untouched. The overrunning handler
 * is crashy.nap, deaf to demux_cancelled() (sleep.sleep would give up at
 * the deadline: t/196).
 */
#define _GNU_SOURCE
#include <string.h>
#include <time.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

int
main(void)
{
	char err[MUX_ERRLEN];
	struct timespec wait = { 0, 700 * 1000000L };
	mux_result r;
	t_server s;
	mux_t *m;
	double t0, dt;
	int64_t v;
	int rc;

	t_watchdog(60);
	if (t_server_start(&s, "workers: 2\nplugins:\n"
	    "  - name: sleep\n    path: @B@/plugins/sleep.so\n"
	    "    timeout_ms: 5000\n"
	    "    methods:\n      sleep: { timeout_ms: 150 }\n"
	    "  - name: crashy\n    path: @B@/t/plugins/crashy.so\n"
	    "    timeout_ms: 150\n"
	    "  - name: echo\n    path: @B@/plugins/echo.so\n", NULL) != 0)
		bail_out("cannot start demuxd");
	m = mux_connect(s.uri, err, sizeof(err));
	if (m == NULL)
		bail_out("connect: %s", err);

	rc = mux_callf(m, "sleep.sleep", &r, 5000, "i", (int64_t)20);
	ok(rc == MUX_OK && mux_unpack(r.data, r.len, "i", &v) == 0 && v == 20,
	    "a call within its deadline (20 of 150 ms) is answered normally");
	mux_result_free(&r);

	t0 = t_now_ms();
	rc = mux_callf(m, "crashy.nap", &r, 5000, "i", (int64_t)600);
	dt = t_now_ms() - t0;
	ok(rc == MUX_EREMOTE && r.code == -32011 && r.message &&
	    strstr(r.message, "150 ms"), "past the method's timeout_ms the "
	    "caller gets -32011 (%s)", r.message ? r.message : "");
	ok(dt >= 140 && dt < 450, "...at once: after %.0f ms, not the "
	    "handler's 600", dt);
	mux_result_free(&r);

	/* while the handler overruns, its worker counts as stuck */
	check_int(t_stat(s.uri, "pool", "stuck"), ==, 1, "$/stats counts the "
	    "worker stuck past its deadline");

	/* the handler returns at 600 ms; nothing must be sent for it. No
	 * event marks "nothing arrived", so wait past it. */
	nanosleep(&wait, NULL);
	rc = mux_call(m, "echo.echo", NULL, 0, &r, 5000);
	ok(rc == MUX_OK, "the connection is fine afterwards");
	mux_result_free(&r);
	check_int(mux_late_responses(m), ==, 0, "the late result was dropped "
	    "by demuxd, never sent");

	check_int(t_stat_path(s.uri, "methods/crashy.nap/errors/-32011"), ==,
	    1, "$/stats counts the -32011 by code");
	mux_free(m);
	check_int(t_server_stop(&s), ==, 0, "demuxd stops cleanly");
	done_testing();
	return exit_status();
}
