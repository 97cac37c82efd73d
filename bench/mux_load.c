/*
 * mux_load.c - demux's load client for the peer benchmarks
 * (../shared/peers): T threads share ONE libmux connection and make blocking
 * calls back to back; prints the same RESULT line as the peers' clients so
 * that one run.sh run measures demux beside them.
 *
 *   -u URI    unix:PATH or tcp:HOST:PORT                   (required)
 *   -T n      client threads (= calls in flight)            [32]
 *   -s bytes  payload size (sent as one bin, echoed)        [64]
 *   -d sec    measured seconds                              [5]
 *   -w sec    warm-up seconds                               [1]
 *   -n calls  fixed number of calls per thread (W3): report the wall time
 *             from the release of all threads to the last answer     [0]
 *   -S usec   call sleep.sleep [usec/1000] instead of echo.echo       [0]
 *   -P pid    server pid, to read its CPU time from /proc   [0]
 *   -L label  copied into the RESULT line                   [-]
 *   -A        async: ONE thread keeps T calls in flight with
 *             mux_call_async, driven by poll() on mux_completion_fd;
 *             the callbacks run on that thread (no -n)
 *   -Z        results_in_place: large results are not copied out of
 *             the read buffer (released with mux_result_free, as here)
 *
 * Every echo is checked (length and content); a failed or wrong answer
 * counts as an error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <demux/mux.h>

#include "bench.h"

typedef struct opts {
	const char *uri, *label;
	int threads, ncalls, srv_pid, async, in_place;
	size_t size;
	double duration, warmup;
	long sleep_us;
} opts;

typedef struct lat_vec {
	uint64_t *v;
	size_t n, cap;
} lat_vec;

typedef struct worker {
	int id;
	uint64_t tx, errors, last_done;
	lat_vec lat;
} worker;

enum { PH_WARM, PH_MEASURE, PH_STOP };

static opts O;
static mux_t *M;
static int phase = PH_WARM;
static pthread_barrier_t ready, go;


static void
lat_push(lat_vec *l, uint64_t ns)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 4096;
		l->v = realloc(l->v, l->cap * sizeof(*l->v));
		if (l->v == NULL) {
			perror("realloc");
			exit(2);
		}
	}
	l->v[l->n++] = ns;
}




/* One call; 0 if the right answer came back. */
static int
one_call(const char *params, size_t plen, const char *payload)
{
	mux_result r;
	const void *b;
	size_t bl;
	int64_t v;
	int rc, bad;

	if (O.sleep_us > 0) {
		rc = mux_call(M, "sleep.sleep", params, plen, &r, 60000);
		bad = rc != MUX_OK || mux_unpack(r.data, r.len, "i", &v) != 0 ||
		    v != O.sleep_us / 1000;
	} else {
		rc = mux_call(M, "echo.echo", params, plen, &r, 60000);
		bad = rc != MUX_OK ||
		    mux_unpack(r.data, r.len, "[B]", &b, &bl) != 0 ||
		    bl != O.size || memcmp(b, payload, bl) != 0;
	}
	if (rc != MUX_OK && r.message != NULL)
		fprintf(stderr, "call: %s\n", r.message);
	mux_result_free(&r);
	return bad;
}

static void *
worker_main(void *arg)
{
	worker *w = arg;
	char *payload = malloc(O.size ? O.size : 1), *params;
	size_t plen, i;
	uint64_t t0, t1;
	int rc, n, ph;

	for (i = 0; i < O.size; i++)
		payload[i] = (char)('a' + (i + (size_t)w->id) % 26);
	if (O.sleep_us > 0)
		mux_pack(&params, &plen, "[i]", (int64_t)(O.sleep_us / 1000));
	else
		mux_pack(&params, &plen, "[B]", payload, O.size);
	pthread_barrier_wait(&ready);
	pthread_barrier_wait(&go);
	if (O.ncalls > 0) {
		for (n = 0; n < O.ncalls; n++) {
			t0 = now_ns();
			rc = one_call(params, plen, payload);
			t1 = now_ns();
			if (rc) {
				w->errors++;
			} else {
				w->tx++;
				lat_push(&w->lat, t1 - t0);
			}
			w->last_done = t1;
		}
	} else {
		for (;;) {
			t0 = now_ns();
			rc = one_call(params, plen, payload);
			t1 = now_ns();
			ph = __atomic_load_n(&phase, __ATOMIC_RELAXED);
			if (ph == PH_STOP)
				break;
			if (rc)
				w->errors++;
			else if (ph == PH_MEASURE) {
				w->tx++;
				lat_push(&w->lat, t1 - t0);
			}
		}
	}
	free(params);
	free(payload);
	return NULL;
}

