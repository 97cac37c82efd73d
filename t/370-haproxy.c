/*
 * 370-haproxy.c - demuxd behind HAProxy (TCP mode): two demuxd and one
 * haproxy on loopback ports, clients connecting to haproxy only. Calls are
 * spread over both servers; one is killed mid-run and every call still ends
 * answered or with a documented error — MUX_ECONN (it was sent on a
 * connection that went with the server) or MUX_ENOTCONN (refused before it
 * was sent, retry elsewhere refused too): none hangs, none is lost, and the
 * handle reconnects through haproxy to the server that is left.
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

#define THREADS 16

static mux_t *M;
static atomic_int stop;
static atomic_long n_calls, n_ok, n_econn, n_notconn, n_other, n_wrong,
    ok_after;
static atomic_int killed;

static void *
caller(void *arg)
{
	long tid = (long)arg, seq = 0;
	int64_t a, b;
	mux_result r;
	int rc;

	while (!atomic_load(&stop)) {
		seq++;
		rc = mux_callf(M, "echo.echo", &r, 10000, "ii", (int64_t)tid,
		    (int64_t)seq);
		atomic_fetch_add(&n_calls, 1);
		if (rc == MUX_OK) {
			atomic_fetch_add(&n_ok, 1);
			if (atomic_load(&killed))
				atomic_fetch_add(&ok_after, 1);
			if (mux_unpack(r.data, r.len, "[ii]", &a, &b) != 0 ||
			    a != tid || b != seq)
				atomic_fetch_add(&n_wrong, 1);
		} else if (rc == MUX_ECONN) {
			atomic_fetch_add(&n_econn, 1);
		} else if (rc == MUX_ENOTCONN) {
			atomic_fetch_add(&n_notconn, 1);
		} else {
			atomic_fetch_add(&n_other, 1);
			diag("unexpected %s: %s", mux_strerror(rc),
			    r.message ? r.message : "");
		}
		mux_result_free(&r);
	}
	return NULL;
}

int
main(void)
{
	char conf[4][512], hcfg[300], err[MUX_ERRLEN], list[400], fe[64];
	int port[2], pf, i, st, rc;
	long r1a, r2a, r2b, r2c;
	pthread_t th[THREADS];
	t_server d[2];
	mux_options o;
	mux_stats ms;
	mux_result r;
	pid_t hp;
	FILE *fp;
	double t0, tk;

	t_watchdog(120);
	if (access("/usr/sbin/haproxy", X_OK) != 0)
		skip_all("haproxy is not installed (Debian package haproxy)");
	for (i = 0; i < 2; i++) {
		port[i] = t_free_port();
		snprintf(conf[i], sizeof(conf[i]), "listen: "
		    "\"tcp:127.0.0.1:%d\"\nworkers: 4\nplugins:\n"
		    "  - name: echo\n    path: @B@/plugins/echo.so\n", port[i]);
		if (t_server_start(&d[i], conf[i], NULL) != 0)
			bail_out("cannot start demuxd %d", i);
		snprintf(d[i].uri, sizeof(d[i].uri), "tcp:127.0.0.1:%d",
		    port[i]);
	}
	pf = t_free_port();
	snprintf(hcfg, sizeof(hcfg), "%s/haproxy.cfg", d[0].dir);
	fp = fopen(hcfg, "w");
	if (fp == NULL)
		bail_out("%s", hcfg);
	fprintf(fp,
	    "global\n  maxconn 1000\n"
	    "defaults\n  mode tcp\n  timeout connect 1s\n"
	    "  timeout client 60s\n  timeout server 60s\n"
	    "  retries 3\n  option redispatch\n"
	    "frontend demux\n  bind 127.0.0.1:%d\n  default_backend demuxd\n"
	    "backend demuxd\n  balance roundrobin\n"
	    "  server d0 127.0.0.1:%d check inter 200 fall 1 rise 1\n"
	    "  server d1 127.0.0.1:%d check inter 200 fall 1 rise 1\n",
	    pf, port[0], port[1]);
	fclose(fp);
	hp = fork();
	if (hp == 0) {
		execl("/usr/sbin/haproxy", "haproxy", "-db", "-q", "-f", hcfg,
		    (char *)NULL);
		_exit(127);
	}
	t_track(hp);
	/* ready once a call goes through it */
	snprintf(fe, sizeof(fe), "tcp:127.0.0.1:%d", pf);
	t0 = t_now_ms();
	for (rc = -1; rc != MUX_OK && t_now_ms() - t0 < 10000;) {
		M = mux_connect(fe, err, sizeof(err));
		if (M != NULL) {
			rc = mux_call(M, "$/ping", NULL, 0, &r, 2000);
			mux_result_free(&r);
			mux_free(M);
		}
		if (rc != MUX_OK)
			t_run_for(20);	/* haproxy has no readiness signal */
	}
	if (rc != MUX_OK)
		bail_out("haproxy on %s did not pass calls: %s", fe, err);
	ok(1, "haproxy on port %d in front of demuxd on %d and %d", pf,
	    port[0], port[1]);

	/* 4 connections through haproxy: round robin puts 2 on each */
	snprintf(list, sizeof(list), "%s,%s,%s,%s", fe, fe, fe, fe);
	mux_options_init(&o);
	o.backoff_min_ms = 20;
	o.backoff_max_ms = 300;
	M = mux_open(list, &o, err, sizeof(err));
	if (M == NULL)
		bail_out("mux_open: %s", err);
	for (i = 0; i < THREADS; i++)
		pthread_create(&th[i], NULL, caller, (void *)(long)i);
	t_run_for(500);
	r1a = t_requests(d[0].uri);
	r2a = t_requests(d[1].uri);
	ok(r1a > 100 && r2a > 100, "calls spread: %ld and %ld requests", r1a,
	    r2a);

	tk = t_now_ms();
	t_server_kill(&d[0]);
	atomic_store(&killed, 1);
	r2b = t_requests(d[1].uri);
	t_run_for(1000);
	r2c = t_requests(d[1].uri);
	atomic_store(&stop, 1);
	for (i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	mux_get_stats(M, &ms);
	ok(atomic_load(&ok_after) > 0 && r2c > r2b, "after the kill the "
	    "other server took the calls: %ld answered, %ld requests there "
	    "in the last second", atomic_load(&ok_after), r2c - r2b);
	check_int(atomic_load(&n_other), ==, 0, "no error but MUX_ECONN and "
	    "MUX_ENOTCONN");
	check_int(atomic_load(&n_wrong), ==, 0, "no answer to the wrong "
	    "caller");
	ok(atomic_load(&n_calls) == atomic_load(&n_ok) +
	    atomic_load(&n_econn) + atomic_load(&n_notconn),
	    "none hung or was lost: %ld calls = %ld answered + %ld MUX_ECONN + "
	    "%ld MUX_ENOTCONN", atomic_load(&n_calls), atomic_load(&n_ok),
	    atomic_load(&n_econn), atomic_load(&n_notconn));
	/* errors: the calls in flight at the kill, and the few sent on a new
	 * connection haproxy still gave the dead backend before its check
	 * (every 200 ms) marked it down */
	ok(atomic_load(&n_econn) + atomic_load(&n_notconn) <= 4 * THREADS,
	    "errors only around the kill (%ld)", atomic_load(&n_econn) +
	    atomic_load(&n_notconn));
	diag("FIGURES calls=%ld ok=%ld econn=%ld enotconn=%ld retries=%llu "
	    "connects=%llu run_after_kill_ms=%.0f", atomic_load(&n_calls),
	    atomic_load(&n_ok), atomic_load(&n_econn), atomic_load(&n_notconn),
	    (unsigned long long)ms.retries, (unsigned long long)ms.connects,
	    t_now_ms() - tk);
	mux_free(M);

	kill(hp, SIGTERM);
	waitpid(hp, &st, 0);
	t_untrack(hp);
	unlink(hcfg);
	check_int(t_server_stop(&d[1]), ==, 0, "demuxd exits 0");
	done_testing();
	return 0;
}
