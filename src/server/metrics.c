/*
 * metrics.c - GET /metrics in the Prometheus text format (0.0.4), served by
 * libmicrohttpd on its own thread from the same counters as $/stats.
 *
 * libmicrohttpd is used because an HTTP parser facing the network is exactly
 * the code we should not write ourselves; it runs one internal thread and
 * only reads our atomics, so it cannot slow the request path.
 *
 * Locks: a scrape takes one generation reference (dmx_server_gen_acquire:
 * the slot's lock, a leaf, for a moment) and holds no lock while it reads.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <microhttpd.h>

#include "../common/uri.h"
#include "access.h"
#include "log.h"
#include "metrics.h"
#include "server.h"
#include "status.h"

struct dmx_metrics {
	struct MHD_Daemon *d;
	dmx_server	  *srv;
	int		   fd;
};

static void DEMUX_PRINTF(2, 3)
out(dmx_buf *b, const char *fmt, ...)
{
	char line[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n > 0)
		dmx_buf_append(b, line, (size_t)n < sizeof(line) ? (size_t)n :
		    sizeof(line) - 1);
}

static uint64_t
ld(_Atomic uint64_t *v)
{
	return atomic_load_explicit(v, memory_order_relaxed);
}

/* A label value as the text format wants it: \\, \" and \n escaped. */
static void
label(char *dst, size_t cap, const char *s)
{
	size_t n = 0;

	for (; *s != '\0' && n + 3 < cap; s++) {
		if (*s == '\\' || *s == '"' || *s == '\n') {
			dst[n++] = '\\';
			dst[n++] = *s == '\n' ? 'n' : *s;
		} else {
			dst[n++] = *s;
		}
	}
	dst[n] = '\0';
}

/* Plugins with isolation: process: their children and what befell them. */
static void
render_procs(const dmx_gen *g, dmx_buf *b)
{
	static const char *const fam[] = {
		"demux_plugin_children", "gauge", "Child processes serving.",
		"demux_plugin_crashes_total", "counter",
		"Children that died unasked, by signal (exit: a non-zero exit).",
		"demux_plugin_kills_total", "counter",
		"Children killed for a call past timeout_ms + kill_after_ms.",
		"demux_plugin_recycles_total", "counter",
		"Children replaced gracefully, by reason.",
		"demux_plugin_respawns_total", "counter",
		"Children started to replace one that died.",
		"demux_plugin_resident_memory_bytes", "gauge",
		"Resident memory of the plugin's children, together.",
	};
	dmx_exec_procs pp;
	size_t i, f;
	unsigned k;
	char sig[24];

	for (f = 0; f < sizeof(fam) / sizeof(fam[0]) / 3; f++) {
		int any = 0;

		for (i = 0; i < g->nplugins; i++) {
			const dmx_plugin *p = g->plugins[i];

			if (p->exec == NULL || !dmx_exec_procs_get(p->exec, &pp))
				continue;
			if (!any++)
				out(b, "# HELP %s %s\n# TYPE %s %s\n",
				    fam[3 * f], fam[3 * f + 2], fam[3 * f],
				    fam[3 * f + 1]);
			switch (f) {
			case 0:
				out(b, "%s{plugin=\"%s\"} %u\n", fam[0], p->name,
				    pp.up);
				break;
			case 1:
				for (k = 0; k < 65; k++) {
					const char *ab = k ? sigabbrev_np((int)k) :
					    NULL;

					if (pp.crash_sig[k] == 0)
						continue;
					if (k == 0)
						snprintf(sig, sizeof(sig), "exit");
					else if (ab != NULL)
						snprintf(sig, sizeof(sig), "SIG%s",
						    ab);
					else
						snprintf(sig, sizeof(sig), "%u", k);
					out(b, "%s{plugin=\"%s\",signal=\"%s\"} "
					    "%llu\n", fam[3], p->name, sig,
					    (unsigned long long)pp.crash_sig[k]);
				}
				break;
			case 2:
				out(b, "%s{plugin=\"%s\"} %llu\n", fam[6],
				    p->name, (unsigned long long)pp.kills);
				break;
			case 3:
				out(b, "%s{plugin=\"%s\",reason=\"max_requests\"} "
				    "%llu\n%s{plugin=\"%s\",reason=\"max_rss_mb\"} "
				    "%llu\n", fam[9], p->name,
				    (unsigned long long)pp.recycles_requests,
				    fam[9], p->name,
				    (unsigned long long)pp.recycles_rss);
				break;
			case 4:
				out(b, "%s{plugin=\"%s\"} %llu\n", fam[12],
				    p->name, (unsigned long long)pp.respawns);
				break;
			case 5: {
				uint64_t rss = 0;

				for (k = 0; k < pp.nchildren; k++)
					rss += pp.child[k].rss_kb;
				out(b, "%s{plugin=\"%s\"} %llu\n", fam[15],
				    p->name, (unsigned long long)rss * 1024);
				break;
			}
			}
		}
	}
}

