/*
 * 185-isolation.c - isolation: process. A plugin that segfaults, aborts,
 * exits, hangs or leaks runs in child processes: its callers get -32014
 * (or -32010 while no child is up), everyone else sees nothing, demuxd's
 * pid never changes; hung calls get their child killed, leaking children
 * are recycled without a failed call, and `user:` is applied.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

static const char *CONF =
    "workers: 8\n"
    "plugins:\n"
    "  - name: echo\n"
    "    path: @B@/plugins/echo.so\n"
    "  - name: crashy\n"
    "    path: @B@/t/plugins/crashy.so\n"
    "    isolation: process\n"
    "    processes: 2\n"
    "    workers: 4\n"
    "    respawn_min_ms: 10\n"
    "    respawn_max_ms: 100\n"
    "  - name: loop\n"		/* 200 crashes in a row */
    "    path: @B@/t/plugins/crashy.so\n"
    "    isolation: process\n"
    "    respawn_min_ms: 5\n"
    "    respawn_max_ms: 20\n"
    "  - name: hangy\n"
    "    path: @B@/t/plugins/crashy.so\n"
    "    isolation: process\n"
    "    workers: 2\n"
    "    timeout_ms: 300\n"
    "    kill_after_ms: 300\n"
    "    respawn_min_ms: 10\n"
    "  - name: recy\n"
    "    path: @B@/t/plugins/crashy.so\n"
    "    isolation: process\n"
    "    max_requests: 50\n"
    "  - name: leaky\n"
    "    path: @B@/t/plugins/crashy.so\n"
    "    isolation: process\n"
    "    max_rss_mb: 64\n"
    "%s";

static t_server S;
static mux_t *M;
static int metrics_port;

static int
call_i(const char *method, int64_t arg, int timeout_ms, mux_result *r)
{
	return mux_callf(M, method, r, timeout_ms, "i", arg);
}

/* The pid a plugin's call ran in (crashy.pid), or -1. */
static long
child_pid(const char *plugin)
{
	char m[64];
	mux_result r;
	int64_t pid = -1, uid, n;

	snprintf(m, sizeof(m), "%s.pid", plugin);
	if (mux_call(M, m, NULL, 0, &r, 10000) != MUX_OK ||
	    mux_unpack(r.data, r.len, "[iii]", &pid, &uid, &n) != MUX_OK)
		pid = -1;
	mux_result_free(&r);
	return (long)pid;
}

/* Call plugin.echo until it answers (a child is up again), at most ms. */
static int
wait_serving(const char *plugin, int ms)
{
	char m[64];
	double t0 = t_now_ms();
	mux_result r;
	int rc;

	snprintf(m, sizeof(m), "%s.echo", plugin);
	do {
		rc = mux_call(M, m, NULL, 0, &r, 5000);
		mux_result_free(&r);
		if (rc == MUX_OK)
			return 1;
		sched_yield();
	} while (t_now_ms() - t0 < ms);
	return 0;
}

static void
expect_crash(const char *method, const char *how)
{
	mux_result r;
	int rc = call_i(method, 3, 10000, &r);

	/* under AddressSanitizer its own handler ends a faulting child with
	 * exit status 1 before ours can name the signal */
	if (getenv("SAN_FLAGS") && *getenv("SAN_FLAGS") &&
	    strncmp(how, "SIG", 3) == 0 && r.message != NULL &&
	    strstr(r.message, "exit status 1") != NULL)
		how = "exit status 1";

	check_int(rc, ==, MUX_EREMOTE, "%s: answered with an error", method);
	check_int(r.code, ==, -32014, "%s: -32014 plugin crashed", method);
	ok(r.message != NULL && strstr(r.message, how) != NULL &&
	    strstr(r.message, method) != NULL && strstr(r.message,
	    "effect is unknown") != NULL, "%s: the message names the method "
	    "and %s: %s", method, how, r.message ? r.message : "(none)");
	mux_result_free(&r);
	ok(wait_serving("crashy", 10000), "...and crashy serves again");
}

/* ---- the basics ---- */

