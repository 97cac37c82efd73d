/*
 * 210-deferred.c - deferred replies and notifications (plugins timer and
 * pubsub): 10,000 open calls on one connection with two workers, each
 * answered with its own value while the pool is never more than 2 busy;
 * $/cancelRequest, deadlines, a closed connection, drain and reload with
 * deferred calls open; timer.progress seen in order; pubsub with 100
 * subscribers on 100 connections and one that never reads.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

#define NCALLS	10000

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int answered, wrong, failed;

static void
on_after(void *user, int rc, mux_result *r)
{
	int64_t v = -1;

	pthread_mutex_lock(&mu);
	if (rc != MUX_OK)
		failed++;
	else if (mux_unpack(r->data, r->len, "i", &v) != MUX_OK ||
	    v != (int64_t)(intptr_t)user)
		wrong++;
	answered++;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
}

/* Until n calls are answered, at most sec seconds: how many are. */
static int
wait_answered(int n, int sec)
{
	struct timespec ts;
	int got;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += sec;
	pthread_mutex_lock(&mu);
	while (answered < n &&
	    pthread_cond_timedwait(&cv, &mu, &ts) == 0)
		;
	got = answered;
	pthread_mutex_unlock(&mu);
	return got;
}

static void
many_open(t_server *s, mux_t *m)
{
	size_t len;
	long busy_max = 0, open_seen = 0, b, o;
	int i, rc, sent = 0;
	double t0 = t_now_ms();

	for (i = 0; i < NCALLS; i++) {
		char *buf;

		if (mux_pack(&buf, &len, "[ii]", (int64_t)200,
		    (int64_t)i) != MUX_OK)
			break;
		rc = mux_call_async(m, "timer.after", buf, len, on_after,
		    (void *)(intptr_t)i, 30000);
		free(buf);
		if (rc != MUX_OK)
			break;
		sent++;
	}
	ok(sent == NCALLS, "%d timer.after [200, i] sent on one connection",
	    sent);
	/* while they are open: the pool's busy count, the open gauge */
	while (wait_answered(NCALLS, 0) < NCALLS && t_now_ms() - t0 < 30000) {
		b = t_stat(s->uri, "pool", "busy");
		o = t_stat_path(s->uri, "methods/timer.after/deferred_open");
		if (b > busy_max)
			busy_max = b;
		if (o > open_seen)
			open_seen = o;
		if (wait_answered(NCALLS, 1) >= NCALLS)
			break;
	}
	ok(wait_answered(NCALLS, 30) == NCALLS && wrong == 0 && failed == 0,
	    "every one answered with its own value (%d answered, %d wrong, "
	    "%d failed) in %.0f ms", answered, wrong, failed,
	    t_now_ms() - t0);
	ok(busy_max <= 2, "the pool of 2 was never more than 2 busy (max "
	    "seen %ld)", busy_max);
	ok(open_seen > 1000, "$/stats showed the deferred calls open (max "
	    "seen %ld)", open_seen);
	check_int(t_stat_path(s->uri, "methods/timer.after/deferred_open"),
	    ==, 0, "...and none once they are answered");
}

static int
call_i(mux_t *m, const char *method, const char *fmt, int64_t a, int64_t b,
    mux_result *r, int timeout)
{
	char *buf;
	size_t len;
	int rc;

	if (mux_pack(&buf, &len, fmt, a, b) != MUX_OK)
		return MUX_ENOMEM;
	rc = mux_call(m, method, buf, len, r, timeout);
	free(buf);
	return rc;
}

static mux_token tok = MUX_TOKEN_INIT;

static void *
cancel_later(void *arg)
{
	mux_t *m = arg;

	/* cancel once the call is in flight: its token says so */
	while (atomic_load((_Atomic unsigned long long *)&tok.opaque) == 0)
		usleep(1000);
	usleep(50000);
	mux_cancel(m, &tok);
	return NULL;
}

