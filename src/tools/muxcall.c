/*
 * muxcall - call demux methods from the command line; see muxcall(1).
 *
 *   muxcall [-c URI] [-p] [-t MS] METHOD [ARG...]   one call, ARGs are JSON
 *   muxcall [-c URI] --list                         $/methods
 *   muxcall [-c URI] --stats                        $/stats as a table
 *   muxcall [-c URI] --top [--interval MS] [-n N]   the same, live
 *   muxcall [-c URI] --batch                        one JSON request per line
 *   muxcall [-c URI] -n N -P P METHOD [ARG...]      load: N calls, P threads
 *   --spawn CONF instead of -c: run `demuxd --stdio -c CONF` as a child
 *
 * Exit status: 0 success, 1 the server answered an error, 2 usage or bad
 * JSON, 3 cannot connect or the connection broke, 4 timed out.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <demux/mux.h>

#include "../common/buf.h"
#include "json.h"
#include "top.h"
#include "watch.h"

enum { EX_OK = 0, EX_REMOTE = 1, EX_USAGE = 2, EX_CONN = 3, EX_TIMEOUT = 4,
    EX_DATA = 5 };

static int pretty, timeout_ms = 10000;

static void
usage(FILE *fp)
{
	fprintf(fp,
	    "usage: muxcall [-c URI | --spawn CONF] [-p] [-t MS] METHOD [ARG...]\n"
	    "       muxcall [-c URI | --spawn CONF] --list | --stats | --batch\n"
	    "       muxcall [-c URI | --spawn CONF] --top [--interval MS] [-n N]\n"
	    "       muxcall [-c URI | --spawn CONF] -n N [-P P] METHOD [ARG...]\n"
	    "\n"
	    "  -c, --connect URI  server address (default $DEMUX_URI, else "
	    "tcp:127.0.0.1:7411)\n"
	    "      --spawn CONF   run `demuxd --stdio -c CONF` and talk to it\n"
	    "  -p, --pretty       indent the JSON output\n"
	    "  -t, --timeout MS   per call (default 10000; 0: none)\n"
	    "      --token NAME:FILE  send $/auth [NAME, first line of FILE] first\n"
	    "      --tls-ca FILE  tls: endpoints: the CA of the server's certificate\n"
	    "      --tls-cert FILE, --tls-key FILE  our certificate, if asked\n"
	    "  -l, --list         list the methods served\n"
	    "  -s, --stats        show live statistics as a table\n"
	    "      --top          the same, refreshed in place every second\n"
	    "                     (q quits; not a terminal: one table each\n"
	    "                     interval); --interval MS, -n N refreshes\n"
	    "  -b, --batch        read one request per line on stdin:\n"
	    "                     [\"method\", arg...] or {\"method\": M, "
	    "\"params\": [...]}\n"
	    "  -n N -P P          load: N calls from P threads, then "
	    "throughput and latency\n"
	    "  -w, --watch        print each notification the server sends "
	    "while\n"
	    "                     the call runs, as a JSON line {\"method\", "
	    "\"params\"}\n"
	    "  -f, --follow       with --watch: after the result, keep "
	    "printing\n"
	    "                     until ^C (exit 0) or the connection is lost "
	    "(3)\n"
	    "      --subscribe    --watch --follow: muxcall --subscribe "
	    "pubsub.subscribe '\"news\"'\n"
	    "Each ARG is one JSON value: muxcall echo.echo 1 '\"two\"' "
	    "'{\"k\":[3]}'\n"
	    "Exit: 0 ok, 1 remote error, 2 usage, 3 connection, 4 timeout.\n");
}

static int
exit_for(int rc)
{
	switch (rc) {
	case MUX_OK: return EX_OK;
	case MUX_EREMOTE: return EX_REMOTE;
	case MUX_ETIMEDOUT: return EX_TIMEOUT;
	case MUX_EINVAL: return EX_USAGE;
	default: return EX_CONN;
	}
}

/* Pack JSON texts as one array of params. */
static int
pack_args(char **argv, int argc, dmx_buf *out)
{
	msgpack_packer pk;
	json_error_t je;
	char err[256];
	int i;

	msgpack_packer_init(&pk, out, dmx_buf_pack_write);
	msgpack_pack_array(&pk, (size_t)argc);
	for (i = 0; i < argc; i++) {
		json_t *v = json_loads(argv[i], JSON_DECODE_ANY, &je);

		if (v == NULL) {
			fprintf(stderr, "muxcall: argument %d is not JSON: %s "
			    "(%s)\n", i + 1, argv[i], je.text);
			return -1;
		}
		if (mj_to_msgpack(&pk, v, err, sizeof(err)) != 0) {
			fprintf(stderr, "muxcall: argument %d: %s\n", i + 1, err);
			json_decref(v);
			return -1;
		}
		json_decref(v);
	}
	return 0;
}