static void
test_basics(void)
{
	mux_result r;
	long pid = child_pid("crashy");

	ok(pid > 0 && pid != (long)S.pid, "crashy runs in a process of its "
	    "own (pid %ld, demuxd %d)", pid, (int)S.pid);
	check_int(t_stat_path(S.uri, "plugins/crashy/children_up"), ==, 2,
	    "$/stats: 2 children up (processes: 2)");
	{
		char iso[16];

		t_stat_str(S.uri, "plugins/crashy/isolation", iso, sizeof(iso));
		check_str(iso, "process", "$/stats: crashy's isolation");
		t_stat_str(S.uri, "plugins/echo/isolation", iso, sizeof(iso));
		check_str(iso, "thread", "$/stats: echo's isolation");
	}
	check_int(mux_call(M, "$/plugins", NULL, 0, &r, 5000), ==, MUX_OK,
	    "$/plugins answers");
	check_int(t_has_str(r.data, r.len, "1.2.3"), ==, 1, "$/plugins: the "
	    "version the child reported");
	check_int(t_has_str(r.data, r.len, "crashy.sometimes"), ==, 1,
	    "$/plugins: the methods the child reported");
	check_int(t_has_str(r.data, r.len, "children"), ==, 1, "$/plugins: "
	    "the children");
	mux_result_free(&r);
	check_int(mux_callf(M, "crashy.echo", &r, 5000, "si", "x", (int64_t)7),
	    ==, MUX_OK, "a call to a process-mode plugin is answered");
	mux_result_free(&r);
	check_int(mux_call(M, "crashy.nosuch", NULL, 0, &r, 5000), ==,
	    MUX_EREMOTE, "an unknown method of it is refused by demuxd");
	check_int(r.code, ==, -32601, "...-32601");
	mux_result_free(&r);
}

/* ---- neighbours during a crash loop ---- */

#define SIDE 16
static atomic_int stop_all, echo_err, echo_ok, f_ok, f_crash, f_over, f_bad;

static void *
echo_thread(void *arg)
{
	mux_result r;
	int64_t v;

	(void)arg;
	while (!atomic_load(&stop_all)) {
		int rc = mux_callf(M, "echo.echo", &r, 10000, "i", (int64_t)5);

		if (rc == MUX_OK && mux_unpack(r.data, r.len, "[i]", &v) ==
		    MUX_OK && v == 5)
			atomic_fetch_add(&echo_ok, 1);
		else if (atomic_fetch_add(&echo_err, 1) < 3)
			diag("echo: %s (%s)", mux_strerror(rc), r.message ?
			    r.message : "");
		mux_result_free(&r);
	}
	return NULL;
}

static void *
faulty_thread(void *arg)
{
	mux_result r;

	(void)arg;
	while (!atomic_load(&stop_all)) {
		int rc = call_i("crashy.sometimes", 40, 10000, &r);

		if (rc == MUX_OK)
			atomic_fetch_add(&f_ok, 1);
		else if (rc == MUX_EREMOTE && r.code == -32014)
			atomic_fetch_add(&f_crash, 1);
		else if (rc == MUX_EREMOTE && r.code == -32010)
			atomic_fetch_add(&f_over, 1);
		else if (atomic_fetch_add(&f_bad, 1) < 3)
			diag("crashy: %s %lld (%s)", mux_strerror(rc),
			    (long long)r.code, r.message ? r.message : "");
		mux_result_free(&r);
	}
	return NULL;
}

static void
test_neighbours(void)
{
	pthread_t e[SIDE], f[SIDE];
	long rss0 = t_rss_kb(S.pid), rss1;
	int i;

	for (i = 0; i < SIDE; i++) {
		pthread_create(&e[i], NULL, echo_thread, NULL);
		pthread_create(&f[i], NULL, faulty_thread, NULL);
	}
	t_run_for(getenv("DEMUX_VALGRIND") ? 6000 : 3000);
	atomic_store(&stop_all, 1);
	for (i = 0; i < SIDE; i++) {
		pthread_join(e[i], NULL);
		pthread_join(f[i], NULL);
	}
	rss1 = t_rss_kb(S.pid);
	diag("echo: %d calls; crashy: %d answered, %d -32014, %d -32010",
	    echo_ok, f_ok, f_crash, f_over);
	check_int(atomic_load(&echo_err), ==, 0, "16 threads calling echo "
	    "(thread mode) during the crash loop: no error");
	ok(atomic_load(&echo_ok) > 100, "...and they kept being served "
	    "(%d calls)", atomic_load(&echo_ok));
	ok(atomic_load(&f_crash) > 0, "the crashing plugin crashed (%d "
	    "calls answered -32014)", atomic_load(&f_crash));
	check_int(atomic_load(&f_bad), ==, 0, "every call to it got its "
	    "result, -32014 or -32010: none hung or failed otherwise");
	check_int(kill(S.pid, 0), ==, 0, "demuxd's pid is unchanged");
	ok(rss0 > 0 && rss1 - rss0 < 64 * 1024, "demuxd's RSS stays bounded "
	    "(%ld -> %ld KiB)", rss0, rss1);
	ok(t_stat_path(S.uri, "plugins/crashy/crashes_by/SIGSEGV") > 0,
	    "$/stats counts the crashes by signal (%ld SIGSEGV)",
	    t_stat_path(S.uri, "plugins/crashy/crashes_by/SIGSEGV"));
	ok(wait_serving("crashy", 10000), "crashy serves again after the "
	    "loop");
	{
		char cmd[128], buf[65536];
		size_t n;
		FILE *p;

		snprintf(cmd, sizeof(cmd), "curl -s http://127.0.0.1:%d/metrics",
		    metrics_port);
		p = popen(cmd, "r");
		n = p ? fread(buf, 1, sizeof(buf) - 1, p) : 0;
		buf[n] = '\0';
		if (p)
			pclose(p);
		ok(strstr(buf, "demux_plugin_crashes_total{plugin=\"crashy\","
		    "signal=\"SIGSEGV\"}") != NULL && strstr(buf,
		    "demux_plugin_children{plugin=\"crashy\"}") != NULL,
		    "/metrics has the children and the crashes by signal");
	}
}

