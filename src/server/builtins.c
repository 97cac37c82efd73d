/*
 * builtins.c - the methods demuxd serves itself: $/ping, $/health,
 * $/methods, $/plugins, $/stats. They run on the I/O thread: each is a
 * lookup or a snapshot of counters, never a wait.
 *
 * Locks: none; executors' snapshots take their own locks (leaves).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <msgpack.h>

#include "../common/msg.h"
#include "../common/wire.h"
#include "access.h"
#include "builtins.h"
#include "log.h"

/* A worker busy on one job for this long is reported as stuck. */
#define STUCK_MS 10000u

static void
pk_kv_u64(msgpack_packer *pk, const char *k, uint64_t v)
{
	dmx_pack_cstr(pk, k);
	msgpack_pack_uint64(pk, v);
}

static uint64_t
ld(_Atomic uint64_t *v)
{
	return atomic_load_explicit(v, memory_order_relaxed);
}

static int
draining(dmx_server_stats *st)
{
	return atomic_load_explicit(&st->draining, memory_order_relaxed);
}

static void
pack_method(msgpack_packer *pk, const dmx_route *rt)
{
	dmx_method_stats *ms = &rt->stats->m;
	uint64_t calls = ld(&ms->calls), disp = ld(&ms->dispatched);
	uint64_t inflight = disp > calls ? disp - calls : 0;
	uint64_t running = dmx_exec_running(rt->plugin->exec, rt->stats, NULL);
	dmx_err_snap es;
	unsigned i;
	char key[24];

	long dopen = atomic_load(&rt->stats->deferred_open);
	long dover = atomic_load(&rt->stats->deferred_overdue);
	uint64_t waiting;

	dmx_method_errors(ms, &es);
	dmx_pack_cstr(pk, rt->name);
	msgpack_pack_map(pk, 11);
	pk_kv_u64(pk, "calls", calls);
	pk_kv_u64(pk, "errors_total", es.total);
	dmx_pack_cstr(pk, "errors");
	msgpack_pack_map(pk, es.n + (es.other ? 1 : 0));
	for (i = 0; i < es.n; i++) {
		snprintf(key, sizeof(key), "%lld", (long long)es.code[i]);
		pk_kv_u64(pk, key, es.count[i]);
	}
	if (es.other)
		pk_kv_u64(pk, "other", es.other);
	pk_kv_u64(pk, "in_flight", inflight);
	pk_kv_u64(pk, "running", running);
	/* in flight: queued, running on a worker, or deferred (open, held
	 * by the plugin, on no worker) */
	waiting = running + (uint64_t)(dopen > 0 ? dopen : 0);
	pk_kv_u64(pk, "queued", inflight > waiting ? inflight - waiting : 0);
	pk_kv_u64(pk, "deferred_open", (uint64_t)(dopen > 0 ? dopen : 0));
	pk_kv_u64(pk, "deferred_overdue", (uint64_t)(dover > 0 ? dover : 0));
	dmx_pack_cstr(pk, "latency_us");
	msgpack_pack_map(pk, 4);
	pk_kv_u64(pk, "p50", dmx_hist_quantile(&ms->latency, 0.50) / 1000);
	pk_kv_u64(pk, "p90", dmx_hist_quantile(&ms->latency, 0.90) / 1000);
	pk_kv_u64(pk, "p99", dmx_hist_quantile(&ms->latency, 0.99) / 1000);
	pk_kv_u64(pk, "max",
	    atomic_load_explicit(&ms->latency.max_ns, memory_order_relaxed) /
	    1000);	/* the latency histogram's non-empty buckets: [upper edge ns, count]
	 * (the status page draws it) */
	{
		uint64_t top[64], cnt[64];
		unsigned k, nb = dmx_hist_buckets(&ms->latency, top, cnt, 64);

		dmx_pack_cstr(pk, "latency_hist_ns");
		msgpack_pack_array(pk, nb);
		for (k = 0; k < nb; k++) {
			msgpack_pack_array(pk, 2);
			msgpack_pack_uint64(pk, top[k]);
			msgpack_pack_uint64(pk, cnt[k]);
		}
	}
	/* may run on the loop's thread (inline: auto, its plugin eligible,
	 * and no run of it has taken over DMX_INLINE_MAX_NS); last, so that
	 * the fields before keep their order */
	pk_kv_u64(pk, "inline", rt->plugin->inline_ok &&
	    !atomic_load_explicit(&rt->stats->slow, memory_order_relaxed));
}

