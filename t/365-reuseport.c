/*
 * 365-reuseport.c - several demuxd processes on one TCP port
 * (reuse_port: true): the kernel spreads a client's connections over them;
 * when one process dies, the handle's broken connections reconnect to the
 * ones left. Without reuse_port the second process refuses to start, naming
 * the address.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

/* the kernel hashes each connection to a listener: all 16 on one of two
 * processes has a probability of 2^-15 */
#define CONNS 16

int
main(void)
{
	char conf[512], list[CONNS * 40], err[MUX_ERRLEN], one[40], local[2][340];
	mux_endpoint_info info;
	t_server d[2], bad;
	mux_options o;
	mux_result r;
	long q0[2], q1[2];
	int port, i, j, up, fails = 0;
	mux_t *m;
	double t0;

	t_watchdog(60);
	port = t_free_port();
	snprintf(conf, sizeof(conf), "listen: [ \"tcp:127.0.0.1:%d\", "
	    "\"unix:demux.sock\" ]\nreuse_port: true\nworkers: 2\nplugins:\n"
	    "  - name: echo\n    path: @B@/plugins/echo.so\n", port);
	for (i = 0; i < 2; i++) {
		if (t_server_start(&d[i], conf, NULL) != 0)
			bail_out("cannot start demuxd %d on port %d", i, port);
		snprintf(local[i], sizeof(local[i]), "%s", d[i].uri);
	}
	ok(1, "two demuxd listen on port %d", port);

	snprintf(one, sizeof(one), "tcp:127.0.0.1:%d", port);
	for (i = 0, list[0] = '\0'; i < CONNS; i++)
		snprintf(list + strlen(list), sizeof(list) - strlen(list),
		    "%s%s", i ? "," : "", one);
	mux_options_init(&o);
	o.backoff_min_ms = 20;
	o.backoff_max_ms = 200;
	m = mux_open(list, &o, err, sizeof(err));
	if (m == NULL)
		bail_out("mux_open: %s", err);
	q0[0] = t_requests(local[0]);
	q0[1] = t_requests(local[1]);
	for (i = 0; i < 400; i++) {
		fails += mux_call(m, "echo.echo", NULL, 0, &r, 5000) != MUX_OK;
		mux_result_free(&r);
	}
	q1[0] = t_requests(local[0]);
	q1[1] = t_requests(local[1]);
	ok(fails == 0 && q1[0] - q0[0] > 10 && q1[1] - q0[1] > 10, "%d "
	    "connections to one port: calls reached both processes (%ld, %ld)",
	    CONNS, q1[0] - q0[0] - 1, q1[1] - q0[1] - 1);

	/* one process dies: its connections come back on the other */
	t_server_kill(&d[0]);
	t0 = t_now_ms();
	for (;;) {
		for (j = 0, up = 0; j < CONNS; j++) {
			mux_endpoint(m, (unsigned)j, &info);
			up += info.connected;
		}
		if (up == CONNS || t_now_ms() - t0 > 10000)
			break;
		/* calls keep the handle busy while it reconnects */
		mux_call(m, "echo.echo", NULL, 0, &r, 5000);
		mux_result_free(&r);
	}
	check_int(up, ==, CONNS, "all %d connections up again on the "
	    "survivor after %.0f ms", CONNS, t_now_ms() - t0);
	for (i = 0, fails = 0; i < 200; i++) {
		fails += mux_call(m, "echo.echo", NULL, 0, &r, 5000) != MUX_OK;
		mux_result_free(&r);
	}
	check_int(fails, ==, 0, "200 calls after the failover all answered");
	mux_free(m);

	/* without reuse_port the port is taken */
	snprintf(conf, sizeof(conf), "listen: \"tcp:127.0.0.1:%d\"\n"
	    "workers: 1\nplugins:\n  - name: echo\n"
	    "    path: @B@/plugins/echo.so\n", port);
	t_start_may_fail = 1;
	ok(t_server_start(&bad, conf, NULL) != 0, "without reuse_port a "
	    "second demuxd on the port does not start");
	t_start_may_fail = 0;
	check_int(t_server_stop(&d[1]), ==, 0, "demuxd exits 0");
	done_testing();
	return 0;
}
