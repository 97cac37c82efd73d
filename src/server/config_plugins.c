/*
 * config_plugins.c - the plugins: list of demux.yaml: each entry's keys
 * (path, name, config, pools, deadlines, methods, isolation), checked with
 * the position of what they reject. See config.h, docs/configuration.md.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <msgpack.h>

#include "../common/buf.h"
#include "config_impl.h"

/* methods: { NAME: { timeout_ms: N }, ... } */
static int
load_methods(cfg_ctx *c, dmx_conf_plugin *p, yaml_node_t *v)
{
	yaml_node_pair_t *pr, *q;
	size_t n;

	if (v->type != YAML_MAPPING_NODE)
		return cfg_fail(c, v, "methods: expected a mapping of method "
		    "names to settings, got %s", cfg_kind(v));
	if (cfg_check_dup(c, v) != 0)
		return -1;
	n = (size_t)(v->data.mapping.pairs.top - v->data.mapping.pairs.start);
	p->methods = calloc(n ? n : 1, sizeof(*p->methods));
	if (p->methods == NULL)
		return cfg_fail(c, v, "out of memory");
	for (pr = v->data.mapping.pairs.start; pr < v->data.mapping.pairs.top;
	    pr++) {
		yaml_node_t *k = yaml_document_get_node(&c->doc, pr->key);
		yaml_node_t *s = yaml_document_get_node(&c->doc, pr->value);
		dmx_conf_method *m = &p->methods[p->nmethods];

		m->line = (int)k->start_mark.line + 1;
		m->col = (int)k->start_mark.column + 1;
		if (s->type != YAML_MAPPING_NODE)
			return cfg_fail(c, s, "methods: %s: expected a mapping "
			    "(timeout_ms)", cfg_scalar(k));
		if (cfg_check_dup(c, s) != 0)
			return -1;
		m->name = strdup(cfg_scalar(k));
		p->nmethods++;
		for (q = s->data.mapping.pairs.start;
		    q < s->data.mapping.pairs.top; q++) {
			yaml_node_t *kk = yaml_document_get_node(&c->doc, q->key);
			yaml_node_t *vv = yaml_document_get_node(&c->doc,
			    q->value);
			unsigned long long u;

			if (strcmp(cfg_scalar(kk), "timeout_ms") != 0)
				return cfg_fail(c, kk, "methods: %s: unknown key "
				    "'%s' (expected timeout_ms)", m->name,
				    cfg_scalar(kk));
			if (cfg_uint(c, vv, "timeout_ms", 0, 86400000u, &u) != 0)
				return -1;
			m->timeout_ms = (unsigned)u;
		}
	}
	return 0;
}