static void
print_json(FILE *fp, json_t *v)
{
	char *s = json_dumps(v, JSON_ENCODE_ANY | (pretty ? JSON_INDENT(2) :
	    0));

	fprintf(fp, "%s\n", s ? s : "null");
	free(s);
}

static void
print_remote_error(const mux_result *r)
{
	fprintf(stderr, "error %lld: %s\n", (long long)r->code,
	    r->message ? r->message : "");
	if (r->trace)
		fprintf(stderr, "%s\n", r->trace);
}

static int
do_call(mux_t *m, const char *method, char **args, int nargs)
{
	dmx_buf params = DMX_BUF_INIT;
	mux_result r;
	int rc;

	if (pack_args(args, nargs, &params) != 0) {
		dmx_buf_release(&params);
		return EX_USAGE;
	}
	rc = mux_call(m, method, params.data, params.len, &r, timeout_ms);
	dmx_buf_release(&params);
	if (rc == MUX_OK) {
		char why[256];

		/* straight from the bytes: memory grows with the depth only */
		if (mj_print(stdout, r.data, r.len, pretty, why,
		    sizeof(why)) != 0) {
			fflush(stdout);
			fprintf(stderr, "\nmuxcall: %s: %s\n", method, why);
			mux_result_free(&r);
			return EX_DATA;
		}
	} else if (rc == MUX_EREMOTE) {
		print_remote_error(&r);
	} else {
		fprintf(stderr, "muxcall: %s: %s\n", method, r.message ?
		    r.message : mux_strerror(rc));
	}
	mux_result_free(&r);
	return exit_for(rc);
}

/* ---- --stats ---- */

#define jget mj_u64

static void print_plugins(json_t *plugins);

static int
do_stats(mux_t *m)
{
	mux_result r;
	json_t *st, *methods, *mv, *srv, *pool;
	const char *name;
	int rc;

	rc = mux_call(m, "$/stats", NULL, 0, &r, timeout_ms);
	if (rc != MUX_OK) {
		fprintf(stderr, "muxcall: $/stats: %s\n", r.message);
		mux_result_free(&r);
		return exit_for(rc);
	}
	st = mj_from_bytes(r.data, r.len);
	mux_result_free(&r);
	srv = json_object_get(st, "server");
	pool = json_object_get(st, "pool");
	printf("server  %s, up %llus, %llu connection(s) (%llu total), "
	    "%llu requests, %llu bytes in, %llu bytes out, %llu reload(s), "
	    "RSS %.1f MB\n",
	    json_string_value(json_object_get(srv, "state")),
	    (unsigned long long)jget(srv, "uptime_s"),
	    (unsigned long long)jget(srv, "connections"),
	    (unsigned long long)jget(srv, "connections_total"),
	    (unsigned long long)jget(srv, "requests"),
	    (unsigned long long)jget(srv, "bytes_in"),
	    (unsigned long long)jget(srv, "bytes_out"),
	    (unsigned long long)jget(srv, "reloads"),
	    (double)jget(srv, "rss_kb") / 1024);
	printf("pool    %s (shared), %llu workers: %llu busy, %llu idle, %llu queued, "
	    "%llu stuck\n", json_string_value(json_object_get(pool, "mode")),
	    (unsigned long long)jget(pool, "workers"),
	    (unsigned long long)jget(pool, "busy"),
	    (unsigned long long)jget(pool, "idle"),
	    (unsigned long long)jget(pool, "queued"),
	    (unsigned long long)jget(pool, "stuck"));
	printf("\n%-24s %10s %8s %8s %8s %8s %8s %8s %8s\n", "METHOD", "CALLS",
	    "ERRORS", "INFLIGHT", "QUEUED", "P50us", "P90us", "P99us",
	    "MAXus");
	methods = json_object_get(st, "methods");
	json_object_foreach(methods, name, mv)
		printf("%-24s %10llu %8llu %8llu %8llu %8llu %8llu %8llu "
		    "%8llu\n", name,
		    (unsigned long long)jget(mv, "calls"),
		    (unsigned long long)jget(mv, "errors_total"),
		    (unsigned long long)jget(mv, "in_flight"),
		    (unsigned long long)jget(mv, "queued"),
		    (unsigned long long)jget(mv, "latency_us.p50"),
		    (unsigned long long)jget(mv, "latency_us.p90"),
		    (unsigned long long)jget(mv, "latency_us.p99"),
		    (unsigned long long)jget(mv, "latency_us.max"));
	print_plugins(json_object_get(st, "plugins"));
	json_decref(st);
	return EX_OK;
}

