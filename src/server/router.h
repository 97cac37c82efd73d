/*
 * router.h - the method table: "<plugin>.<method>" -> plugin and method index.
 *
 * Built once from the loaded plugins and never changed afterwards, so lookups
 * from the I/O thread take no lock. It also holds the pre-packed answers of
 * the built-ins that describe it ($/methods, $/plugins), since they only
 * change when the table does.
 */
#ifndef DMX_ROUTER_H
#define DMX_ROUTER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/buf.h"
#include "stats.h"
#include "plugin_host.h"

/* What workers learn about a method as they run it. Written without locks
 * (relaxed atomics): approximate by design. A method that keeps its name
 * across a reload keeps its counters: the new router shares them (refs). */
typedef struct dmx_route_stats {
	unsigned	 refs;		/* routers using it (I/O thread) */
	_Atomic uint32_t avg_ns;	/* moving average of the run time */
	_Atomic int	 slow;		/* a run once took over DMX_INLINE_MAX_NS:
					 * never run inline again (inline.h) */
	_Atomic uint64_t timeouts;	/* answered -32011 */
	_Atomic long	 deferred_open;	/* deferred calls not yet finished */
	_Atomic long	 deferred_overdue; /* ... of which past their deadline */
	dmx_method_stats m;		/* what $/stats reports */
} dmx_route_stats;

typedef struct dmx_route {
	const char	*name;		/* "echo.echo", owned by the plugin */
	size_t		 len;
	dmx_plugin	*plugin;
	int		 index;		/* into plugin->desc->methods */
	unsigned	 timeout_ms;	/* deadline; 0: none */
	unsigned	 pos;		/* its place: dmx_router_at(r, pos) */
	int		 catchall;	/* "<plugin>.*": serves every name of
					 * the plugin not otherwise served */
	dmx_route_stats	*stats;		/* owned by the router, mutable */
} dmx_route;

/* A method whose average run time is below this is "fast": a worker may
 * take several of its jobs at once and send their replies together. */
#define DMX_FAST_NS 20000u

typedef struct dmx_router dmx_router;

/* Build from n plugins (not owned), sharing the counters of every method
 * that `prev` (NULL: none) routes under the same name. Returns NULL with a
 * reason in err when two plugins serve the same full method name. */
dmx_router *dmx_router_new(dmx_plugin *const *plugins, size_t n,
    const dmx_router *prev, char *err, size_t errlen);
void dmx_router_free(dmx_router *r);

/* Find a method by its full name (not NUL-terminated); NULL if unknown. */
const dmx_route *dmx_router_find(const dmx_router *r, const char *name,
    size_t len);

/* The routes, sorted by name: for $/stats. */
size_t dmx_router_count(const dmx_router *r);
const dmx_route *dmx_router_at(const dmx_router *r, size_t i);
/* The route a call of `name` takes: its own, else its plugin's catch-all
 * ("<prefix>.*", ABI 1.6), else NULL. */
const dmx_route *dmx_router_route(const dmx_router *r, const char *name,
    size_t len);

/* The packed msgpack result of $/methods. */
const dmx_buf *dmx_router_methods(const dmx_router *r);

#endif
