/*
 * server.c - demuxd's server core on the I/O thread: listeners and
 * accepting, signals, reload, the orderly stop, and the run loop that
 * drives the event loop (loop.h) and the connection set (conn.h). See
 * server.h for the layers.
 *
 * Threads: everything here runs on the I/O thread (main before
 * dmx_server_run), except gen_dead (any thread: dead_mu, then a wake-up)
 * and dmx_server_gen_acquire (the generation slot's lock).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <grp.h>
#include <unistd.h>

#include "../common/uri.h"
#include "../common/wire.h"
#include "../common/xport.h"
#include "access.h"
#include "conn.h"
#include "fatal.h"
#include "inline.h"
#include "log.h"
#include "loop.h"
#include "pool.h"
#include "tls.h"
#include "server_impl.h"

dmx_gen *
dmx_server_gen(const dmx_server *s)
{
	return dmx_gen_current(&s->gen);
}

dmx_gen *
dmx_server_gen_acquire(dmx_server *s)
{
	return dmx_gen_acquire(&s->gen);
}

dmx_server_stats *
dmx_server_stats_get(dmx_server *s)
{
	return &s->stats;
}

static void reload(dmx_server *s);



/* The last reference to a generation is gone (any thread): the I/O thread
 * frees it (reap_dead), never a worker, which may belong to a pool the
 * generation stops. */
static void
gen_dead(dmx_gen *g, void *arg)
{
	dmx_server *s = arg;

	pthread_mutex_lock(&s->dead_mu);
	g->dead_next = s->dead;
	s->dead = g;
	pthread_mutex_unlock(&s->dead_mu);
	atomic_store_explicit(&s->have_dead, 1, memory_order_release);
	dmx_loop_wake(s->loop);
}

static dmx_gen_hooks
gen_hooks(dmx_server *s)
{
	dmx_gen_hooks h = { s->exec, { dmx_conn_admit, dmx_conn_send_list,
	    NULL }, gen_dead, s };

	return h;
}

/* Free the generations whose last reference went. (I/O thread) */
static void
reap_dead(dmx_server *s)
{
	dmx_gen *g, *next, **pp;

	if (!atomic_exchange_explicit(&s->have_dead, 0, memory_order_acquire))
		return;
	pthread_mutex_lock(&s->dead_mu);
	g = s->dead;
	s->dead = NULL;
	pthread_mutex_unlock(&s->dead_mu);
	for (; g != NULL; g = next) {
		next = g->dead_next;
		for (pp = &s->gens; *pp != NULL && *pp != g; pp = &(*pp)->next)
			;
		if (*pp == g)
			*pp = g->next;
		dmx_info("generation %u had its last job: freeing it (%zu "
		    "plugin(s) no longer used are unloaded)", g->id,
		    g->nplugins);
		dmx_gen_free(g);
	}
}

static void on_signal(dmx_io *io, uint32_t events);

dmx_server *
dmx_server_new(dmx_config *cfg, char *err, size_t errlen)
{
	dmx_server *s;
	dmx_gen_hooks hooks;
	dmx_gen *g;
	sigset_t set;

	s = calloc(1, sizeof(*s));
	if (s == NULL) {
		snprintf(err, errlen, "out of memory");
		dmx_config_free(cfg);
		free(cfg);
		return NULL;
	}
	s->stats.started_ns = dmx_now_ns();
	pthread_mutex_init(&s->stats.refusals.mu, NULL);
	s->sig_io.rfd = s->sig_io.wfd = -1;
	s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	dmx_gen_slot_init(&s->gen);
	pthread_mutex_init(&s->dead_mu, NULL);
	/* the loop first: generations report their death to it */
	hooks = gen_hooks(s);
	s->loop = dmx_loop_new(dmx_conn_expire, err, errlen);
	if (s->loop != NULL)
		s->exec = dmx_pool_new(cfg->workers, cfg->max_threads,
		    cfg->queue, cfg->max_abandoned, &hooks.exec, err, errlen);
	if (s->exec == NULL) {
		dmx_config_free(cfg);
		free(cfg);
		goto fail;
	}
	hooks.shared = s->exec;
	g = dmx_gen_new(cfg, NULL, &hooks, err, errlen);
	if (g == NULL)
		goto fail;
	dmx_gen_publish(&s->gen, g);
	s->gens = g;
	s->conns = dmx_conns_new(s->loop, &s->gen, &s->stats);
	s->inl = dmx_inline_new(&s->stats.inline_runs,
	    &s->stats.inline_takeovers);
	if (s->conns == NULL || s->inl == NULL) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	dmx_conns_set_inline(s->conns, s->inl);
	dmx_conns_limits(s->conns, g->cfg);
	if (g->cfg->has_tls &&
	    (s->tls = dmx_tls_ctx_new(g->cfg, err, errlen)) == NULL)
		goto fail;

	/* SIGINT/SIGTERM/SIGHUP arrive as readable data; main() blocked them
	 * in every thread before any was started */
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	s->sig_io.rfd = s->sig_io.wfd = signalfd(-1, &set, SFD_NONBLOCK |
	    SFD_CLOEXEC);
	s->sig_io.on_ready = on_signal;
	if (s->sig_io.rfd < 0 || dmx_loop_watch(s->loop, &s->sig_io,
	    EPOLLIN) != 0) {
		snprintf(err, errlen, "signalfd: %s", strerror(errno));
		goto fail;
	}
	return s;
fail:
	dmx_server_free(s);
	return NULL;
}

