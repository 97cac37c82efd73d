/*
 * 186-isolation-reload.c - process-mode plugins through start-up, reload
 * and drain: a child that cannot start stops demuxd (exit 2, naming the
 * plugin and why); a reload that changes the plugin gets new children
 * before routing switches, under load with no failed call, and the old
 * ones exit; a reload whose new child fails keeps the old ones; SIGTERM
 * under load answers every call and takes the children with demuxd.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

static const char *CONF1 =
    "workers: 4\n"
    "plugins:\n"
    "  - name: crashy\n"
    "    path: @B@/t/plugins/crashy.so\n"
    "    isolation: process\n"
    "    workers: 2\n";

static t_server S;
static atomic_int stop_load, load_ok, load_bad, load_draining;

static long
child_pid(mux_t *m)
{
	mux_result r;
	int64_t pid = -1, uid, n;

	if (mux_call(m, "crashy.pid", NULL, 0, &r, 10000) != MUX_OK ||
	    mux_unpack(r.data, r.len, "[iii]", &pid, &uid, &n) != MUX_OK)
		pid = -1;
	mux_result_free(&r);
	return (long)pid;
}

static void *
loader(void *arg)
{
	mux_t *m = arg;
	mux_result r;
	int rc;

	while (!atomic_load(&stop_load)) {
		rc = mux_call(m, "crashy.echo", NULL, 0, &r, 10000);
		if (rc == MUX_OK)
			atomic_fetch_add(&load_ok, 1);
		else if (rc == MUX_EDRAINING || (rc == MUX_EREMOTE &&
		    r.code == -32012 && r.message != NULL &&
		    strstr(r.message, "not executed") != NULL) ||
		    rc == MUX_ENOTCONN)
			atomic_fetch_add(&load_draining, 1);
		else if (atomic_fetch_add(&load_bad, 1) < 3)
			diag("call: %s %lld (%s)", mux_strerror(rc),
			    (long long)r.code, r.message ? r.message : "");
		mux_result_free(&r);
		if (rc == MUX_EDRAINING || rc == MUX_ENOTCONN)
			break;
	}
	return NULL;
}

static void
write_conf(const char *text)
{
	char buf[4096], *at;
	FILE *fp;
	size_t i;

	/* @B@ as t_server_start expands it */
	buf[0] = '\0';
	for (i = 0; text[i] != '\0';) {
		at = strstr(text + i, "@B@");
		if (at == NULL) {
			strncat(buf, text + i, sizeof(buf) - strlen(buf) - 1);
			break;
		}
		strncat(buf, text + i, (size_t)(at - (text + i)));
		strncat(buf, t_build(""), sizeof(buf) - strlen(buf) - 1);
		if (buf[strlen(buf) - 1] == '/')
			buf[strlen(buf) - 1] = '\0';
		i = (size_t)(at - text) + 3;
	}
	fp = fopen(S.conf, "w");
	fprintf(fp, "listen: [ \"unix:demux.sock\" ]\n%s", buf);
	fclose(fp);
}

static void
wait_reloads(const char *key, long n)
{
	double t0 = t_now_ms();

	while (t_stat(S.uri, "server", key) < n && t_now_ms() - t0 < 20000)
		sched_yield();
}

static int
gone(long pid)
{
	double t0 = t_now_ms();

	/* the old child exits once it has answered its calls (it is not
	 * ours to reap: demuxd does) */
	while (kill((pid_t)pid, 0) == 0 && t_now_ms() - t0 < 15000) {
		char path[64], st = 0;
		FILE *f;

		snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
		if ((f = fopen(path, "r")) != NULL) {
			if (fscanf(f, "%*d %*s %c", &st) != 1)
				st = 0;
			fclose(f);
		}
		if (st == 'Z')
			return 1;	/* exited, not yet reaped */
		sched_yield();
	}
	return kill((pid_t)pid, 0) != 0;
}