/* A pool that had to write off more than max_abandoned workers could not
 * replace the last: its plugins may be dead until demuxd restarts. */
static int
pool_full(dmx_exec *e)
{
	dmx_exec_info in;

	dmx_exec_info_get(e, STUCK_MS, &in);
	return in.unreplaced > 0;
}

/* What $/health says: draining first, then unhealthy, else serving. */
static const char *
health_of(const dmx_gen *g, dmx_server_stats *st)
{
	size_t i;

	if (draining(st))
		return "draining";
	if (pool_full(g->hooks.shared))
		return "unhealthy";
	for (i = 0; i < g->nplugins; i++)
		if (g->plugins[i]->own_pool && pool_full(g->plugins[i]->exec))
			return "unhealthy";
	return "serving";
}

/* What a process-mode plugin's children went through (7 keys). */
static void
pack_procs(msgpack_packer *pk, const dmx_exec_procs *p)
{
	unsigned k, nsig = 0;
	uint64_t rss = 0;
	char name[32];

	for (k = 0; k < p->nchildren; k++)
		rss += p->child[k].rss_kb;
	pk_kv_u64(pk, "children_up", p->up);
	pk_kv_u64(pk, "rss_kb", rss);	/* its children's, together */
	pk_kv_u64(pk, "crashes", p->crashes);
	for (k = 0; k < 65; k++)
		nsig += p->crash_sig[k] > 0;
	dmx_pack_cstr(pk, "crashes_by");
	msgpack_pack_map(pk, nsig);
	for (k = 0; k < 65; k++) {
		const char *ab = k ? sigabbrev_np((int)k) : NULL;

		if (p->crash_sig[k] == 0)
			continue;
		if (k == 0)
			snprintf(name, sizeof(name), "exit");
		else if (ab != NULL)
			snprintf(name, sizeof(name), "SIG%s", ab);
		else
			snprintf(name, sizeof(name), "signal %u", k);
		pk_kv_u64(pk, name, p->crash_sig[k]);
	}
	pk_kv_u64(pk, "kills", p->kills);
	dmx_pack_cstr(pk, "recycles");
	msgpack_pack_map(pk, 2);
	pk_kv_u64(pk, "max_requests", p->recycles_requests);
	pk_kv_u64(pk, "max_rss_mb", p->recycles_rss);
	pk_kv_u64(pk, "respawns", p->respawns);
}

/* $/plugins: each plugin as configured, and a process-mode one's
 * children as they are now. */
static void
pack_plugins(const dmx_gen *g, dmx_buf *b)
{
	msgpack_packer pk;
	dmx_exec_procs pi;
	size_t i, k;
	int procs;

	msgpack_packer_init(&pk, b, dmx_buf_pack_write);
	msgpack_pack_array(&pk, g->nplugins);
	for (i = 0; i < g->nplugins; i++) {
		const dmx_plugin *p = g->plugins[i];

		procs = p->exec != NULL && dmx_exec_procs_get(p->exec, &pi);
		msgpack_pack_map(&pk, 5 + (procs ? 2 : 0) +
		    (p->nwatch > 0 ? 1 : 0));
		if (p->nwatch > 0) {
			/* files a reload checks (demux_watch_file): a
			 * child's report tells its parent */
			dmx_pack_cstr(&pk, "watch");
			msgpack_pack_array(&pk, p->nwatch);
			for (k = 0; k < p->nwatch; k++)
				dmx_pack_cstr(&pk, p->watch[k].path);
		}
		dmx_pack_cstr(&pk, "name");
		dmx_pack_cstr(&pk, p->name);
		dmx_pack_cstr(&pk, "path");
		dmx_pack_cstr(&pk, p->path);
		dmx_pack_cstr(&pk, "version");
		dmx_pack_cstr(&pk, p->version);
		dmx_pack_cstr(&pk, "methods");
		msgpack_pack_array(&pk, p->nmethods);
		for (k = 0; k < p->nmethods; k++)
			dmx_pack_cstr(&pk, p->methods[k]);
		dmx_pack_cstr(&pk, "isolation");
		dmx_pack_cstr(&pk, procs ? "process" : "thread");
		if (!procs)
			continue;
		pk_kv_u64(&pk, "processes", pi.processes);
		dmx_pack_cstr(&pk, "children");
		msgpack_pack_array(&pk, pi.nchildren);
		for (k = 0; k < pi.nchildren; k++) {
			msgpack_pack_map(&pk, 5);
			pk_kv_u64(&pk, "pid", (uint64_t)pi.child[k].pid);
			dmx_pack_cstr(&pk, "state");
			dmx_pack_cstr(&pk, pi.child[k].up ? "serving" :
			    "starting or retiring");
			pk_kv_u64(&pk, "started_ms", pi.child[k].started_ms);
			pk_kv_u64(&pk, "calls", pi.child[k].calls);
			pk_kv_u64(&pk, "rss_kb", pi.child[k].rss_kb);
		}
	}
}