/* ---- reload (SIGHUP) ---- */

/*
 * Re-read the configuration. Anything wrong (the YAML, a plugin that does
 * not load) leaves the running configuration exactly as it was. Otherwise
 * the new generation (gen.c: unchanged plugins kept as they are, new and
 * changed ones loaded from a private copy of their file) is published with
 * one store; jobs already dispatched finish on the generation they started
 * with, which is freed, with the plugins only it used, after its last job.
 */
static void
reload(dmx_server *s)
{
	dmx_gen *old = dmx_server_gen(s), *g;
	dmx_tls_ctx *tls = NULL;
	dmx_gen_hooks hooks = gen_hooks(s);
	dmx_config *cfg;
	char err[1024];
	size_t kept = 0, i, k;

	if (old->cfg->file == NULL) {
		dmx_warn("reload: no configuration file to read");
		return;
	}
	dmx_info("reload: reading %s", old->cfg->file);
	cfg = calloc(1, sizeof(*cfg));
	if (cfg == NULL || dmx_config_load(old->cfg->file, cfg, err,
	    sizeof(err)) != 0) {
		dmx_warn("reload: %s; keeping the running configuration",
		    cfg ? err : "out of memory");
		free(cfg);
		atomic_fetch_add(&s->stats.reload_failures, 1);
		return;
	}
	/* the certificate, key and CA are re-read first: a bad one changes
	 * nothing, like any bad configuration */
	if (cfg->has_tls && (tls = dmx_tls_ctx_new(cfg, err,
	    sizeof(err))) == NULL) {
		dmx_warn("reload: %s; keeping the running configuration", err);
		atomic_fetch_add(&s->stats.reload_failures, 1);
		dmx_config_free(cfg);
		free(cfg);
		return;
	}
	g = dmx_gen_new(cfg, old, &hooks, err, sizeof(err));
	if (g == NULL) {
		dmx_warn("reload: %s; keeping the running configuration", err);
		atomic_fetch_add(&s->stats.reload_failures, 1);
		dmx_tls_ctx_free(tls);
		return;
	}

	/* the switch: requests read from now on use the new generation, new
	 * handshakes the new certificate (live sessions keep theirs) */
	dmx_tls_ctx_free(s->tls);
	s->tls = tls;
	srv_relisten(s, g->cfg);
	dmx_gen_publish(&s->gen, g);
	g->next = s->gens;
	s->gens = g;
	dmx_conns_limits(s->conns, g->cfg);
	if (g->cfg->workers != old->cfg->workers ||
	    g->cfg->max_threads != old->cfg->max_threads)
		dmx_warn("reload: the shared pool's size changes on restart "
		    "only");
	if (g->cfg->log_level >= 0)
		dmx_log_set_level(g->cfg->log_level);
	for (i = 0; i < old->nplugins; i++)
		for (k = 0; k < g->nplugins; k++)
			if (g->plugins[k] == old->plugins[i])
				kept++;
	atomic_fetch_add(&s->stats.reloads, 1);
	dmx_info("reload: %s: generation %u: %zu plugin(s): %zu kept, %zu "
	    "loaded, %zu to be unloaded after their last job", g->cfg->file,
	    g->id, g->nplugins, kept, g->nfresh, old->nplugins - kept);
	dmx_gen_unref(old, 1);		/* the slot's reference */
}

/* Workers stuck for good are written off and replaced (pool.c): ms until
 * the next is due, or -1. Every generation's own pools, and the shared. */
static int
pools_tick(dmx_server *s)
{
	uint64_t now = dmx_now_ns();
	int next = dmx_exec_tick(s->exec, now), ms;
	dmx_gen *g;
	size_t i;

	for (g = s->gens; g != NULL; g = g->next)
		for (i = 0; i < g->nplugins; i++)
			if (g->plugins[i]->own_pool &&
			    (ms = dmx_exec_tick(g->plugins[i]->exec, now)) >= 0)
				next = next < 0 || ms < next ? ms : next;
	return next;
}