static void
test_start_failure(void)
{
	char cmd[2048], out[4096];
	size_t n;
	FILE *p, *f;
	int st;

	snprintf(cmd, sizeof(cmd), "%s/bad.yaml", S.dir);
	f = fopen(cmd, "w");
	fprintf(f, "plugins:\n  - name: bad\n    path: %s\n"
	    "    isolation: process\n", t_build("t/plugins/initfail.so"));
	fclose(f);
	snprintf(cmd, sizeof(cmd), "%s --check -c %s/bad.yaml 2>&1",
	    t_build("demuxd"), S.dir);
	p = popen(cmd, "r");
	n = p ? fread(out, 1, sizeof(out) - 1, p) : 0;
	out[n] = '\0';
	st = p ? pclose(p) : -1;
	check_int(WIFEXITED(st) ? WEXITSTATUS(st) : -1, ==, 2, "a process-"
	    "mode plugin whose child cannot start: demuxd exits 2");
	ok(strstr(out, "plugin 'bad'") != NULL && strstr(out,
	    "database unreachable") != NULL, "...naming the plugin and the "
	    "child's reason: %s", out);
}

int
main(void)
{
	char err[MUX_ERRLEN], conf2[1024];
	pthread_t th[8];
	mux_t *m[8], *ctl;
	long pid0, pid1;
	int i, st;

	t_watchdog(240);
	if (t_server_start(&S, CONF1, NULL) != 0)
		bail_out("cannot start demuxd");
	ctl = mux_connect(S.uri, err, sizeof(err));
	if (ctl == NULL)
		bail_out("connect: %s", err);
	test_start_failure();

	/* reload under load: processes 1 -> 2 is a changed plugin */
	pid0 = child_pid(ctl);
	ok(pid0 > 0, "crashy runs in child %ld", pid0);
	for (i = 0; i < 8; i++) {
		m[i] = mux_connect(S.uri, err, sizeof(err));
		if (m[i] == NULL)
			bail_out("connect: %s", err);
		pthread_create(&th[i], NULL, loader, m[i]);
	}
	t_run_for(300);
	snprintf(conf2, sizeof(conf2), "%sprocesses: 2\n", CONF1);
	/* indent the new key like the others */
	{
		char *k = strstr(conf2, "processes: 2");

		memmove(k + 4, k, strlen(k) + 1);
		memcpy(k, "    ", 4);
	}
	write_conf(conf2);
	kill(S.pid, SIGHUP);
	wait_reloads("reloads", 1);
	check_int(t_stat(S.uri, "server", "reloads"), ==, 1, "the reload was "
	    "done");
	t_run_for(300);
	check_int(t_stat_path(S.uri, "plugins/crashy/children_up"), ==, 2,
	    "the new generation's plugin has its 2 children");
	pid1 = child_pid(ctl);
	ok(pid1 > 0 && pid1 != pid0, "calls go to a new child (%ld, was %ld)",
	    pid1, pid0);
	ok(gone(pid0), "the old child exits once its calls are answered");

	/* a reload whose new child cannot start changes nothing */
	{
		char bad[2048];

		snprintf(bad, sizeof(bad), "%s  - name: bad\n    path: "
		    "@B@/t/plugins/initfail.so\n    isolation: process\n",
		    conf2);
		write_conf(bad);
		kill(S.pid, SIGHUP);
		wait_reloads("reload_failures", 1);
		check_int(t_stat(S.uri, "server", "reload_failures"), ==, 1,
		    "a reload whose new plugin's child fails init is refused");
		check_int(t_stat_path(S.uri, "plugins/crashy/children_up"), ==,
		    2, "...and the running children stay");
	}

	/* drain under load */
	t_run_for(200);
	kill(S.pid, SIGTERM);
	st = t_server_wait(&S);
	atomic_store(&stop_load, 1);
	for (i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		mux_free(m[i]);
	}
	mux_free(ctl);
	diag("calls: %d answered, %d refused while draining", load_ok,
	    load_draining);
	check_int(atomic_load(&load_bad), ==, 0, "8 threads across two "
	    "reloads and a drain: no call failed (each answered, or refused "
	    "as not executed while draining)");
	ok(atomic_load(&load_ok) > 100, "...and they were served (%d)",
	    atomic_load(&load_ok));
	check_int(st, ==, 0, "demuxd drained and exited 0");
	ok(gone(pid1), "its children went with it");
	done_testing();
	return exit_status();
}
