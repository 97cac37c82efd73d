/*
 * 205-reload-refs.c - a generation lives as long as anything can touch it.
 *
 * The crashes an audit found through SIGHUP, each made to happen here:
 *  1. a job queued under an older generation, behind two reloads (the first
 *     keeps the plugin, the second replaces it), still runs on its code;
 *  2. with on-demand workers and timeout_ms, a handler still running after
 *     its caller got -32011 keeps its code mapped through a reload;
 *  3. /metrics scraped during reloads that free method names.
 * And what reloads must not cost: counters of a method that survives a
 * reload are kept; a reload that changes nothing does not grow the server.
 * Under AddressSanitizer (make asan) 1-3 crash the old code.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

static char plugdir[64];

static void
install(const char *which)
{
	char cmd[512];

	/* a new file at the same path, replaced atomically */
	snprintf(cmd, sizeof(cmd), "cp %s %s/ver.so.new && mv %s/ver.so.new "
	    "%s/ver.so", t_build(which), plugdir, plugdir, plugdir);
	if (system(cmd) != 0)
		bail_out("cannot install %s", which);
}

/* SIGHUP, then wait until $/stats counts reload number `n` (done or
 * refused): the reload has been handled. */
static int
reload(t_server *s, long n)
{
	double t0 = t_now_ms();

	kill(s->pid, SIGHUP);
	while (t_now_ms() - t0 < 10000) {
		long done = t_stat(s->uri, "server", "reloads"),
		    failed = t_stat(s->uri, "server", "reload_failures");

		if (done < 0)
			return 0;	/* the server is gone */
		if (done + failed >= n)
			return done >= n;
	}
	return 0;
}

static int
wait_stat(const char *uri, const char *path, long want)
{
	double t0 = t_now_ms();

	while (t_now_ms() - t0 < 10000)
		if (t_stat_path(uri, path) == want)
			return 1;
	return 0;
}

/* What a call answered: "v1", "v2", or why not. */
static void
answer_of(int rc, const mux_result *r, char *out, size_t len)
{
	const char *str;
	size_t n;

	if (rc == MUX_OK && mux_unpack(r->data, r->len, "s", &str, &n) == 0)
		snprintf(out, len, "%.*s", (int)n, str);
	else if (rc == MUX_OK)
		snprintf(out, len, "ok");
	else if (rc == MUX_EREMOTE)
		snprintf(out, len, "error %lld: %s", (long long)r->code,
		    r->message ? r->message : "");
	else
		snprintf(out, len, "%s", mux_strerror(rc));
}

static char *
call_ver(const char *uri, char *out, size_t len)
{
	char err[MUX_ERRLEN];
	mux_result r;
	mux_t *m = mux_connect(uri, err, sizeof(err));
	int rc;

	if (m == NULL) {
		snprintf(out, len, "connect: %.100s", err);
		return out;
	}
	rc = mux_call(m, "ver.get", NULL, 0, &r, 5000);
	answer_of(rc, &r, out, len);
	mux_result_free(&r);
	mux_free(m);
	return out;
}

/* ---- 1: a queued job behind two reloads ---- */

typedef struct done {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int n;
	char got[2][160];
} done_t;

static done_t D = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0,
    { "", "" } };

static void
on_done(void *user, int rc, mux_result *r)
{
	long i = (long)user;

	pthread_mutex_lock(&D.mu);
	answer_of(rc, r, D.got[i], sizeof(D.got[i]));
	D.n++;
	pthread_cond_broadcast(&D.cv);
	pthread_mutex_unlock(&D.mu);
}