static void
begin_stop(dmx_server *s, const char *why)
{
	if (s->stopping)
		return;
	s->stopping = 1;
	s->drain_deadline = dmx_now_ns() +
	    (uint64_t)srv_cfg(s)->drain_timeout_ms * 1000000u;
	dmx_info("%s: draining: no new connections, $/drain to %u "
	    "connection(s), new requests answered -32012, up to %u ms for "
	    "those in flight", why, dmx_conns_count(s->conns),
	    srv_cfg(s)->drain_timeout_ms);
	srv_close_listeners(s);
	dmx_conns_drain(s->conns, s->stdio);
}

/* The drain deadline passed: answer what is still in flight -32012. */
static void
abandon_all(dmx_server *s)
{
	unsigned n;

	s->abandoned = 1;
	n = dmx_conns_abandon(s->conns);
	dmx_warn("drain_timeout_ms (%u) passed: %u request(s) still in "
	    "flight answered -32012", srv_cfg(s)->drain_timeout_ms,
	    n);
}

int
dmx_server_busy_workers(dmx_server *s)
{
	dmx_exec_info pi;
	const dmx_gen *g;
	size_t i;
	int busy;

	dmx_exec_info_get(s->exec, 0, &pi);
	busy = pi.on_demand ? pi.workers : pi.busy;
	/* a plugin's own pool belongs to the first generation that holds it;
	 * count each pool once */
	for (g = s->gens; g != NULL; g = g->next)
		for (i = 0; i < g->nplugins; i++) {
			const dmx_plugin *p = g->plugins[i];
			const dmx_gen *o;
			size_t k;
			int seen = 0;

			if (!p->own_pool)
				continue;
			for (o = s->gens; o != g && !seen; o = o->next)
				for (k = 0; k < o->nplugins && !seen; k++)
					seen = o->plugins[k] == p;
			if (seen)
				continue;
			dmx_exec_info_get(p->exec, 0, &pi);
			busy += pi.busy;
		}
	return busy;
}