/* Every plugin's pool (its own, or its share of the shared one: stuck
 * workers are counted where they are), then what process-mode plugins'
 * children went through. */
static void
print_plugins(json_t *plugins)
{
	json_t *pv, *by, *n;
	const char *name, *sig;
	int head = 0;

	printf("\n%-24s %-9s %-6s %6s %6s %7s %6s %9s\n", "PLUGIN",
	    "ISOLATION", "POOL", "BUSY", "IDLE", "QUEUED", "STUCK", "RSS MB");
	json_object_foreach(plugins, name, pv) {
		const char *iso = json_string_value(json_object_get(pv,
		    "isolation"));
		int procs = iso != NULL && strcmp(iso, "process") == 0;
		char rss[32] = "-";	/* a thread-mode plugin's is demuxd's */

		if (procs)
			snprintf(rss, sizeof(rss), "%.1f",
			    (double)jget(pv, "rss_kb") / 1024);
		printf("%-24s %-9s %-6s %6llu %6llu %7llu %6llu %9s\n", name,
		    iso ? iso : "?", json_string_value(json_object_get(pv,
		    "pool")) ? json_string_value(json_object_get(pv, "pool")) :
		    "?", (unsigned long long)jget(pv, "workers_busy"),
		    (unsigned long long)jget(pv, "workers_idle"),
		    (unsigned long long)jget(pv, "queued"),
		    (unsigned long long)jget(pv, "workers_stuck"), rss);
	}
	json_object_foreach(plugins, name, pv) {
		const char *iso = json_string_value(json_object_get(pv,
		    "isolation"));

		if (iso == NULL || strcmp(iso, "process") != 0)
			continue;
		if (!head++)
			printf("\n%-24s %8s %8s %8s %10s %8s  %s\n", "PLUGIN",
			    "CHILDREN", "CRASHES", "KILLS", "RECYCLES",
			    "RESPAWNS", "CRASHES BY");
		printf("%-24s %8llu %8llu %8llu %10llu %8llu  ", name,
		    (unsigned long long)jget(pv, "children_up"),
		    (unsigned long long)jget(pv, "crashes"),
		    (unsigned long long)jget(pv, "kills"),
		    (unsigned long long)(jget(pv, "recycles.max_requests") +
		    jget(pv, "recycles.max_rss_mb")),
		    (unsigned long long)jget(pv, "respawns"));
		by = json_object_get(pv, "crashes_by");
		json_object_foreach(by, sig, n)
			printf("%s %lld ", sig, (long long)json_integer_value(n));
		printf("\n");
	}
}

/* ---- --batch ---- */

static pthread_mutex_t io_mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned long line_no;
static atomic_int batch_worst;

static void
batch_out(unsigned long id, json_t *body)
{
	json_object_set_new(body, "id", json_integer((json_int_t)id));
	pthread_mutex_lock(&io_mu);
	print_json(stdout, body);
	fflush(stdout);
	pthread_mutex_unlock(&io_mu);
	json_decref(body);
}