/* Called on libmicrohttpd's thread: the generation's reference (taken by
 * the caller) keeps every route name and counter alive while we read. */
static void
render(dmx_server *s, const dmx_gen *g, dmx_buf *b)
{
	dmx_server_stats *st = dmx_server_stats_get(s);
	const dmx_router *r = g->router;
	size_t i, n = dmx_router_count(r);
	dmx_exec_info pi;
	unsigned k;

	dmx_exec_info_get(g->hooks.shared, 10000, &pi);
	out(b, "# HELP demux_up 1 while demuxd serves, 0 while it drains.\n"
	    "# TYPE demux_up gauge\ndemux_up %d\n",
	    atomic_load(&st->draining) ? 0 : 1);
	out(b, "# HELP demux_uptime_seconds Seconds since demuxd started.\n"
	    "# TYPE demux_uptime_seconds gauge\ndemux_uptime_seconds %.3f\n",
	    (double)(dmx_now_ns() - st->started_ns) / 1e9);
	out(b, "# HELP demux_connections Connections open now.\n"
	    "# TYPE demux_connections gauge\ndemux_connections %llu\n",
	    (unsigned long long)ld(&st->connections));
	out(b, "# HELP demux_connections_accepted_total Connections accepted.\n"
	    "# TYPE demux_connections_accepted_total counter\n"
	    "demux_connections_accepted_total %llu\n",
	    (unsigned long long)ld(&st->accepted));
	out(b, "# HELP demux_requests_total Messages received.\n"
	    "# TYPE demux_requests_total counter\ndemux_requests_total %llu\n",
	    (unsigned long long)ld(&st->requests));
	out(b, "# HELP demux_received_bytes_total Bytes read from clients.\n"
	    "# TYPE demux_received_bytes_total counter\n"
	    "demux_received_bytes_total %llu\n",
	    (unsigned long long)ld(&st->bytes_in));
	out(b, "# HELP demux_sent_bytes_total Bytes written to clients.\n"
	    "# TYPE demux_sent_bytes_total counter\n"
	    "demux_sent_bytes_total %llu\n",
	    (unsigned long long)ld(&st->bytes_out));
	out(b, "# HELP demux_reloads_total Configuration reloads.\n"
	    "# TYPE demux_reloads_total counter\ndemux_reloads_total %llu\n",
	    (unsigned long long)ld(&st->reloads));
	out(b, "# HELP demux_reload_failures_total Reloads refused (the "
	    "running configuration was kept).\n"
	    "# TYPE demux_reload_failures_total counter\n"
	    "demux_reload_failures_total %llu\n",
	    (unsigned long long)ld(&st->reload_failures));
	out(b, "# HELP demux_notifications_total Notifications plugins "
	    "queued to clients (plugin ABI 1.5).\n"
	    "# TYPE demux_notifications_total counter\n"
	    "demux_notifications_total %llu\n"
	    "# HELP demux_notifications_dropped_total ...dropped: the "
	    "client's unsent output was over max_output.\n"
	    "# TYPE demux_notifications_dropped_total counter\n"
	    "demux_notifications_dropped_total %llu\n",
	    (unsigned long long)ld(&st->notes),
	    (unsigned long long)ld(&st->notes_dropped));
	out(b, "# HELP demux_inline_runs_total Requests run to completion "
	    "where they were decoded (inline: auto).\n"
	    "# TYPE demux_inline_runs_total counter\n"
	    "demux_inline_runs_total %llu\n"
	    "# HELP demux_inline_takeovers_total Inline runs that stalled "
	    "the loop until the standby thread took it over.\n"
	    "# TYPE demux_inline_takeovers_total counter\n"
	    "demux_inline_takeovers_total %llu\n",
	    (unsigned long long)ld(&st->inline_runs),
	    (unsigned long long)ld(&st->inline_takeovers));
	/* the name every Prometheus client library uses for it */
	out(b, "# HELP process_resident_memory_bytes Resident memory of "
	    "demuxd (its plugin children apart).\n"
	    "# TYPE process_resident_memory_bytes gauge\n"
	    "process_resident_memory_bytes %llu\n",
	    (unsigned long long)dmx_rss_kb(getpid()) * 1024);
	out(b, "# HELP demux_workers Worker threads by state.\n"
	    "# TYPE demux_workers gauge\ndemux_workers{state=\"busy\"} %d\n"
	    "demux_workers{state=\"idle\"} %d\n", pi.busy, pi.idle);
	out(b, "# HELP demux_workers_stuck Workers on one job for over 10 s.\n"
	    "# TYPE demux_workers_stuck gauge\ndemux_workers_stuck %u\n",
	    pi.stuck);
	{
		int healthy = pi.unreplaced == 0;

		out(b, "# HELP demux_workers_abandoned Workers written off "
		    "(stuck past timeout_ms + kill_after_ms), by plugin.\n"
		    "# TYPE demux_workers_abandoned gauge\n");
		for (i = 0; i < g->nplugins; i++) {
			dmx_plugin *p = g->plugins[i];
			dmx_exec_info own;

			if (p->exec == NULL)
				continue;
			out(b, "demux_workers_abandoned{plugin=\"%s\"} %u\n",
			    p->name, dmx_exec_abandoned_in(p->exec, p));
			if (p->own_pool) {
				dmx_exec_info_get(p->exec, 10000, &own);
				if (own.unreplaced > 0)
					healthy = 0;
			}
		}
		out(b, "# HELP demux_healthy 0 once a pool has written off "
		    "max_abandoned workers ($/health: unhealthy).\n"
		    "# TYPE demux_healthy gauge\ndemux_healthy %d\n", healthy);
	}
	out(b, "# HELP demux_queue_length Jobs waiting for a worker.\n"
	    "# TYPE demux_queue_length gauge\ndemux_queue_length %u\n",
	    pi.queued);

	out(b, "# HELP demux_method_calls_total Transactions answered, per "
	    "method.\n# TYPE demux_method_calls_total counter\n");
	for (i = 0; i < n; i++) {
		const dmx_route *rt = dmx_router_at(r, i);

		out(b, "demux_method_calls_total{method=\"%s\"} %llu\n",
		    rt->name, (unsigned long long)ld(&rt->stats->m.calls));
	}
	out(b, "# HELP demux_method_errors_total Error answers, per method "
	    "and code.\n# TYPE demux_method_errors_total counter\n");
	for (i = 0; i < n; i++) {
		const dmx_route *rt = dmx_router_at(r, i);
		dmx_err_snap es;

		dmx_method_errors(&rt->stats->m, &es);
		for (k = 0; k < es.n; k++)
			out(b, "demux_method_errors_total{method=\"%s\","
			    "code=\"%lld\"} %llu\n", rt->name,
			    (long long)es.code[k],
			    (unsigned long long)es.count[k]);
		if (es.other)
			out(b, "demux_method_errors_total{method=\"%s\","
			    "code=\"other\"} %llu\n", rt->name,
			    (unsigned long long)es.other);
	}
	out(b, "# HELP demux_method_in_flight Transactions accepted and not "
	    "yet answered.\n# TYPE demux_method_in_flight gauge\n");
	for (i = 0; i < n; i++) {
		const dmx_route *rt = dmx_router_at(r, i);

		uint64_t c = ld(&rt->stats->m.calls),
		    d = ld(&rt->stats->m.dispatched);

		out(b, "demux_method_in_flight{method=\"%s\"} %llu\n",
		    rt->name, (unsigned long long)(d > c ? d - c : 0));
	}
	out(b, "# HELP demux_method_deferred_open Deferred calls (plugin "
	    "ABI 1.5) not yet finished; overdue: past their deadline.\n"
	    "# TYPE demux_method_deferred_open gauge\n");
	for (i = 0; i < n; i++) {
		const dmx_route *rt = dmx_router_at(r, i);
		long o = atomic_load(&rt->stats->deferred_open),
		    v = atomic_load(&rt->stats->deferred_overdue);

		if (o <= 0 && v <= 0)
			continue;
		out(b, "demux_method_deferred_open{method=\"%s\"} %ld\n"
		    "demux_method_deferred_open{method=\"%s\",state="
		    "\"overdue\"} %ld\n", rt->name, o > 0 ? o : 0, rt->name,
		    v > 0 ? v : 0);
	}
	out(b, "# HELP demux_method_latency_seconds From read to answer.\n"
	    "# TYPE demux_method_latency_seconds summary\n");
	for (i = 0; i < n; i++) {
		const dmx_route *rt = dmx_router_at(r, i);
		dmx_hist *h = &rt->stats->m.latency;
		static const double qs[] = { 0.5, 0.9, 0.99 };

		for (k = 0; k < 3; k++)
			out(b, "demux_method_latency_seconds{method=\"%s\","
			    "quantile=\"%g\"} %.9f\n", rt->name, qs[k],
			    (double)dmx_hist_quantile(h, qs[k]) / 1e9);
		out(b, "demux_method_latency_seconds_sum{method=\"%s\"} %.9f\n",
		    rt->name, dmx_hist_sum_ns(h) / 1e9);
		out(b, "demux_method_latency_seconds_count{method=\"%s\"} "
		    "%llu\n", rt->name, (unsigned long long)dmx_hist_count(h));
	}
	render_procs(g, b);
	{
		dmx_refusals rf;
		unsigned ri;
		char lab[200];

		dmx_refusals_get(&st->refusals, &rf);
		out(b, "# HELP demux_access_refused_total Calls refused by the "
		    "access rules, per identity.\n"
		    "# TYPE demux_access_refused_total counter\n");
		for (ri = 0; ri < rf.n; ri++) {
			label(lab, sizeof(lab), rf.slot[ri].identity);
			out(b, "demux_access_refused_total{identity=\"%s\"} "
			    "%llu\n", lab,
			    (unsigned long long)rf.slot[ri].count);
		}
		if (rf.other)
			out(b, "demux_access_refused_total{identity=\"other\"} "
			    "%llu\n", (unsigned long long)rf.other);
	}
}