static void
queued_job_outlives_two_reloads(void)
{
	char yaml[512], err[MUX_ERRLEN], got[160];
	t_server s;
	mux_t *m;

	install("t/plugins/v1.so");
	snprintf(yaml, sizeof(yaml), "workers: 1\nplugins:\n"
	    "  - name: sleep\n    path: @B@/plugins/sleep.so\n"
	    "  - name: ver\n    path: %s/ver.so\n", plugdir);
	if (t_server_start(&s, yaml, NULL) != 0)
		bail_out("cannot start demuxd");
	m = mux_connect(s.uri, err, sizeof(err));
	if (m == NULL)
		bail_out("connect: %s", err);
	/* the only worker sleeps; ver.get waits in the queue behind it */
	if (mux_call_async(m, "sleep.sleep", "\x91\xcd\x01\x90", 4, on_done,
	    (void *)0, 10000) != MUX_OK ||
	    mux_call_async(m, "ver.get", NULL, 0, on_done, (void *)1,
	    10000) != MUX_OK)
		bail_out("async calls not sent");
	ok(wait_stat(s.uri, "pool/queued", 1), "ver.get is queued behind "
	    "sleep.sleep on the one shared worker");
	ok(reload(&s, 1), "reload 1 (nothing changed) done");
	install("t/plugins/v2.so");
	ok(reload(&s, 2), "reload 2 (ver.so replaced) done");
	pthread_mutex_lock(&D.mu);
	while (D.n < 2)
		pthread_cond_wait(&D.cv, &D.mu);
	pthread_mutex_unlock(&D.mu);
	check_str(D.got[1], "v1", "the job queued before both reloads ran on "
	    "the code it was routed to");
	check_str(D.got[0], "ok", "sleep.sleep finished too");
	check_str(call_ver(s.uri, got, sizeof(got)), "v2", "new calls get "
	    "the new code");
	mux_free(m);
	check_int(t_server_stop(&s), ==, 0, "demuxd stops cleanly");
}

/* ---- 2: on-demand, a handler running past its deadline ---- */

static void
timed_out_handler_keeps_its_code(void)
{
	char yaml[512], err[MUX_ERRLEN], got[160];
	mux_result r;
	t_server s;
	mux_t *m;
	int64_t code;
	int rc;

	install("t/plugins/v1.so");
	snprintf(yaml, sizeof(yaml), "workers: on-demand\nplugins:\n"
	    "  - name: ver\n    path: %s/ver.so\n    timeout_ms: 100\n",
	    plugdir);
	if (t_server_start(&s, yaml, NULL) != 0)
		bail_out("cannot start demuxd");
	m = mux_connect(s.uri, err, sizeof(err));
	if (m == NULL)
		bail_out("connect: %s", err);
	rc = mux_call(m, "ver.slow", "\x91\xcd\x02\x58", 4, &r, 5000);
	answer_of(rc, &r, got, sizeof(got));
	code = r.code;
	mux_result_free(&r);
	ok(rc == MUX_EREMOTE && code == -32011, "ver.slow [600] is "
	    "answered -32011 at its 100 ms deadline (got: %s)", got);
	check_int(t_stat_path(s.uri, "pool/busy"), ==, 1, "its handler is "
	    "still running");
	install("t/plugins/v2.so");
	ok(reload(&s, 1), "reload (ver.so replaced) done while it runs");
	ok(wait_stat(s.uri, "pool/busy", 0), "the handler returned");
	check_str(call_ver(s.uri, got, sizeof(got)), "v2", "demuxd is alive "
	    "and serves the new code");
	mux_free(m);
	check_int(t_server_stop(&s), ==, 0, "demuxd stops cleanly");
}

/* ---- 3: /metrics during reloads ---- */

#define RELOADS 100
#define RELOADS_S "100"
static atomic_int scrape_stop, scrapes, scrape_fail;
static int metrics_port;

static void *
scraper(void *arg)
{
	static const char req[] = "GET /metrics HTTP/1.0\r\n\r\n";
	struct sockaddr_in sa;
	char buf[65536];
	ssize_t n;
	size_t got;
	int fd;

	(void)arg;
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)metrics_port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	while (!atomic_load(&scrape_stop)) {
		fd = socket(AF_INET, SOCK_STREAM, 0);
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
		    write(fd, req, sizeof(req) - 1) < 0) {
			atomic_fetch_add(&scrape_fail, 1);
			close(fd);
			continue;
		}
		got = 0;
		while ((n = read(fd, buf + got, sizeof(buf) - 1 - got)) > 0)
			got += (size_t)n;
		buf[got] = 0;
		close(fd);
		if (strstr(buf, "method=\"ver.get\"") != NULL)
			atomic_fetch_add(&scrapes, 1);
		else
			atomic_fetch_add(&scrape_fail, 1);
	}
	return NULL;
}