static void *
batch_worker(void *arg)
{
	mux_t *m = arg;
	char *line = NULL, err[256];
	size_t cap = 0;
	unsigned long id;
	json_error_t je;
	json_t *req, *params, *meth, *e;
	dmx_buf b = DMX_BUF_INIT;
	msgpack_packer pk;
	mux_result r;
	size_t i;
	int rc, ex;

	for (;;) {
		pthread_mutex_lock(&io_mu);
		if (getline(&line, &cap, stdin) < 0) {
			pthread_mutex_unlock(&io_mu);
			break;
		}
		id = ++line_no;
		pthread_mutex_unlock(&io_mu);
		if (strspn(line, " \t\r\n") == strlen(line))
			continue;
		req = json_loads(line, 0, &je);
		meth = NULL;
		params = NULL;
		if (json_is_array(req) && json_array_size(req) >= 1) {
			meth = json_array_get(req, 0);
			params = json_array();
			for (i = 1; i < json_array_size(req); i++)
				json_array_append(params,
				    json_array_get(req, i));
		} else if (json_is_object(req)) {
			meth = json_object_get(req, "method");
			params = json_object_get(req, "params");
			params = params ? json_incref(params) : json_array();
		}
		b.len = 0;
		msgpack_packer_init(&pk, &b, dmx_buf_pack_write);
		if (!json_is_string(meth) || !json_is_array(params) ||
		    mj_to_msgpack(&pk, params, err, sizeof(err)) != 0) {
			batch_out(id, json_pack("{s:{s:i,s:s}}", "error",
			    "code", -32600, "message", req ? "expected "
			    "[\"method\", arg...] or {\"method\": M, \"params\": "
			    "[...]}" : je.text));
			json_decref(params);
			json_decref(req);
			ex = EX_USAGE;
			if (ex > atomic_load(&batch_worst))
				atomic_store(&batch_worst, ex);
			continue;
		}
		rc = mux_call(m, json_string_value(meth), b.data, b.len, &r,
		    timeout_ms);
		if (rc == MUX_OK) {
			batch_out(id, json_pack("{s:o}", "result",
			    mj_from_bytes(r.data, r.len)));
		} else {
			e = json_pack("{s:I,s:s}", "code", rc == MUX_EREMOTE ?
			    (json_int_t)r.code : (json_int_t)rc, "message",
			    r.message ? r.message : mux_strerror(rc));
			if (r.trace)
				json_object_set_new(e, "trace",
				    json_string(r.trace));
			if (rc != MUX_EREMOTE)
				json_object_set_new(e, "local", json_true());
			batch_out(id, json_pack("{s:o}", "error", e));
		}
		ex = exit_for(rc);
		if (ex > atomic_load(&batch_worst))
			atomic_store(&batch_worst, ex);
		mux_result_free(&r);
		json_decref(params);
		json_decref(req);
	}
	free(line);
	dmx_buf_release(&b);
	return NULL;
}

static int
do_batch(mux_t *m, int conc)
{
	pthread_t th[256];
	int i;

	if (conc > 256)
		conc = 256;
	for (i = 0; i < conc; i++)
		pthread_create(&th[i], NULL, batch_worker, m);
	for (i = 0; i < conc; i++)
		pthread_join(th[i], NULL);
	return atomic_load(&batch_worst);
}

/* ---- load ---- */

typedef struct load {
	mux_t		*m;
	const char	*method;
	dmx_buf		 params;
	long		 total;
	_Atomic long	 next, done, errors;
	uint64_t	*lat;		/* ns, one per call */
} load;