static enum MHD_Result
answer(void *cls, struct MHD_Connection *conn, const char *url,
    const char *method, const char *version, const char *upload,
    size_t *upload_size, void **con_cls)
{
	dmx_metrics *m = cls;
	struct MHD_Response *resp;
	dmx_buf b = DMX_BUF_INIT;
	unsigned status = MHD_HTTP_OK;
	const char *type = "text/plain; version=0.0.4; charset=utf-8";
	enum MHD_Result rc;

	(void)version; (void)upload; (void)upload_size; (void)con_cls;
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
		status = MHD_HTTP_METHOD_NOT_ALLOWED;
		out(&b, "only GET\n");
	} else if (strcmp(url, "/metrics") == 0) {
		dmx_gen *g = dmx_server_gen_acquire(m->srv);

		render(m->srv, g, &b);
		dmx_gen_unref(g, 1);
	} else if (strcmp(url, "/") == 0 || strcmp(url, "/stats.json") == 0) {
		dmx_gen *g = dmx_server_gen_acquire(m->srv);

		/* HTTP carries no identity here: the page is for callers the
		 * access rules let call $/stats as anonymous */
		if (g->cfg->has_access && !dmx_access_allowed(g->cfg,
		    "anonymous", "$/stats")) {
			status = MHD_HTTP_FORBIDDEN;
			out(&b, "the access rules do not let anonymous call "
			    "$/stats (docs/security.md)\n");
		} else if (url[1] == '\0') {
			const char *page = dmx_status_page();

			dmx_buf_append(&b, page, strlen(page));
			type = "text/html; charset=utf-8";
		} else if (dmx_status_json(g, dmx_server_stats_get(m->srv),
		    &b) == 0) {
			type = "application/json";
		} else {
			status = MHD_HTTP_INTERNAL_SERVER_ERROR;
			out(&b, "out of memory\n");
		}
		dmx_gen_unref(g, 1);
	} else {
		status = MHD_HTTP_NOT_FOUND;
		out(&b, "demuxd serves /metrics, /stats.json and / (the status "
		    "page)\n");
	}
	resp = MHD_create_response_from_buffer(b.len, b.data,
	    MHD_RESPMEM_MUST_FREE);
	if (resp == NULL) {
		dmx_buf_release(&b);
		return MHD_NO;
	}
	MHD_add_response_header(resp, "Content-Type", type);
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	rc = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return rc;
}

