/*
 * top.c - muxcall --top (top.h).
 *
 * Each refresh asks $/stats once and shows, per method, the calls and
 * errors per second since the last refresh (from the counters' deltas:
 * demuxd keeps no rates), what is in flight and the latency percentiles,
 * sorted by calls per second. On a terminal the view is redrawn in place
 * (ANSI home + clear to end, which every terminal emulator and tmux
 * understand) with the terminal in non-canonical mode so that a single q
 * quits; the mode is put back however the loop ends.
 */
#define _GNU_SOURCE
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "../common/clock.h"
#include "json.h"
#include "top.h"

typedef struct row {
	const char	*name;
	double		 rate, erate;
	uint64_t	 calls, errors, inflight, p50, p99, max;
} row;

typedef struct prev {
	char		*name;
	uint64_t	 calls, errors;
} prev;

static volatile sig_atomic_t stop_asked;

static void
on_int(int sig)
{
	(void)sig;
	stop_asked = 1;
}

static int
by_rate(const void *a, const void *b)
{
	const row *x = a, *y = b;

	if (x->rate != y->rate)
		return x->rate < y->rate ? 1 : -1;
	return strcmp(x->name, y->name);
}

/* The previous refresh's counters of name, or NULL. */
static prev *
prev_find(prev *p, size_t n, const char *name)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (strcmp(p[i].name, name) == 0)
			return &p[i];
	return NULL;
}

static void
draw(FILE *out, json_t *st, row *rows, size_t n, double secs, int tty,
    unsigned rows_max)
{
	json_t *srv = json_object_get(st, "server"),
	    *pool = json_object_get(st, "pool");
	char when[32];
	time_t now = time(NULL);
	struct tm tm;
	size_t i;

	localtime_r(&now, &tm);
	strftime(when, sizeof(when), "%H:%M:%S", &tm);
	if (tty)
		fputs("\033[H", out);
	fprintf(out, "demuxd %s  up %llus  %llu conn  %llu requests  RSS "
	    "%.1f MB  %s%s\n", json_string_value(json_object_get(srv,
	    "state")) ? json_string_value(json_object_get(srv, "state")) : "?",
	    (unsigned long long)mj_u64(srv, "uptime_s"),
	    (unsigned long long)mj_u64(srv, "connections"),
	    (unsigned long long)mj_u64(srv, "requests"),
	    (double)mj_u64(srv, "rss_kb") / 1024, when,
	    tty ? "\033[K" : "");
	fprintf(out, "pool: %llu workers, %llu busy, %llu queued, %llu "
	    "stuck, %llu written off%s\n\n",
	    (unsigned long long)mj_u64(pool, "workers"),
	    (unsigned long long)mj_u64(pool, "busy"),
	    (unsigned long long)mj_u64(pool, "queued"),
	    (unsigned long long)mj_u64(pool, "stuck"),
	    (unsigned long long)mj_u64(pool, "abandoned"), tty ? "\033[K" : "");
	fprintf(out, "%-28s %10s %9s %8s %10s %9s %9s %9s%s\n", "METHOD",
	    "CALLS/S", "ERRORS/S", "INFLIGHT", "CALLS", "P50us", "P99us",
	    "MAXus", tty ? "\033[K" : "");
	for (i = 0; i < n && (!tty || i < rows_max); i++)
		fprintf(out, "%-28.28s %10.1f %9.1f %8llu %10llu %9llu %9llu "
		    "%9llu%s\n", rows[i].name, rows[i].rate, rows[i].erate,
		    (unsigned long long)rows[i].inflight,
		    (unsigned long long)rows[i].calls,
		    (unsigned long long)rows[i].p50,
		    (unsigned long long)rows[i].p99,
		    (unsigned long long)rows[i].max, tty ? "\033[K" : "");
	if (tty)
		fprintf(out, "\n(every %.1f s; q quits)\033[K\n\033[J", secs);
	else
		fputc('\n', out);
	fflush(out);
}