static uint64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *
load_worker(void *arg)
{
	load *L = arg;
	mux_result r;
	uint64_t t0;
	long i;

	while ((i = atomic_fetch_add(&L->next, 1)) < L->total) {
		t0 = now_ns();
		if (mux_call(L->m, L->method, L->params.data, L->params.len,
		    &r, timeout_ms) != MUX_OK)
			atomic_fetch_add(&L->errors, 1);
		L->lat[i] = now_ns() - t0;
		mux_result_free(&r);
		atomic_fetch_add(&L->done, 1);
	}
	return NULL;
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static int
do_load(mux_t *m, const char *method, char **args, int nargs, long n, int p)
{
	load L;
	pthread_t *th;
	uint64_t t0, dt;
	struct timespec tick = { 0, 200 * 1000000L };
	long done;
	int i;

	memset(&L, 0, sizeof(L));
	L.m = m;
	L.method = method;
	L.total = n;
	if (pack_args(args, nargs, &L.params) != 0) {
		dmx_buf_release(&L.params);
		return EX_USAGE;
	}
	L.lat = calloc((size_t)n, sizeof(*L.lat));
	th = calloc((size_t)p, sizeof(*th));
	if (L.lat == NULL || th == NULL) {
		fprintf(stderr, "muxcall: out of memory\n");
		return EX_USAGE;
	}
	t0 = now_ns();
	for (i = 0; i < p; i++)
		pthread_create(&th[i], NULL, load_worker, &L);
	/* progress on stderr while the calls run */
	while ((done = atomic_load(&L.done)) < n) {
		dt = now_ns() - t0;
		fprintf(stderr, "\r%ld/%ld calls, %.0f calls/s, %ld errors   ",
		    done, n, done / (dt / 1e9), atomic_load(&L.errors));
		nanosleep(&tick, NULL);
	}
	for (i = 0; i < p; i++)
		pthread_join(th[i], NULL);
	dt = now_ns() - t0;
	fprintf(stderr, "\r%60s\r", "");
	qsort(L.lat, (size_t)n, sizeof(*L.lat), cmp_u64);
	printf("%ld calls from %d threads in %.3f s: %.0f calls/s, %ld errors\n"
	    "latency us: p50 %.1f  p90 %.1f  p99 %.1f  max %.1f\n", n, p,
	    dt / 1e9, n / (dt / 1e9), atomic_load(&L.errors),
	    L.lat[(n - 1) * 50 / 100] / 1e3, L.lat[(n - 1) * 90 / 100] / 1e3,
	    L.lat[(n - 1) * 99 / 100] / 1e3, L.lat[n - 1] / 1e3);
	dmx_buf_release(&L.params);
	free(L.lat);
	free(th);
	return atomic_load(&L.errors) ? EX_REMOTE : EX_OK;
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "connect", required_argument, NULL, 'c' },
		{ "spawn", required_argument, NULL, 'S' },
		{ "pretty", no_argument, NULL, 'p' },
		{ "timeout", required_argument, NULL, 't' },
		{ "list", no_argument, NULL, 'l' },
		{ "stats", no_argument, NULL, 's' },
		{ "top", no_argument, NULL, 'O' },
		{ "interval", required_argument, NULL, 'I' },
		{ "batch", no_argument, NULL, 'b' },
		{ "help", no_argument, NULL, 'h' },
		{ "token", required_argument, NULL, 'T' },
		{ "tls-ca", required_argument, NULL, 'A' },
		{ "tls-cert", required_argument, NULL, 'E' },
		{ "tls-key", required_argument, NULL, 'K' },
		{ "watch", no_argument, NULL, 'w' },
		{ "follow", no_argument, NULL, 'f' },
		{ "subscribe", no_argument, NULL, 'F' },
		{ NULL, 0, NULL, 0 },
	};
	char *token_name = NULL, secret[4096];
	const char *tls_ca = NULL, *tls_cert = NULL, *tls_key = NULL;
	const char *uri = getenv("DEMUX_URI"), *spawn = NULL;
	const char *from = "from DEMUX_URI";	/* where uri came from */
	int ch, list = 0, stats = 0, batch = 0, threads = 1, rc, top = 0;
	int interval = 1000, watch = 0, follow = 0;
	long n = 0;
	char err[MUX_ERRLEN];
	mux_t *m;

	if (uri == NULL || *uri == '\0') {
		uri = "tcp:127.0.0.1:7411";
		from = "the default: no -c, and DEMUX_URI is not set";
	}
	while ((ch = getopt_long(argc, argv, "+c:pt:lsbn:P:hwf", opts, NULL)) !=
	    -1) {
		switch (ch) {
		case 'c': uri = optarg; from = NULL; break;
		case 'S': spawn = optarg; break;
		case 'p': pretty = 1; break;
		case 't': timeout_ms = atoi(optarg); break;
		case 'l': list = 1; break;
		case 's': stats = 1; break;
		case 'O': top = 1; break;
		case 'I': interval = atoi(optarg); break;
		case 'b': batch = 1; break;
		case 'n': n = atol(optarg); break;
		case 'P': threads = atoi(optarg); break;
		case 'T': {
			/* NAME:FILE, the secret being FILE's first line */
			char *colon = strchr(optarg, ':');
			FILE *f;

			if (colon == NULL || colon == optarg) {
				fprintf(stderr, "muxcall: --token NAME:FILE\n");
				return EX_USAGE;
			}
			*colon = '\0';
			token_name = optarg;
			if ((f = fopen(colon + 1, "r")) == NULL ||
			    fgets(secret, sizeof(secret), f) == NULL) {
				fprintf(stderr, "muxcall: --token: %s: %s\n",
				    colon + 1, f ? "empty" : strerror(errno));
				if (f)
					fclose(f);
				return EX_USAGE;
			}
			fclose(f);
			secret[strcspn(secret, "\r\n")] = '\0';
			break;
		}
		case 'A': tls_ca = optarg; break;
		case 'E': tls_cert = optarg; break;
		case 'K': tls_key = optarg; break;
		case 'w': watch = 1; break;
		case 'f': follow = 1; break;
		case 'F': watch = follow = 1; break;
		case 'h': usage(stdout); return EX_OK;
		default: usage(stderr); return EX_USAGE;
		}
	}
	if ((list + stats + batch + top > 1) ||
	    (n > 0 && (list || stats || batch)) ||
	    (!list && !stats && !batch && !top && optind >= argc) ||
	    ((list || stats || batch || top) && optind < argc) || n < 0 ||
	    threads < 1 || interval < 10 || (follow && !watch) ||
	    (watch && (list || stats || batch || top || n > 0))) {
		usage(stderr);
		return EX_USAGE;
	}
	if (follow)
		mc_watch_block_signals();	/* before libmux's threads */
	if (spawn != NULL) {
		char *sargv[] = { "demuxd", "--stdio", "-q", "-c",
		    (char *)spawn, NULL };
		const char *d = getenv("DEMUXD");

		if (d != NULL && *d != '\0')
			sargv[0] = (char *)d;
		m = mux_spawn(sargv, err, sizeof(err));
	} else if (token_name != NULL || tls_ca || tls_cert || tls_key) {
		mux_options o;

		mux_options_init(&o);
		o.reconnect = 0;
		o.health_interval_ms = 0;
		if (token_name != NULL) {
			o.auth_name = token_name;
			o.auth_secret = secret;
		}
		o.tls_ca = tls_ca;
		o.tls_cert = tls_cert;
		o.tls_key = tls_key;
		m = mux_open(uri, &o, err, sizeof(err));
		explicit_bzero(secret, sizeof(secret));
	} else {
		m = mux_connect(uri, err, sizeof(err));
	}
	if (m == NULL) {
		/* a refused default address is most often a missing -c */
		if (spawn == NULL && from != NULL)
			fprintf(stderr, "muxcall: %s\nmuxcall: (%s is %s; "
			    "name the server with -c URI, e.g. -c "
			    "unix:/run/demux/demux.sock)\n", err, uri, from);
		else
			fprintf(stderr, "muxcall: %s\n", err);
		return EX_CONN;
	}
	if (list) {
		char *none[1] = { NULL };

		rc = do_call(m, "$/methods", none, 0);
	} else if (stats) {
		rc = do_stats(m);
	} else if (top) {
		rc = exit_for(mc_top(m, (unsigned)interval,
		    (unsigned long)n));
	} else if (batch) {
		rc = do_batch(m, threads > 1 ? threads : 64);
	} else if (watch) {
		dmx_buf params = DMX_BUF_INIT;

		if (pack_args(argv + optind + 1, argc - optind - 1,
		    &params) != 0)
			rc = EX_USAGE;
		else
			rc = exit_for(mc_watch(m, argv[optind], params.data,
			    params.len, timeout_ms, follow, pretty));
		dmx_buf_release(&params);
	} else if (n > 0) {
		rc = do_load(m, argv[optind], argv + optind + 1,
		    argc - optind - 1, n, threads);
	} else {
		rc = do_call(m, argv[optind], argv + optind + 1,
		    argc - optind - 1);
	}
	mux_free(m);
	return rc;
}
