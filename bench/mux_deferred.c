/*
 * mux_deferred.c - W6: N open deferred calls (timer.after) on ONE
 * connection: demuxd's extra resident memory per open call beyond its
 * request, and completions per second when they all fire at once.
 *
 *   mux_deferred -u URI -p DEMUXD_PID [-n 10000] [-a 2000]
 *
 * Every call gets the ms that makes it due at the same instant (a ms
 * after the first is sent), so the completions measure demuxd and the
 * plugin finishing them, not the rate they were sent at. Prints:
 *   RESULT open=N rss_per_call_b=B request_b=R extra_per_call_b=E
 *          completions_per_s=C
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <demux/mux.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int answered, errors;
static double first_at, last_at;

static double
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static long
rss_kb(int pid)
{
	char path[64], line[256];
	long kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	if ((f = fopen(path, "r")) == NULL)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, "VmRSS:", 6) == 0)
			kb = atol(line + 6);
	fclose(f);
	return kb;
}

static void
done(void *user, int rc, mux_result *r)
{
	double t = now_ms();

	(void)user;
	(void)r;
	pthread_mutex_lock(&mu);
	if (answered == 0)
		first_at = t;
	last_at = t;
	if (rc != MUX_OK)
		errors++;
	if (++answered % 1000 == 0)
		pthread_cond_signal(&cv);
	pthread_mutex_unlock(&mu);
}

static long
stat_open(mux_t *m)
{
	mux_result r;
	long v = -1;
	uint64_t u;

	if (mux_call(m, "$/stats", NULL, 0, &r, 5000) == MUX_OK &&
	    mux_unpack(r.data, r.len, "{s?{s?{s?u}}}", "methods", "timer.after",
	    "deferred_open", &u) == MUX_OK)
		v = (long)u;
	mux_result_free(&r);
	return v;
}

int
main(int argc, char **argv)
{
	const char *uri = NULL;
	int ch, pid = 0, n = 10000, ahead = 2000, i;
	char err[MUX_ERRLEN], *buf;
	size_t len, reqb = 0;
	long rss0, rss1;
	double target;
	mux_t *m;

	while ((ch = getopt(argc, argv, "u:p:n:a:")) != -1)
		switch (ch) {
		case 'u': uri = optarg; break;
		case 'p': pid = atoi(optarg); break;
		case 'n': n = atoi(optarg); break;
		case 'a': ahead = atoi(optarg); break;
		default: return 2;
		}
	if (uri == NULL || pid <= 0 || n < 1)
		return 2;
	if ((m = mux_connect(uri, err, sizeof(err))) == NULL) {
		fprintf(stderr, "mux_deferred: %s\n", err);
		return 1;
	}
	/* warm: the connection's buffers and the plugin's heap exist */
	mux_pack(&buf, &len, "[ii]", (int64_t)1, (int64_t)0);
	mux_call_async(m, "timer.after", buf, len, done, NULL, 0);
	free(buf);
	pthread_mutex_lock(&mu);
	while (answered < 1) {
		pthread_mutex_unlock(&mu);
		usleep(1000);
		pthread_mutex_lock(&mu);
	}
	answered = 0;
	pthread_mutex_unlock(&mu);
	usleep(200000);
	rss0 = rss_kb(pid);
	target = now_ms() + ahead;
	for (i = 0; i < n; i++) {
		int64_t ms = (int64_t)(target - now_ms());

		mux_pack(&buf, &len, "[ii]", ms > 0 ? ms : 0, (int64_t)i);
		/* the request on the wire: [0, msgid, "timer.after", params] */
		reqb += len + 1 + 5 + 12;
		mux_call_async(m, "timer.after", buf, len, done, NULL, 0);
		free(buf);
	}
	double t_sent = now_ms();
	while (stat_open(m) < n && now_ms() < target - 50)
		usleep(1000);
	rss1 = rss_kb(pid);
	fprintf(stderr, "sent in %.0f ms, all open %.0f ms before they fire\n",
	    t_sent - (target - ahead), target - now_ms());
	pthread_mutex_lock(&mu);
	while (answered < n)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
	{
		double per = (rss1 - rss0) * 1024.0 / n, rq = (double)reqb / n;

		printf("RESULT open=%d rss_per_call_b=%.0f request_b=%.0f "
		    "extra_per_call_b=%.0f completions_per_s=%.0f errors=%d\n",
		    n, per, rq, per - rq, n / ((last_at - first_at) / 1e3 +
		    1e-9), errors);
	}
	mux_free(m);
	return 0;
}