int
mc_top(mux_t *m, unsigned interval_ms, unsigned long count)
{
	int tty = isatty(STDOUT_FILENO) && isatty(STDIN_FILENO), rc = MUX_OK;
	struct termios saved, raw;
	struct sigaction sa;
	prev *pv = NULL;
	size_t npv = 0, i;
	uint64_t t_prev = 0;
	unsigned long shown = 0;
	unsigned rows_max = 20;

	if (tty) {
		struct winsize ws;

		tcgetattr(STDIN_FILENO, &saved);
		raw = saved;
		raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
		raw.c_cc[VMIN] = 0;
		raw.c_cc[VTIME] = 0;
		tcsetattr(STDIN_FILENO, TCSANOW, &raw);
		if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 8)
			rows_max = ws.ws_row - 7u;
		fputs("\033[H\033[2J", stdout);
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_int;
	sigaction(SIGINT, &sa, NULL);
	while (!stop_asked) {
		mux_result r;
		json_t *st, *methods, *mv;
		const char *name;
		row *rows;
		prev *np;
		size_t n = 0;
		uint64_t now;
		double secs;
		struct pollfd pfd = { STDIN_FILENO, POLLIN, 0 };
		char c;

		if ((rc = mux_call(m, "$/stats", NULL, 0, &r, 10000)) != MUX_OK) {
			fprintf(stderr, "muxcall: $/stats: %s\n", r.message ?
			    r.message : mux_strerror(rc));
			mux_result_free(&r);
			break;
		}
		now = dmx_now_ns();
		st = mj_from_bytes(r.data, r.len);
		mux_result_free(&r);
		methods = json_object_get(st, "methods");
		rows = calloc(json_object_size(methods) + 1, sizeof(*rows));
		np = calloc(json_object_size(methods) + 1, sizeof(*np));
		if (rows == NULL || np == NULL) {
			free(rows);
			free(np);
			json_decref(st);
			rc = MUX_ENOMEM;
			break;
		}
		secs = t_prev ? (double)(now - t_prev) / 1e9 : 0;
		json_object_foreach(methods, name, mv) {
			row *w = &rows[n];
			prev *p = prev_find(pv, npv, name);

			w->name = name;
			w->calls = mj_u64(mv, "calls");
			w->errors = mj_u64(mv, "errors_total");
			w->inflight = mj_u64(mv, "in_flight");
			w->p50 = mj_u64(mv, "latency_us.p50");
			w->p99 = mj_u64(mv, "latency_us.p99");
			w->max = mj_u64(mv, "latency_us.max");
			if (p != NULL && secs > 0 && w->calls >= p->calls &&
			    w->errors >= p->errors) {
				w->rate = (double)(w->calls - p->calls) / secs;
				w->erate = (double)(w->errors - p->errors) /
				    secs;
			}
			np[n].name = strdup(name);
			np[n].calls = w->calls;
			np[n].errors = w->errors;
			n++;
		}
		qsort(rows, n, sizeof(*rows), by_rate);
		draw(stdout, st, rows, n, interval_ms / 1000.0, tty, rows_max);
		for (i = 0; i < npv; i++)
			free(pv[i].name);
		free(pv);
		pv = np;
		npv = n;
		t_prev = now;
		free(rows);
		json_decref(st);
		if (count > 0 && ++shown >= count)
			break;
		/* wait out the interval; on a terminal a q ends it */
		if (tty && poll(&pfd, 1, (int)interval_ms) > 0 &&
		    read(STDIN_FILENO, &c, 1) == 1 && (c == 'q' || c == 'Q'))
			break;
		if (!tty) {
			struct timespec ts = { interval_ms / 1000,
			    (long)(interval_ms % 1000) * 1000000L };

			nanosleep(&ts, NULL);
		}
	}
	for (i = 0; i < npv; i++)
		free(pv[i].name);
	free(pv);
	if (tty) {
		tcsetattr(STDIN_FILENO, TCSANOW, &saved);
		fputs("\n", stdout);
	}
	return rc;
}