static void
cancel_and_deadline(t_server *s, mux_t *m)
{
	mux_result r;
	pthread_t th;
	char *buf;
	size_t len;
	double t0;
	int rc;

	mux_pack(&buf, &len, "[ii]", (int64_t)5000, (int64_t)1);
	pthread_create(&th, NULL, cancel_later, m);
	t0 = t_now_ms();
	rc = mux_call_token(m, "timer.after", buf, len, &r, 10000, &tok);
	pthread_join(th, NULL);
	free(buf);
	ok(rc == MUX_EREMOTE && r.code == -32800 && t_now_ms() - t0 < 4000,
	    "$/cancelRequest reaches a deferred call: -32800 long before its "
	    "5 s (%s after %.0f ms)", r.message ? r.message : mux_strerror(rc),
	    t_now_ms() - t0);
	mux_result_free(&r);

	/* timerslow.after has timeout_ms 300 */
	rc = call_i(m, "timerslow.after", "[ii]", 1500, 1, &r, 10000);
	ok(rc == MUX_EREMOTE && r.code == -32011, "a deferred call past its "
	    "deadline: -32011 (%s)", r.message ? r.message : mux_strerror(rc));
	mux_result_free(&r);
	check_int(t_stat_path(s->uri, "methods/timerslow.after/errors/-32011"), ==,
	    1, "...counted as a timeout");
}

/* ---- notifications ---- */

static int notes, notes_bad, note_last;

static void
on_progress(void *user, const char *method, const char *params, size_t len)
{
	int64_t id, i, n;

	(void)user;
	pthread_mutex_lock(&mu);
	if (strcmp(method, "timer.progress") != 0 ||
	    mux_unpack(params, len, "[iii]", &id, &i, &n) != MUX_OK ||
	    i != note_last + 1 || n != 5)
		notes_bad++;
	else
		note_last = (int)i;
	notes++;
	pthread_mutex_unlock(&mu);
}

static void
progress(mux_t *m)
{
	mux_result r;
	int64_t v = -1;
	int rc;

	mux_set_notify(m, on_progress, NULL);
	rc = call_i(m, "timer.progress", "[ii]", 5, 20, &r, 10000);
	/* the notifications were sent before the answer and go through the
	 * dispatcher: wait for it to have delivered them */
	for (int k = 0; k < 200; k++) {
		pthread_mutex_lock(&mu);
		int got = notes;
		pthread_mutex_unlock(&mu);
		if (got >= 5)
			break;
		usleep(5000);
	}
	ok(rc == MUX_OK && mux_unpack(r.data, r.len, "i", &v) == MUX_OK &&
	    v == 5, "timer.progress [5, 20] answers 5");
	ok(notes == 5 && notes_bad == 0, "...after 5 notifications "
	    "[msgid, i, 5], i = 1..5 in order (%d seen, %d out of order)",
	    notes, notes_bad);
	mux_result_free(&r);
	mux_set_notify(m, NULL, NULL);
}

/* ---- pubsub ---- */

#define NSUB 100
#define NMSG 200

static _Atomic int got[NSUB], bad[NSUB];

static void
on_message(void *user, const char *method, const char *params, size_t len)
{
	int k = (int)(intptr_t)user;
	const char *topic;
	size_t tl;
	int64_t v;

	if (strcmp(method, "pubsub.message") != 0 ||
	    mux_unpack(params, len, "[si]", &topic, &tl, &v) != MUX_OK ||
	    tl != 4 || memcmp(topic, "news", 4) != 0 ||
	    v != atomic_load(&got[k]))
		atomic_fetch_add(&bad[k], 1);
	atomic_fetch_add(&got[k], 1);
}

/* A subscriber that never reads: a raw socket sends pubsub.subscribe. */
static int
raw_subscriber(const char *uri)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	/* [0, 1, "pubsub.subscribe", ["news"]] */
	static const unsigned char req[] = { 0x94, 0x00, 0x01, 0xb0, 'p', 'u',
	    'b', 's', 'u', 'b', '.', 's', 'u', 'b', 's', 'c', 'r', 'i', 'b',
	    'e', 0x91, 0xa4, 'n', 'e', 'w', 's' };
	int fd = socket(AF_UNIX, SOCK_STREAM, 0), rcv = 4096;

	if (strlen(uri + 5) >= sizeof(sa.sun_path)) {
		close(fd);
		return -1;
	}
	memcpy(sa.sun_path, uri + 5, strlen(uri + 5) + 1);
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
	/* its answer, [1, 1, nil, true] (5 bytes): subscribed from then on */
	unsigned char ans[5];
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
	    write(fd, req, sizeof(req)) != (ssize_t)sizeof(req) ||
	    read(fd, ans, sizeof(ans)) != (ssize_t)sizeof(ans) ||
	    ans[4] != 0xc3) {
		close(fd);
		return -1;
	}
	return fd;
}