/* $/methods under access rules: only what identity may call. */
static void
pack_methods_for(const dmx_gen *g, const char *identity, msgpack_packer *pk)
{
	static const char *const builtin[] = { "$/auth", "$/health",
	    "$/methods", "$/ping", "$/plugins", "$/stats" };
	size_t i, n = dmx_router_count(g->router), k = 0;

	for (i = 0; i < 6; i++)
		k += dmx_access_allowed(g->cfg, identity, builtin[i]) != 0;
	for (i = 0; i < n; i++)
		k += dmx_access_allowed(g->cfg, identity,
		    dmx_router_at(g->router, i)->name) != 0;
	msgpack_pack_array(pk, k);
	for (i = 0; i < 6; i++)
		if (dmx_access_allowed(g->cfg, identity, builtin[i]))
			dmx_pack_cstr(pk, builtin[i]);
	for (i = 0; i < n; i++)
		if (dmx_access_allowed(g->cfg, identity,
		    dmx_router_at(g->router, i)->name))
			dmx_pack_cstr(pk, dmx_router_at(g->router, i)->name);
}

/* The access section of $/stats: refusals by identity. */
static void
pack_access(msgpack_packer *pk, dmx_server_stats *st)
{
	dmx_refusals rf;
	unsigned i;

	dmx_refusals_get(&st->refusals, &rf);
	dmx_pack_cstr(pk, "access");
	msgpack_pack_map(pk, 1);
	dmx_pack_cstr(pk, "refused");
	msgpack_pack_map(pk, rf.n + (rf.other ? 1 : 0));
	for (i = 0; i < rf.n; i++)
		pk_kv_u64(pk, rf.slot[i].identity, rf.slot[i].count);
	if (rf.other)
		pk_kv_u64(pk, "other", rf.other);
}

