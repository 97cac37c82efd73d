/*
 * router.c - open-addressing hash table of method names; see router.h.
 *
 * Threads: a router is built on one thread and read-only afterwards, so
 * lookups take no lock; the per-method counters it shares across
 * generations are reference-counted atomically.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "router.h"

struct dmx_router {
	dmx_route	*routes;	/* nroutes entries, sorted by name */
	size_t		 nroutes;
	const dmx_route **slots;	/* nslots, power of two, NULL = empty */
	size_t		 mask;
	dmx_buf		 methods;	/* $/methods result */
};

static uint64_t
hash(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ull;	/* FNV-1a */

	while (n--)
		h = (h ^ (unsigned char)*s++) * 1099511628211ull;
	return h;
}

static int
route_cmp(const void *a, const void *b)
{
	return strcmp(((const dmx_route *)a)->name,
	    ((const dmx_route *)b)->name);
}

static void
pack_methods(dmx_router *r)
{
	msgpack_packer pk;
	size_t i;

	msgpack_packer_init(&pk, &r->methods, dmx_buf_pack_write);
	msgpack_pack_array(&pk, r->nroutes + 5);
	dmx_pack_cstr(&pk, "$/health");
	dmx_pack_cstr(&pk, "$/methods");
	dmx_pack_cstr(&pk, "$/ping");
	dmx_pack_cstr(&pk, "$/plugins");
	dmx_pack_cstr(&pk, "$/stats");
	for (i = 0; i < r->nroutes; i++)
		dmx_pack_cstr(&pk, r->routes[i].name);
}

static void
stats_put(dmx_route_stats *st)
{
	if (st != NULL && --st->refs == 0)
		free(st);
}

dmx_router *
dmx_router_new(dmx_plugin *const *plugins, size_t n, const dmx_router *prev,
    char *err, size_t errlen)
{
	dmx_router *r;
	size_t i, j, k, total = 0, nslots;

	for (i = 0; i < n; i++)
		total += plugins[i]->nmethods;
	r = calloc(1, sizeof(*r));
	if (r == NULL)
		goto oom;
	r->routes = calloc(total ? total : 1, sizeof(*r->routes));
	for (nslots = 16; nslots < total * 2; nslots *= 2)
		;
	r->slots = calloc(nslots, sizeof(*r->slots));
	if (r->routes == NULL || r->slots == NULL)
		goto oom;
	r->mask = nslots - 1;
	for (i = 0, k = 0; i < n; i++)
		for (j = 0; j < plugins[i]->nmethods; j++, k++) {
			r->routes[k].name = plugins[i]->methods[j];
			r->routes[k].len = strlen(r->routes[k].name);
			r->routes[k].plugin = plugins[i];
			r->routes[k].index = (int)j;
			r->routes[k].catchall = plugins[i]->catchall == (int)j;
			r->routes[k].timeout_ms = plugins[i]->timeout_ms ?
			    plugins[i]->timeout_ms[j] : 0;
		}
	r->nroutes = total;
	qsort(r->routes, total, sizeof(*r->routes), route_cmp);
	for (k = 0; k < total; k++) {
		dmx_route *rt = &r->routes[k];
		const dmx_route *old = prev ? dmx_router_find(prev, rt->name,
		    rt->len) : NULL;

		rt->pos = (unsigned)k;
		if (old != NULL) {
			rt->stats = old->stats;
		} else if ((rt->stats = calloc(1, sizeof(*rt->stats))) != NULL) {
			/* unknown until measured: not batched before then */
			atomic_init(&rt->stats->avg_ns, UINT32_MAX);
		} else {
			goto oom;
		}
		rt->stats->refs++;
	}
	for (k = 0; k < total; k++) {
		const dmx_route *rt = &r->routes[k];

		if (k > 0 && strcmp(rt->name, r->routes[k - 1].name) == 0) {
			snprintf(err, errlen, "method '%s' is served by both "
			    "plugin '%s' (%s) and plugin '%s' (%s)", rt->name,
			    r->routes[k - 1].plugin->name,
			    r->routes[k - 1].plugin->path, rt->plugin->name,
			    rt->plugin->path);
			dmx_router_free(r);
			return NULL;
		}
		for (i = hash(rt->name, rt->len) & r->mask; r->slots[i];
		    i = (i + 1) & r->mask)
			;
		r->slots[i] = rt;
	}
	pack_methods(r);
	return r;
oom:
	snprintf(err, errlen, "out of memory");
	dmx_router_free(r);
	return NULL;
}

void
dmx_router_free(dmx_router *r)
{
	size_t i;

	if (r == NULL)
		return;
	for (i = 0; r->routes != NULL && i < r->nroutes; i++)
		stats_put(r->routes[i].stats);
	free(r->routes);
	free(r->slots);
	dmx_buf_release(&r->methods);
	free(r);
}

const dmx_route *
dmx_router_find(const dmx_router *r, const char *name, size_t len)
{
	size_t i;

	for (i = hash(name, len) & r->mask; r->slots[i] != NULL;
	    i = (i + 1) & r->mask)
		if (r->slots[i]->len == len &&
		    memcmp(r->slots[i]->name, name, len) == 0)
			return r->slots[i];
	return NULL;
}

const dmx_route *
dmx_router_route(const dmx_router *r, const char *name, size_t len)
{
	const dmx_route *rt = dmx_router_find(r, name, len);
	const char *dot;
	char key[256];

	if (rt != NULL || r->nroutes == 0)
		return rt;
	dot = memchr(name, '.', len);
	if (dot == NULL || dot == name || (size_t)(dot - name) + 3 >
	    sizeof(key) || dot + 1 == name + len)
		return NULL;
	memcpy(key, name, (size_t)(dot - name) + 1);
	key[dot - name + 1] = '*';
	rt = dmx_router_find(r, key, (size_t)(dot - name) + 2);
	return rt != NULL && rt->catchall ? rt : NULL;
}

size_t
dmx_router_count(const dmx_router *r)
{
	return r->nroutes;
}

const dmx_route *
dmx_router_at(const dmx_router *r, size_t i)
{
	return &r->routes[i];
}

const dmx_buf *
dmx_router_methods(const dmx_router *r)
{
	return &r->methods;
}