static void
pubsub(t_server *s, mux_t *pub)
{
	mux_t *sub[NSUB];
	char err[MUX_ERRLEN], msg[600];
	mux_result r;
	int i, k, rc, fd, all = 1, inorder = 1, subs_ok = 0;
	long rss0, rss1, dropped;
	uint64_t queued = 0, q;
	char *buf;
	size_t len;

	for (k = 0; k < NSUB; k++) {
		sub[k] = mux_connect(s->uri, err, sizeof(err));
		if (sub[k] == NULL)
			bail_out("connect: %s", err);
		mux_set_notify(sub[k], on_message, (void *)(intptr_t)k);
		mux_pack(&buf, &len, "[s]", "news");
		rc = mux_call(sub[k], "pubsub.subscribe", buf, len, &r, 5000);
		free(buf);
		subs_ok += rc == MUX_OK;
		mux_result_free(&r);
	}
	ok(subs_ok == NSUB, "%d connections subscribe to \"news\"", subs_ok);
	fd = raw_subscriber(s->uri);
	ok(fd >= 0, "...and one more that never reads");
	/* every subscribe has been answered: all are subscribed */
	mux_pack(&buf, &len, "[si]", "news", (int64_t)-1);
	rc = mux_call(pub, "pubsub.publish", buf, len, &r, 5000);
	free(buf);
	q = 0;
	if (rc == MUX_OK)
		mux_unpack(r.data, r.len, "u", &q);
	mux_result_free(&r);
	ok(q == NSUB + 1, "publish is queued for all %d subscribers", NSUB + 1);
	/* the -1 went to everyone: count from it */
	for (k = 0; k < NSUB; k++)
		while (atomic_load(&got[k]) < 1)
			usleep(1000);
	for (k = 0; k < NSUB; k++) {
		atomic_store(&got[k], 0);
		atomic_store(&bad[k], 0);
	}
	rss0 = t_rss_kb(s->pid);
	memset(msg, 'x', sizeof(msg) - 1);
	msg[sizeof(msg) - 1] = '\0';
	for (i = 0; i < NMSG; i++) {
		mux_pack(&buf, &len, "[si]", "news", (int64_t)i);
		rc = mux_call(pub, "pubsub.publish", buf, len, &r, 5000);
		free(buf);
		if (rc == MUX_OK && mux_unpack(r.data, r.len, "u", &q) ==
		    MUX_OK)
			queued += q;
		mux_result_free(&r);
	}
	/* fill the silent one's buffers: big messages, 100 at a time, each
	 * hundred read by every reading subscriber before the next (under
	 * 256 KiB: max_output; a reader that fell that far behind would
	 * rightly lose some too) */
	for (i = 0; i < 3000; i++) {
		mux_pack(&buf, &len, "[ss]", "news", msg);
		rc = mux_call(pub, "pubsub.publish", buf, len, &r, 5000);
		free(buf);
		mux_result_free(&r);
		if ((i + 1) % 100 == 0)
			for (k = 0; k < NSUB; k++) {
				double t0 = t_now_ms();

				while (atomic_load(&got[k]) < NMSG + i + 1 &&
				    t_now_ms() - t0 < 10000)
					usleep(500);
			}
	}
	for (k = 0; k < NSUB; k++) {
		double t0 = t_now_ms();

		while (atomic_load(&got[k]) < NMSG + 3000 &&
		    t_now_ms() - t0 < 10000)
			usleep(1000);
		all &= atomic_load(&got[k]) == NMSG + 3000;
		inorder &= atomic_load(&bad[k]) == 3000;	/* the strings */
	}
	{
		int lo = 1 << 30, hi = 0;

		for (k = 0; k < NSUB; k++) {
			int g = atomic_load(&got[k]);

			lo = g < lo ? g : lo;
			hi = g > hi ? g : hi;
		}
		ok(all, "every reading subscriber got all %d messages (each "
		    "got %d to %d)", NMSG + 3000, lo, hi);
	}
	ok(inorder, "...the numbered ones in order");
	rss1 = t_rss_kb(s->pid);
	dropped = t_stat(s->uri, "server", "notifications_dropped");
	ok(dropped > 0, "the one that never reads lost messages, counted in "
	    "$/stats (%ld dropped)", dropped);
	ok(rss1 - rss0 < 32 * 1024, "...and did not grow the server: RSS "
	    "%ld -> %ld KiB over %d KiB published to it", rss0, rss1,
	    3000 * 600 / 1024);
	close(fd);
	for (k = 0; k < NSUB; k++)
		mux_free(sub[k]);
	/* the subscriptions of closed connections end */
	for (i = 0; i < 300; i++) {
		mux_pack(&buf, &len, "[si]", "news", (int64_t)0);
		rc = mux_call(pub, "pubsub.publish", buf, len, &r, 5000);
		free(buf);
		q = 99;
		if (rc == MUX_OK)
			mux_unpack(r.data, r.len, "u", &q);
		mux_result_free(&r);
		if (q == 0)
			break;
		usleep(10000);
	}
	ok(q == 0, "subscriptions end when their connections close");
}

