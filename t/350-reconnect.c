/*
 * 350-reconnect.c - one endpoint with reconnect: calls in flight when the
 * server dies fail at once with MUX_ECONN (effect unknown); calls made while
 * it is down fail fast with MUX_ENOTCONN, or, with wait_connected, wait up
 * to their timeout (sync and async) and go through once it is back; the
 * handle reconnects by itself with backoff.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

static mux_t *M, *W;

typedef struct res {
	int	 rc;
	double	 at;
	char	 msg[MUX_ERRLEN];
} res_t;

static void *
slow_call(void *arg)
{
	res_t *r = arg;
	mux_result x;

	r->rc = mux_callf(M, "sleep.sleep", &x, 30000, "i", (int64_t)5000);
	r->at = t_now_ms();
	snprintf(r->msg, sizeof(r->msg), "%s", x.message ? x.message : "");
	mux_result_free(&x);
	return NULL;
}

static void *
waiting_call(void *arg)
{
	res_t *r = arg;
	mux_result x;

	r->rc = mux_callf(W, "echo.echo", &x, 20000, "s", "back");
	r->at = t_now_ms();
	snprintf(r->msg, sizeof(r->msg), "%s", x.message ? x.message : "");
	mux_result_free(&x);
	return NULL;
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int async_rc = 1, async_done;
static double async_at;

static void
async_cb(void *user, int rc, mux_result *r)
{
	(void)user;
	(void)r;
	pthread_mutex_lock(&mu);
	async_rc = rc;
	async_at = t_now_ms();
	async_done = 1;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
}

int
main(void)
{
	char err[MUX_ERRLEN], one_uri[128];
	mux_endpoint_info info;
	pthread_t th[4], wt;
	res_t r[4], wr;
	mux_options o;
	mux_result x;
	t_server s;
	double t0, tk, tr;
	int i, bad, rc;

	t_watchdog(90);
	if (t_server_start(&s, "workers: 8\nplugins:\n"
	    "  - name: echo\n    path: @B@/plugins/echo.so\n"
	    "  - name: sleep\n    path: @B@/plugins/sleep.so\n", NULL) != 0)
		bail_out("cannot start demuxd");
	mux_options_init(&o);
	o.backoff_min_ms = 20;
	o.backoff_max_ms = 200;
	M = mux_open(s.uri, &o, err, sizeof(err));
	o.wait_connected = 1;
	W = mux_open(s.uri, &o, err, sizeof(err));
	if (M == NULL || W == NULL)
		bail_out("mux_open: %s", err);

	for (i = 0; i < 4; i++)
		pthread_create(&th[i], NULL, slow_call, &r[i]);
	/* the 4 are running on the server: its pool says so */
	while (t_stat(s.uri, "pool", "busy") < 4)
		t_run_for(1);
	tk = t_now_ms();
	t_server_crash(&s);
	for (i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	for (i = 0, bad = 0; i < 4; i++)
		bad += r[i].rc != MUX_ECONN || r[i].at - tk > 1000 ||
		    !strstr(r[i].msg, "unknown");
	check_int(bad, ==, 0, "server killed: 4 calls in flight fail with "
	    "MUX_ECONN within %.0f ms", r[0].at - tk);
	diag("their message: %s", r[0].msg);

	t0 = t_now_ms();
	rc = mux_callf(M, "echo.echo", &x, 5000, "s", "down");
	ok(rc == MUX_ENOTCONN && t_now_ms() - t0 < 100,
	    "while down: MUX_ENOTCONN at once (%.1f ms): %s", t_now_ms() - t0,
	    x.message ? x.message : "");
	mux_result_free(&x);

	t0 = t_now_ms();
	rc = mux_callf(W, "echo.echo", &x, 300, "s", "down");
	ok(rc == MUX_ENOTCONN && t_now_ms() - t0 >= 295 &&
	    t_now_ms() - t0 < 2000, "wait_connected: MUX_ENOTCONN after its "
	    "300 ms timeout (%.0f ms): %s", t_now_ms() - t0,
	    x.message ? x.message : "");
	mux_result_free(&x);

	/* while it is down, attempts are spaced by the backoff (20 ms
	 * doubling to 200 ms, jittered 50..100 %): in the ~0.4 s so far,
	 * a handful, not a busy loop */
	mux_endpoint(M, 0, &info);
	ok(info.connect_failures >= 2 && info.connect_failures <= 12,
	    "down %.0f ms: %llu connect attempts failed, spaced by the backoff",
	    t_now_ms() - tk, (unsigned long long)info.connect_failures);
	ok(!info.connected && strstr(info.why, "connect") != NULL,
	    "the endpoint says why it is down: %s", info.why);

	/* a sync and an async call wait for the server to come back */
	memset(&wr, 0, sizeof(wr));
	pthread_create(&wt, NULL, waiting_call, &wr);
	rc = mux_call_async(W, "echo.echo", NULL, 0, async_cb, NULL, 20000);
	ok(rc == MUX_OK, "async call accepted while down (it waits)");
	tr = t_now_ms();
	if (t_server_restart(&s) != 0)
		bail_out("cannot restart demuxd");
	pthread_join(wt, NULL);
	ok(wr.rc == MUX_OK, "the waiting call went through %.0f ms after the "
	    "restart", wr.at - tr);
	pthread_mutex_lock(&mu);
	while (!async_done)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
	ok(async_rc == MUX_OK, "so did the waiting async call (%.0f ms)",
	    async_at - tr);

	/* M (fail fast) reconnected by itself: its first successful call */
	t0 = t_now_ms();
	while ((rc = mux_callf(M, "echo.echo", &x, 5000, "s", "x")) ==
	    MUX_ENOTCONN && t_now_ms() - t0 < 10000) {
		mux_result_free(&x);
		/* wait for the reconnect through W's waiting mode: a real
		 * signal that a server answers at this address */
		mux_callf(W, "$/ping", &x, 5000, "");
		mux_result_free(&x);
	}
	mux_result_free(&x);
	ok(rc == MUX_OK, "the fail-fast handle reconnected too");
	mux_endpoint(M, 0, &info);
	check_int(info.connects, ==, 2, "%s: connected twice", info.uri);
	ok(info.connected && !info.draining, "endpoint up");

	/* sent or not: a peer that closed before the request was written
	 * gives MUX_ENOTCONN (whichever thread notices first); one that read
	 * the request and then closed gives MUX_ECONN */
	{
		int sv[2], k, notsent = 0, unknown = 0, other = 0;
		char buf[256];
		mux_t *h;

		for (k = 0; k < 200; k++) {
			socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
			h = mux_open_fds(sv[0], sv[0], err, sizeof(err));
			if (h == NULL)
				bail_out("mux_open_fds: %s", err);
			close(sv[1]);
			rc = mux_call(h, "echo.echo", NULL, 0, &x, 5000);
			notsent += rc == MUX_ENOTCONN;
			other += rc != MUX_ENOTCONN && rc != MUX_ECONN;
			mux_result_free(&x);
			mux_free(h);
		}
		/* MUX_ECONN remains possible, and correct, when the reader
		 * sees the close while the write is under way: the bytes were
		 * already handed over as far as it can know. How often that
		 * race is won depends on scheduling (170 to 200 of 200 seen
		 * on an idle machine, fewer under load): ask for most, and
		 * for nothing else ever */
		ok(notsent >= 100 && other == 0, "peer gone before the write: "
		    "MUX_ENOTCONN (not sent) in %d of 200 tries, never another "
		    "error", notsent);
		for (k = 0; k < 20; k++) {
			socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
			h = mux_open_fds(sv[0], sv[0], err, sizeof(err));
			if (h == NULL)
				bail_out("mux_open_fds: %s", err);
			pthread_mutex_lock(&mu);
			async_done = 0;
			pthread_mutex_unlock(&mu);
			rc = mux_call_async(h, "echo.echo", NULL, 0, async_cb,
			    NULL, 0);
			/* the request arrives, then the peer goes */
			if (rc == MUX_OK && read(sv[1], buf, sizeof(buf)) > 0)
				close(sv[1]);
			pthread_mutex_lock(&mu);
			while (rc == MUX_OK && !async_done)
				pthread_cond_wait(&cv, &mu);
			pthread_mutex_unlock(&mu);
			unknown += rc == MUX_OK && async_rc == MUX_ECONN;
			mux_free(h);
		}
		ok(unknown == 20, "peer read the request, then closed: MUX_ECONN "
		    "in %d of 20", unknown);
	}

	/* mux_free while the supervisor is reconnecting, 200 times at varying
	 * moments: a connection it makes just after mux_close looked must
	 * still be closed, or its reader would keep mux_free waiting forever
	 * (seen once under TSan; the window is microseconds wide, so this
	 * loop exercises the path rather than reproducing it every time) */
	{
		struct sockaddr_un sa;
		int lfd, k;
		mux_t *h;

		memset(&sa, 0, sizeof(sa));
		sa.sun_family = AF_UNIX;
		snprintf(sa.sun_path, sizeof(sa.sun_path), "%.96s/late.sock",
		    s.dir);
		snprintf(one_uri, sizeof(one_uri), "unix:%s", sa.sun_path);
		mux_options_init(&o);
		o.backoff_min_ms = 1;
		o.backoff_max_ms = 2;
		o.health_interval_ms = 0;
		t0 = t_now_ms();
		for (k = 0; k < 200; k++) {
			unlink(sa.sun_path);
			h = mux_open(one_uri, &o, err, sizeof(err));
			lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
			if (h == NULL || bind(lfd, (struct sockaddr *)&sa,
			    sizeof(sa)) != 0 || listen(lfd, 8) != 0)
				bail_out("late.sock: %s", err);
			if (k % 2)
				t_run_for(k % 4);	/* vary the moment */
			mux_free(h);
			close(lfd);
		}
		unlink(sa.sun_path);
		ok(1, "200 handles freed while reconnecting, none hung (%.0f ms)",
		    t_now_ms() - t0);
	}

	/* reconnect off: the handle stays down */
	mux_free(M);
	M = mux_connect(s.uri, err, sizeof(err));
	t_server_crash(&s);
	if (t_server_restart(&s) != 0)
		bail_out("cannot restart demuxd");
	rc = mux_callf(M, "echo.echo", &x, 5000, "s", "x");
	ok(rc == MUX_ENOTCONN, "mux_connect (no reconnect) stays down: %s",
	    x.message ? x.message : "");
	mux_result_free(&x);
	mux_free(M);
	mux_free(W);
	check_int(t_server_stop(&s), ==, 0, "demuxd exits 0");
	done_testing();
	return 0;
}
