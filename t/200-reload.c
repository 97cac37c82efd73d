/*
 * 200-reload.c - SIGHUP under load: 16 threads call on one connection while
 * the plugin's .so is replaced by a build that answers differently and the
 * configuration gains a listener. No call fails, the answers switch over,
 * requests in flight finish on the old code, a broken configuration on a
 * later SIGHUP changes nothing.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

static mux_t *M;
static atomic_int stop, fails, v1, v2, v1_after, switched;
static char plugdir[64];

static void *
caller(void *arg)
{
	long id = (long)arg;
	mux_result r;
	const char *s;
	size_t n;
	int after, rc;

	while (!atomic_load(&stop)) {
		after = atomic_load(&switched);
		if (id % 4 == 0)	/* some calls stay in flight across it */
			rc = mux_callf(M, "ver.slow", &r, 10000, "i",
			    (int64_t)30);
		else
			rc = mux_call(M, "ver.get", NULL, 0, &r, 10000);
		if (rc != MUX_OK || mux_unpack(r.data, r.len, "s", &s, &n) != 0 ||
		    n != 2) {
			if (atomic_fetch_add(&fails, 1) < 3)
				diag("call failed: %s", r.message ? r.message :
				    mux_strerror(rc));
		} else if (memcmp(s, "v1", 2) == 0) {
			atomic_fetch_add(&v1, 1);
			if (after)
				atomic_fetch_add(&v1_after, 1);
		} else {
			atomic_fetch_add(&v2, 1);
		}
		mux_result_free(&r);
	}
	return NULL;
}

static void
write_conf(const char *conf, const char *extra_listen)
{
	FILE *fp = fopen(conf, "w");

	fprintf(fp, "listen: [ \"unix:demux.sock\"%s ]\nworkers: 4\nplugins:\n"
	    "  - name: ver\n    path: %s/ver.so\n", extra_listen, plugdir);
	fclose(fp);
}

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

static int
last_answer_is(const char *want, const char *uri)
{
	char err[MUX_ERRLEN];
	mux_result r;
	const char *s;
	size_t n;
	mux_t *m = uri ? mux_connect(uri, err, sizeof(err)) : M;
	int ok_ = 0;

	if (m == NULL)
		return 0;
	if (mux_call(m, "ver.get", NULL, 0, &r, 5000) == MUX_OK &&
	    mux_unpack(r.data, r.len, "s", &s, &n) == 0 && n == 2 &&
	    memcmp(s, want, 2) == 0)
		ok_ = 1;
	mux_result_free(&r);
	if (uri)
		mux_free(m);
	return ok_;
}

int
main(void)
{
	pthread_t th[16];
	char err[MUX_ERRLEN], uri2[300];
	mux_result r;
	t_server s;
	double t0;
	long i;
	int rc;

	t_watchdog(120);
	snprintf(plugdir, sizeof(plugdir), "/tmp/demux-t.XXXXXX");
	if (mkdtemp(plugdir) == NULL)
		bail_out("mkdtemp");
	install("t/plugins/v1.so");
	{
		char yaml[256];

		snprintf(yaml, sizeof(yaml), "workers: 4\nplugins:\n"
		    "  - name: ver\n    path: %s/ver.so\n", plugdir);
		if (t_server_start(&s, yaml, NULL) != 0)
			bail_out("cannot start demuxd");
	}
	M = mux_connect(s.uri, err, sizeof(err));
	if (M == NULL)
		bail_out("connect: %s", err);
	ok(last_answer_is("v1", NULL), "v1 is served");

	for (i = 0; i < 16; i++)
		pthread_create(&th[i], NULL, caller, (void *)i);
	while (atomic_load(&v1) < 500)
		sched_yield();

	/* swap the code and add a listener, under load */
	install("t/plugins/v2.so");
	write_conf(s.conf, ", \"unix:demux2.sock\"");
	kill(s.pid, SIGHUP);
	t0 = t_now_ms();
	while (!last_answer_is("v2", NULL) && t_now_ms() - t0 < 10000)
		;
	atomic_store(&switched, 1);
	while (atomic_load(&v2) < 2000 && t_now_ms() - t0 < 20000)
		sched_yield();
	atomic_store(&stop, 1);
	for (i = 0; i < 16; i++)
		pthread_join(th[i], NULL);

	check_int(atomic_load(&fails), ==, 0, "16 threads, reload under load: "
	    "no call failed (%d v1 and %d v2 answers)", atomic_load(&v1),
	    atomic_load(&v2));
	ok(atomic_load(&v1) >= 500 && atomic_load(&v2) >= 2000,
	    "the answers switched from v1 to v2 (a changed .so at the same "
	    "path was really reloaded)");
	check_int(atomic_load(&v1_after), ==, 0, "no call made after the "
	    "switch was answered by the old code");
	snprintf(uri2, sizeof(uri2), "unix:%s/demux2.sock", s.dir);
	ok(last_answer_is("v2", uri2), "the listener added by the reload "
	    "serves too");

	rc = mux_call(M, "$/plugins", NULL, 0, &r, 5000);
	check_int(rc, ==, MUX_OK, "$/plugins answers");
	check_int(t_has_str(r.data, r.len, "v2"), ==, 1, "$/plugins shows "
	    "version v2");
	check_int(t_has_str(r.data, r.len, "v1"), ==, 0, "...and no v1");
	mux_result_free(&r);

	/* a broken configuration: nothing changes */
	{
		FILE *fp = fopen(s.conf, "w");

		fprintf(fp, "listen: [ \"unix:demux.sock\"\nworkers: [\n");
		fclose(fp);
	}
	install("t/plugins/v1.so");
	kill(s.pid, SIGHUP);
	/* $/stats says when the refused reload has been handled */
	for (t0 = t_now_ms(), rc = 0; !rc && t_now_ms() - t0 < 10000;) {
		rc = t_stat(s.uri, "server", "reload_failures") == 1;
	}
	check_int(t_stat(s.uri, "server", "reload_failures"), ==, 1,
	    "$/stats: 1 reload refused");
	check_int(t_stat(s.uri, "server", "reloads"), ==, 1, "$/stats: 1 "
	    "reload done");
	ok(last_answer_is("v2", NULL) && last_answer_is("v2", uri2),
	    "a broken configuration on SIGHUP leaves the running one as it "
	    "was (v2, both listeners)");

	mux_free(M);
	check_int(t_server_stop(&s), ==, 0, "demuxd stops cleanly, unloading "
	    "both generations");
	{
		char cmd[128];

		snprintf(cmd, sizeof(cmd), "rm -rf %s", plugdir);
		if (system(cmd) != 0)
			diag("cannot remove %s", plugdir);
	}
	done_testing();
	return exit_status();
}
