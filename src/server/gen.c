/*
 * gen.c - building and freeing generations; see gen.h.
 *
 * Locks: the generation slot's mu is a leaf (held only around the load and
 * reference of dmx_gen_acquire and the store of dmx_gen_publish); reference
 * counts are atomics.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/bug.h"
#include "gen.h"
#include "log.h"
#include "pool.h"
#include "proc.h"

/* A plugin is held by every generation that routes to it. The last one to
 * go stops its pool (no job of it is left: each held a generation), then
 * runs fini and unloads the code. */
static void
plugin_put(dmx_plugin *p)
{
	DMX_BUG_ON(p->refs == 0);
	if (--p->refs > 0)
		return;
	dmx_debug("plugin '%s' (%s): no generation routes to it: unloading",
	    p->name, p->path);
	if (p->own_pool)
		dmx_exec_free(p->exec);
	p->exec = NULL;
	dmx_plugin_unload(p);
}

static const dmx_plugin *
find_kept(const dmx_gen *prev, const char *sig)
{
	size_t k;

	for (k = 0; prev != NULL && k < prev->nplugins; k++)
		if (strcmp(prev->plugins[k]->sig, sig) == 0 &&
		    !dmx_plugin_watch_changed(prev->plugins[k]))
			return prev->plugins[k];
	return NULL;
}

/* A plugin with isolation: process: its children start (and run init)
 * now, and what the first one reports is what demuxd routes. */
static dmx_plugin *
load_remote(const dmx_conf_plugin *cp, const dmx_config *cfg,
    const dmx_gen_hooks *hooks, char *err, size_t errlen)
{
	dmx_proc_report rep;
	dmx_plugin *p;
	dmx_exec *e;

	e = dmx_procs_new(cp, cfg, &hooks->exec, &rep, err, errlen);
	if (e == NULL)
		return NULL;
	p = dmx_plugin_remote(cp, cfg->file, rep.name, rep.version,
	    (const char *const *)rep.methods, rep.watch, err, errlen);
	dmx_proc_report_free(&rep);
	if (p == NULL) {
		dmx_exec_free(e);
		return NULL;
	}
	p->exec = e;
	p->own_pool = 1;
	return p;
}

dmx_gen *
dmx_gen_new(dmx_config *cfg, const dmx_gen *prev, const dmx_gen_hooks *hooks,
    char *err, size_t errlen)
{
	dmx_gen *g;
	dmx_plugin *p;
	char sig[256];
	size_t i, k;

	g = calloc(1, sizeof(*g));
	if (g == NULL || (g->plugins = calloc(cfg->nplugins ? cfg->nplugins :
	    1, sizeof(*g->plugins))) == NULL) {
		snprintf(err, errlen, "out of memory");
		free(g);
		dmx_config_free(cfg);
		free(cfg);
		return NULL;
	}
	atomic_init(&g->refs, 1);
	g->id = prev ? prev->id + 1 : 0;
	g->cfg = cfg;
	g->hooks = *hooks;

	for (i = 0; i < cfg->nplugins; i++) {
		const dmx_conf_plugin *cp = &cfg->plugins[i];

		dmx_plugin_signature(cp, sig, sizeof(sig));
		p = (dmx_plugin *)find_kept(prev, sig);
		if (p == NULL && cp->process) {
			p = load_remote(cp, cfg, hooks, err, errlen);
			if (p == NULL)
				goto fail;
			g->nfresh++;
		} else if (p == NULL) {
			/* after start-up, load a private copy: a .so changed
			 * at the same path must really be new code */
			p = prev ? dmx_plugin_load_fresh(cp, cfg->file, err,
			    errlen) : dmx_plugin_load(cp, cfg->file, err, errlen);
			if (p == NULL)
				goto fail;
			g->nfresh++;
		}
		p->refs++;
		g->plugins[g->nplugins++] = p;
		/* names given in the YAML were checked by the parser; this
		 * catches a duplicate that comes from a plugin's own name */
		for (k = 0; k < i; k++)
			if (strcmp(g->plugins[k]->name, p->name) == 0) {
				snprintf(err, errlen, "%s:%d:%d: duplicate plugin "
				    "'%s' (first at line %d)", cfg->file,
				    cp->line, cp->col, p->name,
				    cfg->plugins[k].line);
				goto fail;
			}
	}
	g->router = dmx_router_new(g->plugins, g->nplugins,
	    prev ? prev->router : NULL, err, errlen);
	if (g->router == NULL)
		goto fail;
	/* plugins with `workers:` get a pool of their own, so that a slow
	 * plugin cannot starve the others; a kept plugin keeps its pool */
	for (i = 0; i < g->nplugins; i++) {
		p = g->plugins[i];
		if (p->exec != NULL)
			continue;
		if (p->workers == 0) {
			p->exec = hooks->shared;
			continue;
		}
		p->exec = dmx_pool_new(p->workers, 0, p->queue,
		    p->max_abandoned, &hooks->exec, err, errlen);
		if (p->exec == NULL) {
			char why[256];

			snprintf(why, sizeof(why), "%s", err);
			snprintf(err, errlen, "%s:%d:%d: cannot start the pool "
			    "of plugin '%s': %s", cfg->file,
			    cfg->plugins[i].line, cfg->plugins[i].col, p->name,
			    why);
			goto fail;
		}
		p->own_pool = 1;
	}
	return g;
fail:
	g->hooks.dead = NULL;
	dmx_gen_free(g);
	return NULL;
}

void
dmx_gen_unref(dmx_gen *g, unsigned long n)
{
	unsigned long was;

	if (n == 0)
		return;
	was = atomic_fetch_sub_explicit(&g->refs, n, memory_order_acq_rel);
	DMX_BUG_ON(was < n);
	if (was != n)
		return;
	if (g->hooks.dead != NULL)
		g->hooks.dead(g, g->hooks.dead_arg);
	else
		dmx_gen_free(g);
}

void
dmx_gen_free(dmx_gen *g)
{
	size_t i;

	if (g == NULL)
		return;
	dmx_router_free(g->router);
	for (i = g->nplugins; i-- > 0;)
		plugin_put(g->plugins[i]);
	free(g->plugins);
	dmx_config_free(g->cfg);
	free(g->cfg);
	free(g);
}

size_t
dmx_gen_nmethods(const dmx_gen *g)
{
	return g->router ? dmx_router_count(g->router) : 0;
}

void
dmx_gen_slot_init(dmx_gen_slot *s)
{
	atomic_init(&s->cur, NULL);
	pthread_mutex_init(&s->mu, NULL);
}

void
dmx_gen_slot_destroy(dmx_gen_slot *s)
{
	pthread_mutex_destroy(&s->mu);
}

dmx_gen *
dmx_gen_publish(dmx_gen_slot *s, dmx_gen *g)
{
	dmx_gen *old;

	pthread_mutex_lock(&s->mu);
	old = atomic_load_explicit(&s->cur, memory_order_relaxed);
	atomic_store_explicit(&s->cur, g, memory_order_release);
	pthread_mutex_unlock(&s->mu);
	return old;
}

dmx_gen *
dmx_gen_acquire(dmx_gen_slot *s)
{
	dmx_gen *g;

	pthread_mutex_lock(&s->mu);
	g = atomic_load_explicit(&s->cur, memory_order_acquire);
	dmx_gen_ref(g, 1);
	pthread_mutex_unlock(&s->mu);
	return g;
}