static void
pack_stats(const dmx_gen *g, dmx_server_stats *st, dmx_buf *b)
{
	const dmx_router *r = g->router;
	dmx_exec_procs pi_p;
	int procs;
	size_t i, j, n = dmx_router_count(r), nplugins = 0;
	const dmx_plugin *seen[256];
	msgpack_packer pk;
	dmx_exec_info pi;

	dmx_exec_info_get(g->hooks.shared, STUCK_MS, &pi);
	msgpack_packer_init(&pk, b, dmx_buf_pack_write);
	msgpack_pack_map(&pk, 5);
	pack_access(&pk, st);

	dmx_pack_cstr(&pk, "server");
	msgpack_pack_map(&pk, 14);
	dmx_pack_cstr(&pk, "state");
	dmx_pack_cstr(&pk, health_of(g, st));
	pk_kv_u64(&pk, "uptime_s", (dmx_now_ns() - st->started_ns) /
	    1000000000u);
	pk_kv_u64(&pk, "connections", ld(&st->connections));
	pk_kv_u64(&pk, "connections_total", ld(&st->accepted));
	pk_kv_u64(&pk, "requests", ld(&st->requests));
	pk_kv_u64(&pk, "bytes_in", ld(&st->bytes_in));
	pk_kv_u64(&pk, "bytes_out", ld(&st->bytes_out));
	pk_kv_u64(&pk, "reloads", ld(&st->reloads));
	pk_kv_u64(&pk, "reload_failures", ld(&st->reload_failures));
	pk_kv_u64(&pk, "rss_kb", dmx_rss_kb(getpid()));
	pk_kv_u64(&pk, "notifications", ld(&st->notes));
	pk_kv_u64(&pk, "notifications_dropped", ld(&st->notes_dropped));
	pk_kv_u64(&pk, "inline_runs", ld(&st->inline_runs));
	pk_kv_u64(&pk, "inline_takeovers", ld(&st->inline_takeovers));

	dmx_pack_cstr(&pk, "pool");
	msgpack_pack_map(&pk, 9);
	dmx_pack_cstr(&pk, "mode");
	dmx_pack_cstr(&pk, pi.on_demand ? "on-demand" : "fixed");
	pk_kv_u64(&pk, "workers", (uint64_t)(pi.on_demand ? pi.max_threads :
	    pi.workers));
	pk_kv_u64(&pk, "busy", (uint64_t)pi.busy);
	pk_kv_u64(&pk, "idle", (uint64_t)pi.idle);
	pk_kv_u64(&pk, "queued", pi.queued);
	pk_kv_u64(&pk, "stuck", pi.stuck);
	pk_kv_u64(&pk, "longest_running_ms", pi.longest_ms);
	pk_kv_u64(&pk, "abandoned", pi.abandoned);
	pk_kv_u64(&pk, "max_abandoned", pi.max_abandoned);

	/* plugins, in route order, each once */
	for (i = 0; i < n; i++) {
		const dmx_plugin *p = dmx_router_at(r, i)->plugin;

		for (j = 0; j < nplugins && seen[j] != p; j++)
			;
		if (j == nplugins && nplugins < 256)
			seen[nplugins++] = p;
	}
	dmx_pack_cstr(&pk, "plugins");
	msgpack_pack_map(&pk, nplugins);
	for (j = 0; j < nplugins; j++) {
		uint64_t busy = 0, inflight = 0;

		for (i = 0; i < n; i++) {
			const dmx_route *rt = dmx_router_at(r, i);
			uint64_t nc = ld(&rt->stats->m.calls),
			    nd = ld(&rt->stats->m.dispatched);

			if (rt->plugin != seen[j])
				continue;
			inflight += nd > nc ? nd - nc : 0;
		}
		dmx_exec *pool = seen[j]->exec;
		dmx_exec_info own;

		busy = dmx_exec_running(pool, NULL, seen[j]);

		dmx_exec_info_get(pool, STUCK_MS, &own);
		dmx_pack_cstr(&pk, seen[j]->name);
		procs = dmx_exec_procs_get(pool, &pi_p);
		msgpack_pack_map(&pk, 9 + (procs ? 7 : 0));
		dmx_pack_cstr(&pk, "isolation");
		dmx_pack_cstr(&pk, procs ? "process" : "thread");
		if (procs)
			pack_procs(&pk, &pi_p);
		dmx_pack_cstr(&pk, "version");
		dmx_pack_cstr(&pk, seen[j]->version);
		dmx_pack_cstr(&pk, "pool");
		dmx_pack_cstr(&pk, seen[j]->own_pool ? "own" : "shared");
		pk_kv_u64(&pk, "workers_busy", busy);
		pk_kv_u64(&pk, "workers_idle", (uint64_t)own.idle);
		pk_kv_u64(&pk, "queued", own.queued);
		pk_kv_u64(&pk, "in_flight", inflight);
		pk_kv_u64(&pk, "workers_abandoned",
		    dmx_exec_abandoned_in(pool, seen[j]));
		pk_kv_u64(&pk, "workers_stuck", dmx_exec_stuck_in(pool, STUCK_MS,
		    seen[j]));
	}

	dmx_pack_cstr(&pk, "methods");
	msgpack_pack_map(&pk, n);
	for (i = 0; i < n; i++)
		pack_method(&pk, dmx_router_at(r, i));
}

int
dmx_builtin(const dmx_gen *g, dmx_server_stats *st, const char *identity,
    const char *m, uint32_t ml, dmx_buf *result)
{
	const dmx_router *r = g->router;
	const dmx_buf *b;
	msgpack_packer pk;

	msgpack_packer_init(&pk, result, dmx_buf_pack_write);
	if (ml == 6 && memcmp(m, "$/ping", 6) == 0) {
		dmx_pack_cstr(&pk, "pong");
	} else if (ml == 8 && memcmp(m, "$/health", 8) == 0) {
		dmx_pack_cstr(&pk, health_of(g, st));
	} else if (ml == 9 && memcmp(m, "$/methods", 9) == 0) {
		if (g->cfg->has_access) {
			pack_methods_for(g, identity, &pk);
		} else {
			b = dmx_router_methods(r);
			dmx_buf_append(result, b->data, b->len);
		}
	} else if (ml == 9 && memcmp(m, "$/plugins", 9) == 0) {
		pack_plugins(g, result);
	} else if (ml == 7 && memcmp(m, "$/stats", 7) == 0) {
		pack_stats(g, st, result);
	} else {
		return DMX_E_NO_METHOD;
	}
	return 0;
}