/* ---- a closed connection, drain and reload with deferred calls open ---- */

static void
closed_conn(t_server *s)
{
	char err[MUX_ERRLEN];
	mux_t *m = mux_connect(s->uri, err, sizeof(err));
	mux_result r;
	int i;

	answered = 0;
	for (i = 0; i < 100; i++) {
		char *buf;
		size_t len;

		mux_pack(&buf, &len, "[ii]", (int64_t)300, (int64_t)i);
		mux_call_async(m, "timer.after", buf, len, on_after,
		    (void *)(intptr_t)i, 10000);
		free(buf);
	}
	mux_free(m);	/* closes with 100 open */
	t_run_for(500);	/* past their due time: finish after close */
	m = mux_connect(s->uri, err, sizeof(err));
	ok(m != NULL && mux_call(m, "$/health", NULL, 0, &r, 5000) == MUX_OK,
	    "deferred calls finished after their connection closed: the "
	    "server serves on");
	mux_result_free(&r);
	check_int(t_stat_path(s->uri, "methods/timer.after/deferred_open"),
	    ==, 0, "...and counts none open");
	mux_free(m);
}

static void
drain_and_reload(t_server *s, mux_t *m)
{
	FILE *fp;
	int rc;

	answered = wrong = failed = 0;
	{
		char *buf;
		size_t len;

		mux_pack(&buf, &len, "[ii]", (int64_t)600, (int64_t)7);
		mux_call_async(m, "timer.after", buf, len, on_after,
		    (void *)(intptr_t)7, 10000);
		free(buf);
	}
	while (t_stat_path(s->uri, "methods/timer.after/deferred_open") < 1)
		usleep(2000);
	/* reload: timer's config changes, so it is loaded anew; the open
	 * call stays on the old code */
	fp = fopen(s->conf, "a");
	fputs("    config: { max_open: 5000 }\n", fp);
	fclose(fp);
	kill(s->pid, SIGHUP);
	while (t_stat(s->uri, "server", "reloads") < 1)
		usleep(2000);
	rc = wait_answered(1, 10);
	ok(rc == 1 && wrong == 0 && failed == 0, "a deferred call open "
	    "across a reload that replaced its plugin is answered by the old "
	    "code (%d answered, %d wrong, %d failed)", rc, wrong, failed);
	answered = 0;
	{
		char *buf;
		size_t len;

		mux_pack(&buf, &len, "[ii]", (int64_t)400, (int64_t)9);
		mux_call_async(m, "timer.after", buf, len, on_after,
		    (void *)(intptr_t)9, 10000);
		free(buf);
	}
	while (t_stat_path(s->uri, "methods/timer.after/deferred_open") < 1)
		usleep(2000);
	kill(s->pid, SIGTERM);
	ok(wait_answered(1, 10) == 1 && wrong == 0 && failed == 0,
	    "drain waits for an open deferred call: its answer arrives");
	rc = t_server_wait(s);
	check_int(rc, ==, 0, "...and demuxd then exits 0");
}

int
main(void)
{
	t_server s;
	char err[MUX_ERRLEN];
	mux_t *m, *pub;

	t_watchdog(120);
	if (t_server_start(&s,
	    "workers: 2\n"
	    "max_inflight: 20000\n"
	    "max_output: 256KiB\n"
	    "plugins:\n"
	    "  - name: pubsub\n"
	    "    path: @B@/plugins/pubsub.so\n"
	    "  - name: timerslow\n"
	    "    path: @B@/plugins/timer.so\n"
	    "    timeout_ms: 300\n"
	    "  - name: timer\n"
	    "    path: @B@/plugins/timer.so\n", NULL) != 0)
		bail_out("demuxd did not start");
	m = mux_connect(s.uri, err, sizeof(err));
	pub = mux_connect(s.uri, err, sizeof(err));
	if (m == NULL || pub == NULL)
		bail_out("connect: %s", err);
	many_open(&s, m);
	cancel_and_deadline(&s, m);
	progress(m);
	pubsub(&s, pub);
	closed_conn(&s);
	drain_and_reload(&s, m);
	mux_free(pub);
	mux_free(m);
	t_server_cleanup(&s);
	done_testing();
	return exit_status();
}