static void
on_signal(dmx_io *io, uint32_t events)
{
	dmx_server *s = (dmx_server *)((char *)io -
	    offsetof(dmx_server, sig_io));
	struct signalfd_siginfo si;

	(void)events;
	while (read(io->rfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		if (si.ssi_signo == SIGHUP) {
			if (!s->stopping && !s->stdio)
				reload(s);
			continue;
		}
		if (s->stopping) {
			/* a second signal: the operator will not wait */
			dmx_warn("%s again: exiting without waiting for "
			    "handlers", strsignal((int)si.ssi_signo));
			_exit(1);
		}
		begin_stop(s, strsignal((int)si.ssi_signo));
	}
}

static int
sooner(int a, int b)
{
	return a < 0 ? b : b < 0 ? a : a < b ? a : b;
}

#define SERVE_LOST	1	/* serve(): the standby took the loop over */

/* Run the loop until the server stops (0, or -1 on an error) or, having
 * run requests inline that stalled, it lost the loop (SERVE_LOST). */
static int
serve(dmx_server *s)
{
	int timeout, idle;
	uint64_t now;

	for (;;) {
		idle = dmx_conns_count(s->conns) == 0;
		if ((s->stopping || s->stdio) && idle) {
			/* handlers of connections that went away may still
			 * run: their plugins' fini must wait for them, up to
			 * the drain deadline */
			if (s->abandoned || dmx_server_busy_workers(s) == 0)
				break;
		}
		timeout = dmx_loop_deadlines(s->loop);
		if (timeout >= 0)
			dmx_loop_attend(s->loop); /* what the answers changed */
		reap_dead(s);
		if (s->listen_paused_until != 0 && !s->stopping) {
			now = dmx_now_ns();
			if (now >= s->listen_paused_until)
				srv_listeners_watch(s, 1);
			else
				timeout = sooner(timeout, LISTEN_PAUSE_MS);
		}
		timeout = sooner(timeout, dmx_conns_tick(s->conns));
		timeout = sooner(timeout, pools_tick(s));
		if (s->handshakes != NULL)
			timeout = sooner(timeout, srv_handshakes_tick(s));
		dmx_loop_attend(s->loop);
		if (s->stopping && !s->abandoned) {
			now = dmx_now_ns();
			if (now >= s->drain_deadline) {
				abandon_all(s);
				dmx_loop_attend(s->loop);
				continue;
			}
			timeout = sooner(timeout, (int)((s->drain_deadline -
			    now) / 1000000u) + 1);
			/* nothing signals a worker becoming idle: look again
			 * soon while only workers remain */
			if (idle && (timeout < 0 || timeout > 10))
				timeout = 10;
		} else if (s->stdio && idle) {
			timeout = 10;
		}
		if (dmx_loop_poll(s->loop, timeout) < 0)
			return -1;
		/* the requests of this pass that run here, now that the
		 * loop's state is consistent */
		if (dmx_inline_pending(s->inl) &&
		    dmx_inline_run(s->inl) == DMX_INLINE_LOST)
			return SERVE_LOST;
	}
	if (s->stdio && !s->stopping)
		dmx_info("stdio connection closed: stopping");
	srv_close_listeners(s);
	return 0;
}

/* Own the loop (as its first owner, or after taking it over) until the
 * server stops; a thread that loses it waits as the standby. Returns the
 * loop's result, whichever thread ended it. */
static int
own_loop(dmx_server *s)
{
	int rc;

	for (;;) {
		rc = serve(s);
		if (rc != SERVE_LOST) {
			s->run_rc = rc;
			dmx_inline_stop(s->inl);	/* publishes run_rc */
			return rc;
		}
		if (!dmx_inline_standby(s->inl))
			return s->run_rc;
	}
}

static void *
standby_main(void *arg)
{
	dmx_server *s = arg;

	dmx_fatal_thread_begin();	/* it may run plugins' code */
	if (dmx_inline_standby(s->inl))
		own_loop(s);
	dmx_fatal_thread_end();
	return NULL;
}

int
dmx_server_run(dmx_server *s)
{
	int rc, e;

	/* signals stay blocked in it, as in every thread (main.c) */
	e = pthread_create(&s->standby, NULL, standby_main, s);
	if (e != 0)
		dmx_warn("no standby thread for the loop (%s): requests are "
		    "not run inline", strerror(e));
	s->have_standby = e == 0;
	if (!s->have_standby)
		dmx_conns_set_inline(s->conns, NULL);
	rc = own_loop(s);
	if (s->have_standby)
		pthread_join(s->standby, NULL);
	s->have_standby = 0;
	return rc;
}

/* Deferred calls still open in any generation. */
static long
deferred_open(const dmx_server *s)
{
	const dmx_gen *g;
	long n = 0;
	size_t i;

	for (g = s->gens; g != NULL; g = g->next)
		for (i = 0; g->router && i < dmx_router_count(g->router); i++)
			n += atomic_load(&dmx_router_at(g->router, i)->stats->
			    deferred_open);
	return n;
}

/*
 * At exit, deferred calls still open (past drain_timeout_ms every one of
 * them reads as cancelled) are the plugins' to finish, and fini is where
 * they do: run it now, while every live generation is held, so that the
 * finishes that drop the jobs' references cannot free a generation, and
 * unload its code, under fini's feet. What fini leaves open keeps its
 * generation (and code) loaded, as a stuck handler does.
 */
static void
finish_deferred(dmx_server *s)
{
	dmx_gen *g, *held[64];
	size_t n = 0, i, k;
	long open = deferred_open(s);

	if (open == 0)
		return;
	dmx_info("%ld deferred call(s) still open at exit: their plugins' "
	    "fini finishes them (the answers are dropped)", open);
	for (g = s->gens; g != NULL && n < 64; g = g->next) {
		dmx_gen_ref(g, 1);
		held[n++] = g;
	}
	for (k = 0; k < n; k++)
		for (i = 0; i < held[k]->nplugins; i++)
			if (!held[k]->plugins[i]->process)
				dmx_plugin_fini(held[k]->plugins[i]);
	for (k = 0; k < n; k++)
		dmx_gen_unref(held[k], 1);
	reap_dead(s);
}

void
dmx_server_free(dmx_server *s)
{
	if (s == NULL)
		return;
	srv_close_listeners(s);
	dmx_conns_free(s->conns);
	/* runs every queued job; their replies go nowhere and their
	 * connections are freed by the last of them */
	dmx_exec_free(s->exec);
	finish_deferred(s);
	/* every job is done (the pools were joined above, and connections
	 * are freed by their last job): the current generation goes with the
	 * slot's reference, and every retired one has gone already */
	if (s->gens != NULL) {
		dmx_gen *g = dmx_server_gen(s);

		g->hooks.dead = NULL;	/* free it here, at once */
		for (dmx_gen **pp = &s->gens; *pp; pp = &(*pp)->next)
			if (*pp == g) {
				*pp = g->next;
				break;
			}
		atomic_store(&s->have_dead, 1);
		reap_dead(s);
		dmx_gen_unref(g, 1);
		if (s->gens != NULL)
			dmx_warn("generation %u still has jobs at exit: its "
			    "plugins stay loaded", s->gens->id);
	}
	srv_handshakes_close(s);
	dmx_tls_ctx_free(s->tls);
	if (s->sig_io.rfd >= 0)
		close(s->sig_io.rfd);
	if (s->reserve_fd >= 0)
		close(s->reserve_fd);
	/* deadlines still pending hold their connections: let them go */
	dmx_loop_free(s->loop);
	dmx_inline_free(s->inl);
	dmx_gen_slot_destroy(&s->gen);
	pthread_mutex_destroy(&s->stats.refusals.mu);
	pthread_mutex_destroy(&s->dead_mu);
	free(s);
}