/* ---- -A: T calls in flight from one thread, completions by poll ---- */

typedef struct aslot {
	uint64_t t0;
} aslot;

static worker A;		/* the async run's counters */
static char *a_params, *a_payload;
static size_t a_plen;
static int a_inflight;

static void a_send(aslot *s);

static void
a_done(void *user, int rc, mux_result *r)
{
	aslot *s = user;
	uint64_t t1 = now_ns();
	const void *b;
	size_t bl;
	int bad, ph = __atomic_load_n(&phase, __ATOMIC_RELAXED);

	bad = rc != MUX_OK || mux_unpack(r->data, r->len, "[B]", &b, &bl) != 0
	    || bl != O.size || memcmp(b, a_payload, bl) != 0;
	if (bad)
		A.errors++;
	else if (ph == PH_MEASURE) {
		A.tx++;
		lat_push(&A.lat, t1 - s->t0);
	}
	if (ph == PH_STOP)
		a_inflight--;
	else
		a_send(s);	/* from the callback: allowed */
}

static void
a_send(aslot *s)
{
	s->t0 = now_ns();
	if (mux_call_async(M, "echo.echo", a_params, a_plen, a_done, s,
	    60000) != MUX_OK) {
		A.errors++;
		a_inflight--;
	}
}

/* Run warm-up and measurement; returns the measured window's bounds. */
static void
async_run(uint64_t *start, uint64_t *end, double *c0, double *c1, double *s0,
    double *s1)
{
	aslot *slots = calloc((size_t)O.threads, sizeof(*slots));
	struct pollfd pfd = { mux_completion_fd(M), POLLIN, 0 };
	uint64_t t_measure, t_stop;
	size_t i;

	a_payload = malloc(O.size ? O.size : 1);
	for (i = 0; i < O.size; i++)
		a_payload[i] = (char)('a' + i % 26);
	mux_pack(&a_params, &a_plen, "[B]", a_payload, O.size);
	t_measure = now_ns() + (uint64_t)(O.warmup * 1e9);
	t_stop = t_measure + (uint64_t)(O.duration * 1e9);
	a_inflight = O.threads;
	for (i = 0; i < (size_t)O.threads; i++)
		a_send(&slots[i]);
	while (a_inflight > 0) {
		if (poll(&pfd, 1, 50) > 0)
			mux_dispatch(M);
		if (phase == PH_WARM && now_ns() >= t_measure) {
			*c0 = self_cpu_us();
			*s0 = proc_cpu_us(O.srv_pid);
			*start = now_ns();
			phase = PH_MEASURE;
		} else if (phase == PH_MEASURE && now_ns() >= t_stop) {
			*end = now_ns();
			*c1 = self_cpu_us();
			*s1 = proc_cpu_us(O.srv_pid);
			phase = PH_STOP;
		}
	}
	free(a_params);
	free(a_payload);
	free(slots);
}