dmx_metrics *
dmx_metrics_start(dmx_server *s, const char *uri, char *err, size_t errlen)
{
	dmx_metrics *m;
	dmx_uri u;

	if (dmx_uri_parse(uri, &u, err, errlen) != 0)
		return NULL;
	m = calloc(1, sizeof(*m));
	if (m == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	m->srv = s;
	m->fd = dmx_uri_listen(&u, 64, err, errlen);
	if (m->fd < 0) {
		free(m);
		return NULL;
	}
	m->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD |
	    MHD_USE_POLL, 0, NULL, NULL, answer, m,
	    MHD_OPTION_LISTEN_SOCKET, (MHD_socket)m->fd,
	    MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
	    MHD_OPTION_CONNECTION_LIMIT, (unsigned)64, MHD_OPTION_END);
	if (m->d == NULL) {
		snprintf(err, errlen, "%s: cannot start the HTTP server", uri);
		close(m->fd);
		free(m);
		return NULL;
	}
	dmx_info("metrics on http://%s%s%s:%s/metrics",
	    strchr(u.host, ':') ? "[" : "", u.host,
	    strchr(u.host, ':') ? "]" : "", u.port);
	return m;
}

void
dmx_metrics_stop(dmx_metrics *m)
{
	if (m == NULL)
		return;
	MHD_stop_daemon(m->d);
	close(m->fd);
	free(m);
}
