/*
 * gen.h - one generation: everything one configuration needs to serve (the
 * configuration itself, its plugins, each plugin's own pool, the router).
 *
 * Start-up and every reload build a generation the same way, with
 * dmx_gen_new() from the previous one: plugins whose signature did not change
 * are shared (same instance, same state, same pool), the others are loaded
 * anew; methods that keep their name keep their counters. The server
 * publishes a generation with one atomic store.
 *
 * Lifetime, by construction: a generation is referenced by the server while
 * it is current, by every job dispatched under it until the job's answer is
 * built (or dropped), and by every reader on another thread (/metrics) for
 * the length of its read. The last reference hands it to the `dead` hook,
 * which frees it on the I/O thread (dmx_gen_free): a plugin is finalised,
 * its pool stopped and its code unloaded only when no generation that holds
 * it is left, so no job, timer or scrape can ever reach freed code or names.
 *
 * Threads: dmx_gen_new and dmx_gen_free run on one thread (main, then the I/O
 * thread); refs may be taken and dropped from any thread. Plugin reference
 * counts (dmx_plugin.refs) are only touched by dmx_gen_new and dmx_gen_free.
 */
#ifndef DMX_GEN_H
#define DMX_GEN_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

#include "config.h"
#include "plugin_host.h"
#include "exec.h"
#include "router.h"

typedef struct dmx_gen dmx_gen;

/* What a generation needs from the server that builds it. */
typedef struct dmx_gen_hooks {
	dmx_exec	*shared;	/* runs plugins without `workers:` */
	dmx_exec_hooks	 exec;		/* for the plugins' own pools */
	/* the last reference is gone (any thread); NULL: free at once */
	void	       (*dead)(dmx_gen *g, void *arg);
	void		*dead_arg;
} dmx_gen_hooks;

struct dmx_gen {
	_Atomic unsigned long refs;
	unsigned	 id;		/* 0 at start-up, +1 per reload */
	dmx_config	*cfg;		/* owned */
	dmx_plugin	**plugins;	/* cfg order; each holds a plugin ref */
	size_t		 nplugins;
	dmx_router	*router;	/* owned */
	size_t		 nfresh;	/* plugins this generation loaded */
	dmx_gen_hooks	 hooks;
	dmx_gen		*next;		/* the server's list of live ones */
	dmx_gen		*dead_next;	/* the server's list of dead ones */
};

/*
 * Build the generation of `cfg` (taken: freed with the generation, or here on
 * failure) from `prev` (NULL at start-up). Every check start-up makes (plugins
 * load, no duplicate names, no method served twice, pools start) is made
 * here. Returns it with one reference, or NULL with "FILE:LINE:COL: ..." in
 * err, having changed nothing that prev holds.
 */
dmx_gen *dmx_gen_new(dmx_config *cfg, const dmx_gen *prev,
    const dmx_gen_hooks *hooks, char *err, size_t errlen);

static inline void
dmx_gen_ref(dmx_gen *g, unsigned long n)
{
	atomic_fetch_add_explicit(&g->refs, n, memory_order_relaxed);
}

/* Drop n references; the last one calls hooks.dead (or frees). */
void dmx_gen_unref(dmx_gen *g, unsigned long n);

/* Free a generation nobody references (the I/O thread, from its dead list):
 * the router, then every plugin no other generation holds (its pool is
 * stopped, fini runs, the code is unloaded). */
void dmx_gen_free(dmx_gen *g);

/* Methods over all plugins. */
size_t dmx_gen_nmethods(const dmx_gen *g);

/*
 * The generation serving now. The server switches it with one store
 * (dmx_gen_publish, I/O thread, which is its only writer and so reads it
 * freely with dmx_gen_current); another thread takes a reference with
 * dmx_gen_acquire, under mu so that the generation cannot lose its last
 * reference between the load and the increment.
 */
typedef struct dmx_gen_slot {
	dmx_gen *_Atomic cur;
	pthread_mutex_t	 mu;
} dmx_gen_slot;

void	 dmx_gen_slot_init(dmx_gen_slot *s);
void	 dmx_gen_slot_destroy(dmx_gen_slot *s);
/* Publish g (its reference passes to the slot); returns the previous one,
 * whose slot reference the caller now holds. */
dmx_gen	*dmx_gen_publish(dmx_gen_slot *s, dmx_gen *g);
/* (I/O thread) */
static inline dmx_gen *
dmx_gen_current(const dmx_gen_slot *s)
{
	return atomic_load_explicit(&s->cur, memory_order_relaxed);
}
/* With a reference, for any thread; drop it with dmx_gen_unref(g, 1). */
dmx_gen	*dmx_gen_acquire(dmx_gen_slot *s);

#endif