static void
sleep_sec(double s)
{
	struct timespec ts;

	ts.tv_sec = (time_t)s;
	ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

static void
parse(int argc, char **argv)
{
	int c;

	O.threads = 32;
	O.size = 64;
	O.duration = 5;
	O.warmup = 1;
	O.label = "-";
	while ((c = getopt(argc, argv, "u:T:s:d:w:n:S:P:L:W:AZ")) != -1) {
		switch (c) {
		case 'u': O.uri = optarg; break;
		case 'T': O.threads = atoi(optarg); break;
		case 's': O.size = (size_t)atol(optarg); break;
		case 'd': O.duration = atof(optarg); break;
		case 'w': O.warmup = atof(optarg); break;
		case 'n': O.ncalls = atoi(optarg); break;
		case 'S': O.sleep_us = atol(optarg); break;
		case 'P': O.srv_pid = atoi(optarg); break;
		case 'L': O.label = optarg; break;
		case 'W': break;	/* a server flag; accepted for symmetry */
		case 'A': O.async = 1; break;
		case 'Z': O.in_place = 1; break;
		default:
			fprintf(stderr, "usage: mux_load -u URI [-T n] [-s bytes] "
			    "[-d s] [-w s] [-n calls] [-S usec] [-P pid] "
			    "[-L label] [-A] [-Z]\n");
			exit(2);
		}
	}
	if (O.uri == NULL || O.threads < 1) {
		fprintf(stderr, "mux_load: -u URI is required\n");
		exit(2);
	}
}

/* Run T blocking threads; the measured window and totals out. */
static void
threads_run(uint64_t *start, uint64_t *end, double *c0, double *c1,
    double *s0, double *s1, lat_vec *all, uint64_t *tx, uint64_t *errs)
{
	pthread_attr_t attr;
	pthread_t *tids;
	worker *w;
	size_t k;
	int i;

	w = calloc((size_t)O.threads, sizeof(*w));
	tids = calloc((size_t)O.threads, sizeof(*tids));
	pthread_barrier_init(&ready, NULL, (unsigned)O.threads + 1);
	pthread_barrier_init(&go, NULL, (unsigned)O.threads + 1);
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 256 << 10);
	for (i = 0; i < O.threads; i++) {
		w[i].id = i;
		if (pthread_create(&tids[i], &attr, worker_main, &w[i]) != 0) {
			perror("pthread_create");
			exit(2);
		}
	}
	pthread_barrier_wait(&ready);
	if (O.ncalls > 0) {
		*c0 = self_cpu_us();
		*s0 = proc_cpu_us(O.srv_pid);
		*start = now_ns();
		pthread_barrier_wait(&go);
		for (i = 0; i < O.threads; i++)
			pthread_join(tids[i], NULL);
		for (i = 0; i < O.threads; i++)
			if (w[i].last_done > *end)
				*end = w[i].last_done;
		*c1 = self_cpu_us();
		*s1 = proc_cpu_us(O.srv_pid);
	} else {
		pthread_barrier_wait(&go);
		sleep_sec(O.warmup);
		*c0 = self_cpu_us();
		*s0 = proc_cpu_us(O.srv_pid);
		*start = now_ns();
		__atomic_store_n(&phase, PH_MEASURE, __ATOMIC_RELAXED);
		sleep_sec(O.duration);
		__atomic_store_n(&phase, PH_STOP, __ATOMIC_RELAXED);
		*end = now_ns();
		*c1 = self_cpu_us();
		*s1 = proc_cpu_us(O.srv_pid);
		for (i = 0; i < O.threads; i++)
			pthread_join(tids[i], NULL);
	}
	for (i = 0; i < O.threads; i++) {
		*tx += w[i].tx;
		*errs += w[i].errors;
		for (k = 0; k < w[i].lat.n; k++)
			lat_push(all, w[i].lat.v[k]);
		free(w[i].lat.v);
	}
	free(w);
	free(tids);
}

int
main(int argc, char **argv)
{
	char err[MUX_ERRLEN];
	lat_vec all = { NULL, 0, 0 };
	uint64_t start = 0, end = 0, tx = 0, errs = 0;
	double c0 = 0, c1 = 0, s0 = -1, s1 = -1, secs, txps, p50 = 0, p99 = 0,
	    pmax = 0;

	parse(argc, argv);
	{
		mux_options mo;

		mux_options_init(&mo);
		mo.reconnect = 0;
		mo.health_interval_ms = 0;
		mo.completion_fd = O.async;
		mo.results_in_place = O.in_place;
		/* tls: endpoints: the CA of the bench's certificates */
		mo.tls_ca = getenv("MUX_TLS_CA");
		M = mux_open(O.uri, &mo, err, sizeof(err));
	}
	if (M == NULL) {
		fprintf(stderr, "mux_load: %s\n", err);
		return 2;
	}
	if (O.async) {
		async_run(&start, &end, &c0, &c1, &s0, &s1);
		all = A.lat;
		tx = A.tx;
		errs = A.errors;
	} else {
		threads_run(&start, &end, &c0, &c1, &s0, &s1, &all, &tx,
		    &errs);
	}
	if (all.n > 0) {
		qsort(all.v, all.n, sizeof(*all.v), cmp_u64);
		p50 = all.v[(all.n * 50 + 99) / 100 - 1] / 1e3;
		p99 = all.v[(all.n * 99 + 99) / 100 - 1] / 1e3;
		pmax = all.v[all.n - 1] / 1e3;
	}
	secs = (double)(end - start) / 1e9;
	txps = secs > 0 ? (double)tx / secs : 0;
	printf("RESULT peer=demux label=%s T=%d size=%zu ncalls=%d tx=%llu "
	    "errors=%llu secs=%.3f txps=%.0f MBps=%.1f p50_us=%.1f "
	    "p99_us=%.1f max_us=%.1f cli_cpu_us_tx=%.2f srv_cpu_us_tx=%.2f "
	    "wall_ms=%.1f\n", O.label, O.threads, O.size, O.ncalls,
	    (unsigned long long)tx, (unsigned long long)errs, secs, txps,
	    txps * (double)O.size / 1e6, p50, p99, pmax,
	    tx ? (c1 - c0) / (double)tx : 0,
	    (tx && s0 >= 0 && s1 >= 0) ? (s1 - s0) / (double)tx : -1,
	    secs * 1e3);
	fflush(stdout);
	mux_free(M);
	free(all.v);
	return errs ? 1 : 0;
}