/* ---- 200 crashes in a row ---- */

static void
test_backoff(void)
{
	int crashes = 0, refused = 0, other = 0, rc;
	long respawns0 = t_stat_path(S.uri, "plugins/loop/respawns"), n;
	double t0 = t_now_ms(), dt;
	mux_result r;

	while (crashes < 200 && t_now_ms() - t0 < 60000) {
		rc = mux_call(M, "loop.segv", NULL, 0, &r, 10000);
		if (rc == MUX_EREMOTE && r.code == -32014)
			crashes++;
		else if (rc == MUX_EREMOTE && r.code == -32010)
			refused++;
		else
			other++;
		mux_result_free(&r);
		if (rc == MUX_EREMOTE && r.code == -32010)
			sched_yield();
	}
	dt = t_now_ms() - t0;
	n = t_stat_path(S.uri, "plugins/loop/respawns") - respawns0;
	check_int(crashes, ==, 200, "200 crashes in a row, each answered "
	    "-32014 (%d calls refused -32010 while no child was up)",
	    refused);
	check_int(other, ==, 0, "...nothing else");
	/* the backoff doubles from 5 to 20 ms: 200 respawns take at least
	 * ~190 x 20 ms; a busy loop would take a fraction of that */
	ok(dt >= 190 * 20 * 0.9, "respawns follow the backoff: 200 crashes "
	    "took %.0f ms (>= ~%d ms at respawn_max_ms 20)", dt, 190 * 20);
	ok(n >= 199, "...%ld respawns", n);
	ok(wait_serving("loop", 5000), "the plugin serves again once the "
	    "crashes stop");
}

/* ---- a hung call ---- */

static void
test_hang(void)
{
	long pid0 = child_pid("hangy"), pid1;
	double t0;
	mux_result r;
	int rc;

	t0 = t_now_ms();
	rc = mux_call(M, "hangy.stuck", NULL, 0, &r, 20000);
	check_int(rc, ==, MUX_EREMOTE, "a hung call is answered");
	check_int(r.code, ==, -32011, "...-32011 at its deadline");
	mux_result_free(&r);
	/* its child is killed 300 ms later: wait for the kill, counted */
	while (t_stat_path(S.uri, "plugins/hangy/kills") < 1 &&
	    t_now_ms() - t0 < 10000)
		sched_yield();
	check_int(t_stat_path(S.uri, "plugins/hangy/kills"), ==, 1, "its "
	    "child was killed (timeout_ms + kill_after_ms)");
	ok(t_now_ms() - t0 >= 600 * 0.9, "...no earlier than 300 + 300 ms "
	    "(%.0f ms)", t_now_ms() - t0);
	ok(wait_serving("hangy", 10000), "hangy serves again");
	pid1 = child_pid("hangy");
	ok(pid1 > 0 && pid1 != pid0, "...from a new child (%ld, was %ld)",
	    pid1, pid0);
}

/* ---- recycling ---- */

static atomic_int rec_fail;

static void *
recy_thread(void *arg)
{
	mux_result r;
	int i;

	(void)arg;
	for (i = 0; i < 100; i++) {
		if (mux_call(M, "recy.echo", NULL, 0, &r, 10000) != MUX_OK &&
		    atomic_fetch_add(&rec_fail, 1) < 3)
			diag("recy: %s", r.message ? r.message : "");
		mux_result_free(&r);
	}
	return NULL;
}

