/*
 * 160-pools.c - a plugin with its own pool and queue bound: saturating it
 * answers -32010 (not executed) past the bound, while another plugin's calls
 * on the same connection keep their normal latency.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

static mux_t *M;
static atomic_int ran, overloaded, other, stop_echo;
static double echo_max_ms;
static int echo_calls, echo_bad;

static void *
sleeper(void *arg)
{
	mux_result r;
	int rc;

	(void)arg;
	rc = mux_callf(M, "sleep.sleep", &r, 30000, "i", (int64_t)400);
	if (rc == MUX_OK)
		atomic_fetch_add(&ran, 1);
	else if (rc == MUX_EREMOTE && r.code == -32010 && r.message &&
	    strstr(r.message, "sleep") != NULL)
		atomic_fetch_add(&overloaded, 1);
	else
		atomic_fetch_add(&other, 1);
	mux_result_free(&r);
	return NULL;
}

static void *
echoer(void *arg)
{
	mux_result r;
	double t0, dt;

	(void)arg;
	while (!atomic_load(&stop_echo)) {
		t0 = t_now_ms();
		if (mux_callf(M, "echo.echo", &r, 30000, "i", (int64_t)7) !=
		    MUX_OK)
			echo_bad++;
		dt = t_now_ms() - t0;
		if (dt > echo_max_ms)
			echo_max_ms = dt;
		echo_calls++;
		mux_result_free(&r);
	}
	return NULL;
}

int
main(void)
{
	pthread_t th[20], e;
	char err[MUX_ERRLEN];
	t_server s;
	int i;

	t_watchdog(120);
	if (t_server_start(&s,
	    "workers: 2\n"
	    "plugins:\n"
	    "  - name: echo\n"
	    "    path: @B@/plugins/echo.so\n"
	    "  - name: sleep\n"
	    "    path: @B@/plugins/sleep.so\n"
	    "    workers: 2\n"
	    "    queue: 4\n", NULL) != 0)
		bail_out("cannot start demuxd");
	M = mux_connect(s.uri, err, sizeof(err));
	if (M == NULL)
		bail_out("connect: %s", err);

	pthread_create(&e, NULL, echoer, NULL);
	for (i = 0; i < 20; i++)
		pthread_create(&th[i], NULL, sleeper, NULL);
	for (i = 0; i < 20; i++)
		pthread_join(th[i], NULL);
	atomic_store(&stop_echo, 1);
	pthread_join(e, NULL);

	ok(atomic_load(&ran) >= 2 && atomic_load(&ran) <= 6 + 2,
	    "sleep (2 workers, queue 4), 20 concurrent 400 ms calls: %d ran",
	    atomic_load(&ran));
	ok(atomic_load(&overloaded) >= 20 - 8 && atomic_load(&other) == 0,
	    "...%d answered -32010 naming the plugin, %d anything else",
	    atomic_load(&overloaded), atomic_load(&other));
	ok(echo_calls > 10 && echo_bad == 0, "echo kept answering on the same "
	    "connection meanwhile (%d calls)", echo_calls);
	ok(echo_max_ms < 200, "...with its normal latency: slowest %.1f ms, "
	    "well under the 400 ms sleeps that saturate the other pool",
	    echo_max_ms);

	{
		char pool[16];

		t_stat_str(s.uri, "plugins/sleep/pool", pool, sizeof(pool));
		check_str(pool, "own", "$/stats: sleep has a pool of its own");
		t_stat_str(s.uri, "plugins/echo/pool", pool, sizeof(pool));
		check_str(pool, "shared", "$/stats: echo runs on the shared "
		    "pool");
	}
	mux_free(M);
	check_int(t_server_stop(&s), ==, 0, "demuxd stops cleanly");
	done_testing();
	return exit_status();
}