static int
load_plugin(cfg_ctx *c, dmx_config *cfg, yaml_node_t *e)
{
	dmx_conf_plugin *p = &cfg->plugins[cfg->nplugins];
	yaml_node_pair_t *pr;
	yaml_node_t *pathnode = NULL, *isolation = NULL, *process_key = NULL;
	yaml_node_t *abandoned_key = NULL;
	struct stat st;
	size_t i;

	p->line = (int)e->start_mark.line + 1;
	p->col = (int)e->start_mark.column + 1;
	p->processes = 1;
	p->kill_after_ms = DMX_DEFAULT_KILL_AFTER_MS;
	p->max_abandoned = DMX_DEFAULT_MAX_ABANDONED;
	p->respawn_min_ms = DMX_DEFAULT_RESPAWN_MIN_MS;
	p->respawn_max_ms = DMX_DEFAULT_RESPAWN_MAX_MS;
	if (e->type != YAML_MAPPING_NODE)
		return cfg_fail(c, e, "plugins: each entry must be a mapping "
		    "with name and path, got %s", cfg_kind(e));
	if (cfg_check_dup(c, e) != 0)
		return -1;
	cfg->nplugins++;	/* from here on, dmx_config_free owns p */
	for (pr = e->data.mapping.pairs.start; pr < e->data.mapping.pairs.top;
	    pr++) {
		yaml_node_t *k = yaml_document_get_node(&c->doc, pr->key);
		yaml_node_t *v = yaml_document_get_node(&c->doc, pr->value);
		const char *key = cfg_scalar(k), *s = cfg_scalar(v);

		if (strcmp(key, "name") == 0) {
			if (s == NULL || *s == '\0' || strchr(s, '.') ||
			    s[0] == '$')
				return cfg_fail(c, v, "plugins: name must be a "
				    "non-empty string without '.' and not "
				    "starting with '$'");
			p->name = strdup(s);
		} else if (strcmp(key, "path") == 0) {
			if (s == NULL || *s == '\0')
				return cfg_fail(c, v, "plugins: path must be a "
				    "file name, got %s", cfg_kind(v));
			pathnode = v;
			p->path = cfg_resolve(c, s);
		} else if (strcmp(key, "workers") == 0) {
			unsigned long long u;

			if (cfg_uint(c, v, "workers", 0, 4096, &u) != 0)
				return -1;
			if (u == 0)
				return cfg_fail(c, v, "workers: a plugin's own pool "
				    "needs at least 1 worker (omit the key to use "
				    "the shared pool)");
			p->workers = (int)u;
		} else if (strcmp(key, "queue") == 0) {
			unsigned long long u;

			if (cfg_uint(c, v, "queue", 0, 1u << 24, &u) != 0)
				return -1;
			if (u == 0)
				return cfg_fail(c, v, "queue: must be at least 1");
			p->queue = (unsigned)u;
		} else if (strcmp(key, "timeout_ms") == 0) {
			unsigned long long u;

			if (cfg_uint(c, v, "timeout_ms", 0, 86400000u, &u) != 0)
				return -1;
			p->timeout_ms = (unsigned)u;
		} else if (strcmp(key, "methods") == 0) {
			if (load_methods(c, p, v) != 0)
				return -1;
		} else if (strcmp(key, "isolation") == 0) {
			if (s != NULL && strcmp(s, "thread") == 0)
				p->process = 0;
			else if (s != NULL && strcmp(s, "process") == 0)
				p->process = 1;
			else
				return cfg_fail(c, v, "isolation: expected thread "
				    "or process, got %s%s%s", s ? "'" : "",
				    s ? s : cfg_kind(v), s ? "'" : "");
			isolation = v;
		} else if (strcmp(key, "max_abandoned") == 0) {
			unsigned long long u;

			if (cfg_uint(c, v, key, 0, 4096, &u) != 0)
				return -1;
			p->max_abandoned = (unsigned)u;
			abandoned_key = k;
		} else if (strcmp(key, "inline") == 0) {
			if (s != NULL && strcmp(s, "auto") == 0)
				p->inline_never = 0;
			else if (s != NULL && strcmp(s, "never") == 0)
				p->inline_never = 1;
			else
				return cfg_fail(c, v, "inline: expected auto or "
				    "never, got %s%s%s", s ? "'" : "",
				    s ? s : cfg_kind(v), s ? "'" : "");
		} else if (strcmp(key, "kill_after_ms") == 0) {
			/* both modes: the child is killed, or the worker
			 * written off */
			unsigned long long u;

			if (cfg_uint(c, v, key, 0, 86400000u, &u) != 0)
				return -1;
			p->kill_after_ms = (unsigned)u;
		} else if (strcmp(key, "processes") == 0 ||
		    strcmp(key, "max_requests") == 0 ||
		    strcmp(key, "max_rss_mb") == 0 ||
		    strcmp(key, "respawn_min_ms") == 0 ||
		    strcmp(key, "respawn_max_ms") == 0) {
			unsigned long long u;
			int is_ms = strstr(key, "_ms") != NULL;

			if (cfg_uint(c, v, key, 0, strcmp(key, "processes") ==
			    0 ? 256 : is_ms ? 86400000u : 1ull << 40, &u) != 0)
				return -1;
			if (strcmp(key, "processes") == 0) {
				if (u == 0)
					return cfg_fail(c, v, "processes: must be "
					    "at least 1");
				p->processes = (unsigned)u;
			} else if (strcmp(key, "max_requests") == 0) {
				p->max_requests = u;
			} else if (strcmp(key, "max_rss_mb") == 0) {
				p->max_rss_mb = u;
			} else if (strcmp(key, "respawn_min_ms") == 0) {
				p->respawn_min_ms = u > 0 ? (unsigned)u : 1;
			} else {
				p->respawn_max_ms = u > 0 ? (unsigned)u : 1;
			}
			process_key = k;
		} else if (strcmp(key, "user") == 0 ||
		    strcmp(key, "group") == 0) {
			if (s == NULL || *s == '\0')
				return cfg_fail(c, v, "%s: expected a name, got "
				    "%s", key, cfg_kind(v));
			if (key[0] == 'u')
				p->user = strdup(s);
			else
				p->group = strdup(s);
			process_key = k;
		} else if (strcmp(key, "config") == 0) {
			dmx_buf b = DMX_BUF_INIT;
			msgpack_packer pk;

			msgpack_packer_init(&pk, &b, dmx_buf_pack_write);
			if (cfg_pack_node(c, &pk, v, 0) != 0) {
				dmx_buf_release(&b);
				return -1;
			}
			p->config = b.data;
			p->config_len = b.len;
		} else {
			return cfg_fail(c, k, "plugins: unknown key '%s' (expected "
			    "name, path, workers, queue, timeout_ms, methods, "
			    "config, isolation, processes, kill_after_ms, inline, "
			    "max_abandoned, "
			    "max_requests, max_rss_mb, respawn_min_ms, "
			    "respawn_max_ms, user or group)", key);
		}
	}
	if (abandoned_key != NULL && (p->process || p->workers == 0))
		return cfg_fail(c, abandoned_key, "plugins: max_abandoned "
		    "applies to a thread-mode plugin with its own pool "
		    "(workers:); the shared pool's is the top-level "
		    "max_abandoned");
	if (process_key != NULL && !p->process)
		return cfg_fail(c, process_key, "plugins: %s applies to "
		    "isolation: process only", cfg_scalar(process_key));
	if (p->respawn_max_ms < p->respawn_min_ms)
		return cfg_fail(c, isolation ? isolation : e, "plugins: "
		    "respawn_max_ms (%u) is below respawn_min_ms (%u)",
		    p->respawn_max_ms, p->respawn_min_ms);
	if (p->queue > 0 && p->workers == 0 && !p->process)
		return cfg_fail(c, e, "plugins: queue: bounds a plugin's own "
		    "pool: give it workers: too (the shared pool's bound is "
		    "the top-level queue:)");
	if (pathnode == NULL)
		return cfg_fail(c, e, "plugins: entry%s%s has no path",
		    p->name ? " " : "", p->name ? p->name : "");
	if (p->path == NULL)
		return cfg_fail(c, e, "out of memory");
	if (stat(p->path, &st) != 0)
		return cfg_fail(c, pathnode, "plugin%s%s: %s: %s", p->name ? " " :
		    "", p->name ? p->name : "", p->path, strerror(errno));
	if (!S_ISREG(st.st_mode))
		return cfg_fail(c, pathnode, "plugin%s%s: %s: not a regular file",
		    p->name ? " " : "", p->name ? p->name : "", p->path);
	for (i = 0; p->name && i + 1 < cfg->nplugins; i++)
		if (cfg->plugins[i].name &&
		    strcmp(cfg->plugins[i].name, p->name) == 0)
			return cfg_fail(c, e, "duplicate plugin '%s' (first at "
			    "line %d)", p->name, cfg->plugins[i].line);
	return 0;
}

int
cfg_load_plugins(cfg_ctx *c, dmx_config *cfg, yaml_node_t *v)
{
	yaml_node_item_t *it;
	size_t n;

	if (v->type != YAML_SEQUENCE_NODE)
		return cfg_fail(c, v, "plugins: expected a list, got %s",
		    cfg_kind(v));
	n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
	cfg->plugins = calloc(n ? n : 1, sizeof(*cfg->plugins));
	if (cfg->plugins == NULL)
		return cfg_fail(c, v, "out of memory");
	for (it = v->data.sequence.items.start; it < v->data.sequence.items.top;
	    it++)
		if (load_plugin(c, cfg,
		    yaml_document_get_node(&c->doc, *it)) != 0)
			return -1;
	return 0;
}
