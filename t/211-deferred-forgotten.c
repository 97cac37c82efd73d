/*
 * 211-deferred-forgotten.c - a plugin that defers calls and never finishes
 * them leaks those calls only: each is answered -32011 at its deadline,
 * $/stats shows it open and overdue, the worker that deferred it is free
 * (the pool of one serves on), and the connection's other calls are
 * answered. (Not under valgrind: the forgotten calls are the leak.)
 */
#include <string.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

int
main(void)
{
	t_server s;
	char err[MUX_ERRLEN];
	mux_result r;
	mux_t *m;
	int rc, i;

	t_watchdog(60);
	if (t_server_start(&s,
	    "workers: 1\n"
	    "plugins:\n"
	    "  - name: crashy\n"
	    "    path: @B@/t/plugins/crashy.so\n"
	    "    timeout_ms: 200\n", NULL) != 0)
		bail_out("demuxd did not start");
	if ((m = mux_connect(s.uri, err, sizeof(err))) == NULL)
		bail_out("connect: %s", err);
	for (i = 0; i < 3; i++) {
		rc = mux_call(m, "crashy.forget", NULL, 0, &r, 5000);
		ok(rc == MUX_EREMOTE && r.code == -32011, "a call deferred and "
		    "never finished is answered -32011 at its deadline (%s)",
		    r.message ? r.message : mux_strerror(rc));
		mux_result_free(&r);
	}
	rc = mux_call(m, "crashy.echo", NULL, 0, &r, 5000);
	ok(rc == MUX_OK, "the pool of one serves on: deferring freed its "
	    "worker");
	mux_result_free(&r);
	check_int(t_stat_path(s.uri, "methods/crashy.forget/deferred_open"),
	    ==, 3, "$/stats: the 3 forgotten calls are open");
	check_int(t_stat_path(s.uri, "methods/crashy.forget/deferred_overdue"),
	    ==, 3, "...and overdue: past their deadline");
	check_int(t_stat(s.uri, "pool", "busy"), ==, 0, "...on no worker");
	mux_free(m);
	/* demuxd still exits: the forgotten calls' generation stays loaded,
	 * as a stuck handler's does */
	t_server_kill(&s);
	t_server_cleanup(&s);
	done_testing();
	return exit_status();
}