static void
metrics_during_reloads(void)
{
	char yaml[512], got[160];
	pthread_t th[2];
	t_server s;
	int i, all = 1;

	install("t/plugins/v1.so");
	metrics_port = t_free_port();
	snprintf(yaml, sizeof(yaml), "metrics: \"tcp:127.0.0.1:%d\"\n"
	    "plugins:\n  - name: ver\n    path: %s/ver.so\n", metrics_port,
	    plugdir);
	if (t_server_start(&s, yaml, NULL) != 0)
		bail_out("cannot start demuxd");
	call_ver(s.uri, got, sizeof(got));
	for (i = 0; i < 2; i++)
		pthread_create(&th[i], NULL, scraper, NULL);
	for (i = 1; i <= RELOADS && all; i++) {
		install(i % 2 ? "t/plugins/v2.so" : "t/plugins/v1.so");
		all = reload(&s, i);
	}
	atomic_store(&scrape_stop, 1);
	for (i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	ok(all, RELOADS_S " reloads, each replacing the plugin, done while /metrics "
	    "was scraped (%d scrapes, %d failed)", atomic_load(&scrapes),
	    atomic_load(&scrape_fail));
	check_int(atomic_load(&scrape_fail), ==, 0, "every scrape answered "
	    "with the method's series");
	check_str(call_ver(s.uri, got, sizeof(got)), "v1", "the last code "
	    "serves");
	check_int(t_server_stop(&s), ==, 0, "demuxd stops cleanly");
}

/* ---- counters and memory across reloads ---- */

static void
counters_and_memory(void)
{
	char yaml[512], got[160];
	long rss0, rss1;
	t_server s;
	int i, all = 1;

	install("t/plugins/v1.so");
	snprintf(yaml, sizeof(yaml), "plugins:\n  - name: ver\n"
	    "    path: %s/ver.so\n", plugdir);
	if (t_server_start(&s, yaml, NULL) != 0)
		bail_out("cannot start demuxd");
	for (i = 0; i < 5; i++)
		call_ver(s.uri, got, sizeof(got));
	ok(reload(&s, 1), "a reload that changes nothing");
	check_int(t_stat_path(s.uri, "methods/ver.get/calls"), ==, 5,
	    "ver.get's counters survive it");
	install("t/plugins/v2.so");
	ok(reload(&s, 2), "a reload that replaces the plugin");
	call_ver(s.uri, got, sizeof(got));
	check_int(t_stat_path(s.uri, "methods/ver.get/calls"), ==, 6,
	    "a method served under the same name keeps counting");

	for (i = 3; i <= 22 && all; i++)	/* warm up the allocator */
		all = reload(&s, i);
	rss0 = t_rss_kb(s.pid);
	for (; i <= 322 && all; i++)
		all = reload(&s, i);
	rss1 = t_rss_kb(s.pid);
	ok(all, "300 more reloads that change nothing");
	if (getenv("SAN_FLAGS") && *getenv("SAN_FLAGS"))
		diag("RSS %ld -> %ld kB (not checked under a sanitizer: its "
		    "quarantine keeps freed memory)", rss0, rss1);
	else
		ok(rss1 - rss0 < 2048, "they do not grow the server: RSS %ld -> "
		    "%ld kB (each generation is freed after its last job)",
		    rss0, rss1);
	check_int(t_server_stop(&s), ==, 0, "demuxd stops cleanly");
}

int
main(void)
{
	char cmd[128];

	t_watchdog(120);
	snprintf(plugdir, sizeof(plugdir), "/tmp/demux-t.XXXXXX");
	if (mkdtemp(plugdir) == NULL)
		bail_out("mkdtemp");
	queued_job_outlives_two_reloads();
	timed_out_handler_keeps_its_code();
	metrics_during_reloads();
	counters_and_memory();
	snprintf(cmd, sizeof(cmd), "rm -rf %s", plugdir);
	if (system(cmd) != 0)
		diag("cannot remove %s", plugdir);
	done_testing();
	return exit_status();
}