static void
test_recycle(void)
{
	long pids[512], pid;
	int n = 0, i, k, fails = 0;
	pthread_t th[4];

	for (i = 0; i < 200; i++) {
		pid = child_pid("recy");
		if (pid < 0) {
			fails++;
			continue;
		}
		for (k = 0; k < n && pids[k] != pid; k++)
			;
		if (k == n && n < 512)
			pids[n++] = pid;
	}
	check_int(fails, ==, 0, "max_requests 50: 200 calls, none failed");
	/* a child goes on serving until its replacement is up, so a slow
	 * start (sanitizers, valgrind) means fewer, longer-lived children:
	 * the burst may see only one; the replacement must come all the same */
	{
		double t0 = t_now_ms();

		while (n < 2 && t_now_ms() - t0 < 20000) {
			pid = child_pid("recy");
			if (pid > 0 && pid != pids[0])
				pids[n++] = pid;
			else
				sched_yield();
		}
	}
	ok(n >= 2, "...served by %d children in turn", n);
	for (i = 0; i < 4; i++)
		pthread_create(&th[i], NULL, recy_thread, NULL);
	for (i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	check_int(atomic_load(&rec_fail), ==, 0, "4 threads x 100 calls "
	    "across recycles: none failed");
	ok(t_stat_path(S.uri, "plugins/recy/recycles/max_requests") >= 2,
	    "$/stats counts the recycles (%ld)",
	    t_stat_path(S.uri, "plugins/recy/recycles/max_requests"));
	check_int(t_stat_path(S.uri, "plugins/recy/crashes"), ==, 0, "...and "
	    "no crash");

	/* leaking 10 MiB a call, recycled past 64 MiB */
	{
		long first = child_pid("leaky");
		double t0 = t_now_ms();
		mux_result r;

		for (i = 0, fails = 0; i < 40; i++) {
			if (call_i("leaky.leak", 10, 10000, &r) != MUX_OK)
				fails++;
			mux_result_free(&r);
		}
		while (t_stat_path(S.uri, "plugins/leaky/recycles/max_rss_mb") <
		    1 && t_now_ms() - t0 < 10000)
			sched_yield();
		check_int(fails, ==, 0, "a child leaking 10 MiB a call: 40 "
		    "calls, none failed");
		ok(t_stat_path(S.uri, "plugins/leaky/recycles/max_rss_mb") >=
		    1, "...it was recycled past max_rss_mb 64");
		ok(wait_serving("leaky", 10000) && child_pid("leaky") !=
		    first, "...and a new child serves");
	}
}

/* ---- user: ---- */

static void
test_user(void)
{
	struct passwd *pw = getpwnam("nobody");
	t_server s2;
	char yaml[4096];
	mux_t *m;
	mux_result r;
	int64_t pid, uid = -1, n;
	char err[MUX_ERRLEN];

	if (geteuid() != 0 || pw == NULL) {
		ok(1, "# SKIP user: needs root and a user nobody");
		return;
	}
	snprintf(yaml, sizeof(yaml), "plugins:\n"
	    "  - name: nob\n"
	    "    path: @B@/t/plugins/crashy.so\n"
	    "    isolation: process\n"
	    "    user: nobody\n");
	if (t_server_start(&s2, yaml, NULL) != 0) {
		ok(0, "a server with user: nobody starts");
		return;
	}
	m = mux_connect(s2.uri, err, sizeof(err));
	if (m != NULL && mux_call(m, "nob.pid", NULL, 0, &r, 5000) == MUX_OK &&
	    mux_unpack(r.data, r.len, "[iii]", &pid, &uid, &n) == MUX_OK)
		mux_result_free(&r);
	check_int(uid, ==, (int64_t)pw->pw_uid, "user: nobody: the child "
	    "runs as nobody (uid %lld)", (long long)uid);
	if (m != NULL)
		mux_free(m);
	check_int(t_server_stop(&s2), ==, 0, "...and stops cleanly");
}

int
main(void)
{
	char err[MUX_ERRLEN], yaml[4096], extra[128];

	t_watchdog(300);
	metrics_port = t_free_port();
	snprintf(extra, sizeof(extra), "metrics: \"tcp:127.0.0.1:%d\"\n",
	    metrics_port);
	snprintf(yaml, sizeof(yaml), CONF, extra);
	if (t_server_start(&S, yaml, NULL) != 0)
		bail_out("cannot start demuxd");
	M = mux_connect(S.uri, err, sizeof(err));
	if (M == NULL)
		bail_out("connect: %s", err);

	test_basics();
	expect_crash("crashy.segv", "SIGSEGV");
	expect_crash("crashy.abort", "SIGABRT");
	expect_crash("crashy.exit", "exit status 3");
	test_neighbours();
	test_backoff();
	test_hang();
	test_recycle();
	test_user();

	mux_free(M);
	check_int(t_server_stop(&S), ==, 0, "demuxd stops cleanly, its "
	    "children with it%s", getenv("DEMUX_VALGRIND") ?
	    " (and valgrind found no leak)" : "");
	done_testing();
	return exit_status();
}
