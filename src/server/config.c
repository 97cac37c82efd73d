/*
 * config.c - load demux.yaml with libyaml's document API; see config.h.
 *
 * libyaml gives every node its start mark, so each check below can name the
 * exact line and column of the value it rejects. Errors are collected into the
 * caller's buffer by cfg_fail(), which returns -1 so checks read as
 * `return cfg_fail(...)`.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <msgpack.h>
#include <yaml.h>

#include "../common/buf.h"
#include "../common/units.h"
#include "config_impl.h"
#include "demux/plugin.h"

int DEMUX_PRINTF(3, 4)
cfg_fail(cfg_ctx *c, const yaml_node_t *n, const char *fmt, ...)
{
	va_list ap;
	int k;

	if (c->err == NULL || c->errlen == 0)
		return -1;
	k = snprintf(c->err, c->errlen, "%s:%zu:%zu: ", c->file,
	    n ? n->start_mark.line + 1 : 1, n ? n->start_mark.column + 1 : 1);
	if (k < 0 || (size_t)k >= c->errlen)
		return -1;
	va_start(ap, fmt);
	vsnprintf(c->err + k, c->errlen - (size_t)k, fmt, ap);
	va_end(ap);
	return -1;
}

const char *
cfg_scalar(const yaml_node_t *n)
{
	return n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value
	    : NULL;
}

const char *
cfg_kind(const yaml_node_t *n)
{
	switch (n->type) {
	case YAML_SCALAR_NODE: return "a scalar";
	case YAML_SEQUENCE_NODE: return "a list";
	case YAML_MAPPING_NODE: return "a mapping";
	default: return "nothing";
	}
}

/*
 * Join a relative path to the config file's folder. The result always has a
 * slash: dlopen() treats a bare "x.so" as a library name to search for, not
 * as the file next to the configuration.
 */
char *
cfg_resolve(const cfg_ctx *c, const char *p)
{
	const char *dir = c->dir[0] != '\0' ? c->dir : ".";
	char *out;
	size_t n;

	if (p[0] == '/')
		return strdup(p);
	n = strlen(dir) + 1 + strlen(p) + 1;
	out = malloc(n);
	if (out != NULL)
		snprintf(out, n, "%s/%s", dir, p);
	return out;
}

/* A non-negative integer, with an optional K/M/G (x1024) suffix for sizes. */
int
cfg_uint(cfg_ctx *c, const yaml_node_t *n, const char *key, int sizes,
    unsigned long long maxv, unsigned long long *out)
{
	const char *s = cfg_scalar(n);
	uint64_t v;
	int rc;

	/* without sizes, plain digits only: a size's grammar with none of
	 * its suffixes */
	rc = sizes ? dmx_parse_size(s, maxv, &v) : dmx_parse_ms(s, maxv, &v);
	if (rc == 0 && !sizes && s[strspn(s, "0123456789")] != '\0')
		rc = -1;
	if (rc == -2)
		return cfg_fail(c, n, "%s: %s is too large (at most %llu)",
		    key, s, maxv);
	if (rc == 0) {
		*out = v;
		return 0;
	}
	return cfg_fail(c, n, "%s: expected %s, got %s%s%s", key,
	    sizes ? "a size in bytes (e.g. 65536 or 64MiB)" :
	    "a non-negative integer", s ? "'" : "", s ? s : cfg_kind(n),
	    s ? "'" : "");
}

/* ---- YAML subtree -> msgpack (a plugin's config:) ---- */

static int
is_plain(const yaml_node_t *n)
{
	return n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}

static void
pack_scalar(msgpack_packer *pk, const yaml_node_t *n)
{
	const char *s = (const char *)n->data.scalar.value;
	size_t len = n->data.scalar.length;
	char *end;

	if (is_plain(n)) {
		if (len == 0 || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 ||
		    strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0) {
			msgpack_pack_nil(pk);
			return;
		}
		if (!strcmp(s, "true") || !strcmp(s, "True") ||
		    !strcmp(s, "TRUE") || !strcmp(s, "yes") ||
		    !strcmp(s, "Yes") || !strcmp(s, "on") || !strcmp(s, "On")) {
			msgpack_pack_true(pk);
			return;
		}
		if (!strcmp(s, "false") || !strcmp(s, "False") ||
		    !strcmp(s, "FALSE") || !strcmp(s, "no") ||
		    !strcmp(s, "No") || !strcmp(s, "off") || !strcmp(s, "Off")) {
			msgpack_pack_false(pk);
			return;
		}
		errno = 0;
		if (s[0] == '-') {
			long long v = strtoll(s, &end, 0);

			if (errno == 0 && *end == '\0') {
				msgpack_pack_int64(pk, v);
				return;
			}
		} else {
			unsigned long long v = strtoull(s, &end, 0);

			if (errno == 0 && *end == '\0' && s[0] != '+') {
				msgpack_pack_uint64(pk, v);
				return;
			}
		}
		if (strpbrk(s, ".eE") != NULL || strstr(s, "inf") ||
		    strstr(s, "nan")) {
			double d;

			errno = 0;
			d = strtod(strcmp(s, ".inf") == 0 ? "inf" :
			    strcmp(s, "-.inf") == 0 ? "-inf" :
			    strcmp(s, ".nan") == 0 ? "nan" : s, &end);
			if (errno == 0 && *end == '\0') {
				msgpack_pack_double(pk, d);
				return;
			}
		}
	}
	msgpack_pack_str(pk, len);
	msgpack_pack_str_body(pk, s, len);
}

int
cfg_pack_node(cfg_ctx *c, msgpack_packer *pk, yaml_node_t *n, int depth)
{
	yaml_node_item_t *it;
	yaml_node_pair_t *pr;

	if (depth > 32)
		return cfg_fail(c, n, "config: nested deeper than 32 levels");
	switch (n->type) {
	case YAML_SCALAR_NODE:
		pack_scalar(pk, n);
		return 0;
	case YAML_SEQUENCE_NODE:
		msgpack_pack_array(pk, (size_t)(n->data.sequence.items.top -
		    n->data.sequence.items.start));
		for (it = n->data.sequence.items.start;
		    it < n->data.sequence.items.top; it++)
			if (cfg_pack_node(c, pk, yaml_document_get_node(&c->doc, *it),
			    depth + 1) != 0)
				return -1;
		return 0;
	case YAML_MAPPING_NODE:
		msgpack_pack_map(pk, (size_t)(n->data.mapping.pairs.top -
		    n->data.mapping.pairs.start));
		for (pr = n->data.mapping.pairs.start;
		    pr < n->data.mapping.pairs.top; pr++) {
			if (cfg_pack_node(c, pk, yaml_document_get_node(&c->doc,
			    pr->key), depth + 1) != 0 ||
			    cfg_pack_node(c, pk, yaml_document_get_node(&c->doc,
			    pr->value), depth + 1) != 0)
				return -1;
		}
		return 0;
	default:
		return cfg_fail(c, n, "config: unsupported YAML node");
	}
}

/* ---- sections ---- */

/* Reject duplicate keys in a mapping: YAML says they are an error and libyaml
 * does not check. */
int
cfg_check_dup(cfg_ctx *c, yaml_node_t *map)
{
	yaml_node_pair_t *a, *b;

	for (a = map->data.mapping.pairs.start; a < map->data.mapping.pairs.top;
	    a++) {
		yaml_node_t *ka = yaml_document_get_node(&c->doc, a->key);

		if (cfg_scalar(ka) == NULL)
			return cfg_fail(c, ka, "keys must be plain scalars");
		for (b = a + 1; b < map->data.mapping.pairs.top; b++) {
			yaml_node_t *kb = yaml_document_get_node(&c->doc, b->key);

			if (cfg_scalar(kb) && strcmp(cfg_scalar(ka), cfg_scalar(kb)) == 0)
				return cfg_fail(c, kb,
				    "duplicate key '%s' (first at line %zu)",
				    cfg_scalar(kb), ka->start_mark.line + 1);
		}
	}
	return 0;
}

/* One listen entry written as a map: { address: URI, error_format:
 * array | string }. *addr is the address node's text. */
static int
listen_entry(cfg_ctx *c, yaml_node_t *v, dmx_conf_listen *l,
    const char **addr)
{
	yaml_node_pair_t *pr;

	if (cfg_check_dup(c, v) != 0)
		return -1;
	*addr = NULL;
	for (pr = v->data.mapping.pairs.start; pr < v->data.mapping.pairs.top;
	    pr++) {
		yaml_node_t *k = yaml_document_get_node(&c->doc, pr->key);
		yaml_node_t *val = yaml_document_get_node(&c->doc, pr->value);
		const char *key = cfg_scalar(k), *s = cfg_scalar(val);

		if (key != NULL && strcmp(key, "address") == 0) {
			if (s == NULL)
				return cfg_fail(c, val, "listen: address: "
				    "expected an address, got %s",
				    cfg_kind(val));
			*addr = s;
		} else if (key != NULL && strcmp(key, "error_format") == 0) {
			if (s != NULL && strcmp(s, "array") == 0)
				l->error_string = 0;
			else if (s != NULL && strcmp(s, "string") == 0)
				l->error_string = 1;
			else
				return cfg_fail(c, val, "listen: error_format: "
				    "expected array or string, got '%s'",
				    s ? s : cfg_kind(val));
		} else {
			return cfg_fail(c, k, "listen: unknown key '%s' "
			    "(expected address, error_format)",
			    key ? key : "?");
		}
	}
	if (*addr == NULL)
		return cfg_fail(c, v, "listen: an entry written as a map "
		    "needs an address");
	return 0;
}

static int
load_listen(cfg_ctx *c, dmx_config *cfg, yaml_node_t *v)
{
	yaml_node_item_t *it;
	yaml_node_t *one[1];
	yaml_node_t **items;
	size_t n, i;

	if (v->type == YAML_SCALAR_NODE) {
		one[0] = v;
		items = one;
		n = 1;
	} else if (v->type == YAML_SEQUENCE_NODE) {
		n = (size_t)(v->data.sequence.items.top -
		    v->data.sequence.items.start);
		items = calloc(n ? n : 1, sizeof(*items));
		if (items == NULL)
			return cfg_fail(c, v, "out of memory");
		for (i = 0, it = v->data.sequence.items.start;
		    it < v->data.sequence.items.top; it++, i++)
			items[i] = yaml_document_get_node(&c->doc, *it);
	} else {
		return cfg_fail(c, v, "listen: expected an address or a list of "
		    "addresses, got %s", cfg_kind(v));
	}
	cfg->listen = calloc(n ? n : 1, sizeof(*cfg->listen));
	if (cfg->listen == NULL)
		goto oom;
	for (i = 0; i < n; i++) {
		const char *s = cfg_scalar(items[i]);
		dmx_conf_listen *l = &cfg->listen[cfg->nlisten];

		l->line = (int)items[i]->start_mark.line + 1;
		l->col = (int)items[i]->start_mark.column + 1;
		if (items[i]->type == YAML_MAPPING_NODE &&
		    listen_entry(c, items[i], l, &s) != 0)
			goto fail;
		if (s == NULL) {
			cfg_fail(c, items[i], "listen: expected an address, or "
			    "{ address, error_format }, got %s",
			    cfg_kind(items[i]));
			goto fail;
		}
		if (strncmp(s, "unix:", 5) == 0 && s[5] != '\0' && s[5] != '/') {
			char *p = cfg_resolve(c, s + 5);
			size_t len = p ? strlen(p) + 6 : 0;

			l->uri = p ? malloc(len) : NULL;
			if (l->uri)
				snprintf(l->uri, len, "unix:%s", p);
			free(p);
		} else if (strncmp(s, "unix:", 5) == 0 ||
		    strncmp(s, "tcp:", 4) == 0 || strncmp(s, "tls:", 4) == 0) {
			l->uri = strdup(s);
			if (s[1] == 'l')
				cfg->tls_listen = l;
		} else {
			cfg_fail(c, items[i], "listen: '%s': address must start "
			    "with unix:, tcp: or tls:", s);
			goto fail;
		}
		if (l->uri == NULL)
			goto oom;
		cfg->nlisten++;
	}
	if (items != one)
		free(items);
	return 0;
oom:
	cfg_fail(c, v, "out of memory");
fail:
	if (items != one)
		free(items);
	return -1;
}

static int
load_root(cfg_ctx *c, dmx_config *cfg)
{
	yaml_node_t *root = yaml_document_get_root_node(&c->doc);
	yaml_node_pair_t *pr;
	unsigned long long u;

	if (root == NULL)
		return cfg_fail(c, NULL, "empty configuration");
	if (root->type != YAML_MAPPING_NODE)
		return cfg_fail(c, root, "expected a mapping at the top level, "
		    "got %s", cfg_kind(root));
	if (cfg_check_dup(c, root) != 0)
		return -1;
	for (pr = root->data.mapping.pairs.start;
	    pr < root->data.mapping.pairs.top; pr++) {
		yaml_node_t *k = yaml_document_get_node(&c->doc, pr->key);
		yaml_node_t *v = yaml_document_get_node(&c->doc, pr->value);
		const char *key = cfg_scalar(k), *s = cfg_scalar(v);

		if (strcmp(key, "listen") == 0) {
			if (load_listen(c, cfg, v) != 0)
				return -1;
		} else if (strcmp(key, "workers") == 0) {
			if (s && strcmp(s, "on-demand") == 0) {
				cfg->workers = 0;
				continue;
			}
			if (s == NULL || cfg_uint(c, v, key, 0, 4096, &u) != 0 ||
			    u == 0)
				return cfg_fail(c, v, "workers: expected a pool "
				    "size from 1 to 4096 or \"on-demand\", got "
				    "%s%s%s", s ? "'" : "", s ? s : cfg_kind(v),
				    s ? "'" : "");
			cfg->workers = (int)u;
		} else if (strcmp(key, "max_threads") == 0) {
			if (cfg_uint(c, v, key, 0, 65536, &u) != 0)
				return -1;
			if (u == 0)
				return cfg_fail(c, v, "max_threads: must be at "
				    "least 1");
			cfg->max_threads = (int)u;
		} else if (strcmp(key, "max_abandoned") == 0) {
			if (cfg_uint(c, v, key, 0, 4096, &u) != 0)
				return -1;
			cfg->max_abandoned = (unsigned)u;
		} else if (strcmp(key, "queue") == 0) {
			if (cfg_uint(c, v, key, 0, 1u << 24, &u) != 0)
				return -1;
			if (u == 0)
				return cfg_fail(c, v, "queue: must be at least 1");
			cfg->queue = (unsigned)u;
		} else if (strcmp(key, "max_frame") == 0) {
			if (cfg_uint(c, v, key, 1, 1ull << 31, &u) != 0)
				return -1;
			if (u < 64)
				return cfg_fail(c, v, "max_frame: must be at "
				    "least 64 bytes");
			cfg->max_frame = (size_t)u;
		} else if (strcmp(key, "max_inflight") == 0) {
			if (cfg_uint(c, v, key, 0, 1u << 20, &u) != 0)
				return -1;
			if (u == 0)
				return cfg_fail(c, v, "max_inflight: must be at "
				    "least 1");
			cfg->max_inflight = (unsigned)u;
		} else if (strcmp(key, "max_connections") == 0) {
			if (cfg_uint(c, v, key, 0, 1u << 20, &u) != 0)
				return -1;
			if (u == 0)
				return cfg_fail(c, v, "max_connections: must be "
				    "at least 1");
			cfg->max_connections = (unsigned)u;
		} else if (strcmp(key, "max_output") == 0) {
			if (cfg_uint(c, v, key, 1, 1ull << 34, &u) != 0)
				return -1;
			if (u < 4096)
				return cfg_fail(c, v, "max_output: must be at "
				    "least 4096 bytes");
			cfg->max_output = (size_t)u;
		} else if (strcmp(key, "max_elements") == 0) {
			if (cfg_uint(c, v, key, 16, 1ull << 32, &u) != 0)
				return -1;
			cfg->max_elements = (uint64_t)u;
		} else if (strcmp(key, "max_inflight_bytes") == 0) {
			if (cfg_uint(c, v, key, 4096, 1ull << 40, &u) != 0)
				return -1;
			cfg->max_inflight_bytes = (size_t)u;
		} else if (strcmp(key, "max_memory") == 0) {
			if (cfg_uint(c, v, key, 1u << 20, 1ull << 44, &u) != 0)
				return -1;
			cfg->max_memory = (size_t)u;
		} else if (strcmp(key, "frame_timeout_ms") == 0) {
			if (cfg_uint(c, v, key, 0, 86400000u, &u) != 0)
				return -1;
			cfg->frame_timeout_ms = (unsigned)u;
		} else if (strcmp(key, "tcp_keepalive_ms") == 0) {
			if (cfg_uint(c, v, key, 0, 86400000u, &u) != 0)
				return -1;
			if (u > 0 && u < 1000)
				return cfg_fail(c, v, "tcp_keepalive_ms: 0 (off) or "
				    "at least 1000");
			cfg->tcp_keepalive_ms = (unsigned)u;
		} else if (strcmp(key, "idle_timeout_ms") == 0) {
			if (cfg_uint(c, v, key, 0, 86400000u, &u) != 0)
				return -1;
			cfg->idle_timeout_ms = (unsigned)u;
		} else if (strcmp(key, "drain_timeout_ms") == 0) {
			if (cfg_uint(c, v, key, 0, 86400000u, &u) != 0)
				return -1;
			cfg->drain_timeout_ms = (unsigned)u;
		} else if (strcmp(key, "reuse_port") == 0) {
			if (s != NULL && strcmp(s, "true") == 0)
				cfg->reuse_port = 1;
			else if (s != NULL && strcmp(s, "false") == 0)
				cfg->reuse_port = 0;
			else
				return cfg_fail(c, v, "reuse_port: expected true "
				    "or false");
		} else if (strcmp(key, "log_level") == 0) {
			static const char *const lv[] = { "error", "warn",
			    "info", "debug" };
			int i;

			for (i = 0; i < 4; i++)
				if (s && strcmp(s, lv[i]) == 0)
					break;
			if (i == 4)
				return cfg_fail(c, v, "log_level: expected error, "
				    "warn, info or debug");
			cfg->log_level = i;
		} else if (strcmp(key, "metrics") == 0) {
			if (s == NULL || strncmp(s, "tcp:", 4) != 0)
				return cfg_fail(c, v, "metrics: expected a tcp:HOST:PORT "
				    "address for the Prometheus endpoint");
			free(cfg->metrics);
			cfg->metrics = strdup(s);
			cfg->metrics_line = (int)v->start_mark.line + 1;
			cfg->metrics_col = (int)v->start_mark.column + 1;
		} else if (strcmp(key, "access_log") == 0) {
			if (s == NULL || *s == '\0')
				return cfg_fail(c, v, "access_log: expected a file "
				    "name, or \"-\" for stderr");
			free(cfg->access_log);
			cfg->access_log = strcmp(s, "-") == 0 ? strdup("-") :
			    cfg_resolve(c, s);
		} else if (strcmp(key, "plugins") == 0) {
			if (cfg_load_plugins(c, cfg, v) != 0)
				return -1;
		} else if (strcmp(key, "access") == 0) {
			if (cfg_load_access(c, cfg, v) != 0)
				return -1;
		} else if (strcmp(key, "auth") == 0) {
			if (cfg_load_auth(c, cfg, v) != 0)
				return -1;
		} else if (strcmp(key, "tls") == 0) {
			if (cfg_load_tls(c, cfg, v) != 0)
				return -1;
		} else if (strcmp(key, "send_traces") == 0) {
			if (s != NULL && strcmp(s, "true") == 0)
				cfg->send_traces = 1;
			else if (s != NULL && strcmp(s, "false") == 0)
				cfg->send_traces = 0;
			else
				return cfg_fail(c, v, "send_traces: expected true "
				    "or false");
		} else if (strcmp(key, "unix_mode") == 0) {
			char *end;
			unsigned long m = s ? strtoul(s, &end, 8) : 0;

			if (s == NULL || *s == '\0' || *end != '\0' || m > 0777)
				return cfg_fail(c, v, "unix_mode: expected an octal "
				    "file mode such as \"0660\"");
			cfg->unix_mode = (unsigned)m;
		} else if (strcmp(key, "unix_group") == 0) {
			if (s == NULL || *s == '\0')
				return cfg_fail(c, v, "unix_group: expected a group "
				    "name");
			free(cfg->unix_group);
			cfg->unix_group = strdup(s);
		} else {
			return cfg_fail(c, k, "unknown key '%s' (expected listen, "
			    "workers, max_threads, max_abandoned, queue, max_frame, "
			    "max_inflight, "
			    "max_connections, max_output, max_elements, "
			    "max_inflight_bytes, max_memory, frame_timeout_ms, "
			    "tcp_keepalive_ms, idle_timeout_ms, "
			    "drain_timeout_ms, reuse_port, log_level, metrics, "
			    "access_log, access, auth, tls, send_traces, "
			    "unix_mode, unix_group or plugins)", key);
		}
	}
	if (cfg->tls_listen != NULL && !cfg->has_tls)
		return cfg_fail(c, NULL, "listen: %s needs a tls: section (cert "
		    "and key)", cfg->tls_listen->uri);
	if (cfg->has_tls && cfg->tls.client_auth < 0)
		cfg->tls.client_auth = cfg->tls.ca != NULL ?
		    DMX_TLS_AUTH_REQUIRE : DMX_TLS_AUTH_NONE;
	return 0;
}

void
dmx_config_defaults(dmx_config *cfg)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

	memset(cfg, 0, sizeof(*cfg));
	cfg->workers = ncpu > 0 ? (int)ncpu : 1;
	cfg->max_threads = DMX_DEFAULT_MAX_THREADS;
	cfg->max_abandoned = DMX_DEFAULT_MAX_ABANDONED;
	cfg->max_frame = DMX_DEFAULT_MAX_FRAME;
	cfg->max_inflight = DMX_DEFAULT_MAX_INFLIGHT;
	cfg->max_connections = DMX_DEFAULT_MAX_CONNECTIONS;
	cfg->drain_timeout_ms = DMX_DEFAULT_DRAIN_TIMEOUT_MS;
	cfg->max_output = DMX_DEFAULT_MAX_OUTPUT;
	cfg->max_elements = DMX_DEFAULT_MAX_ELEMENTS;
	cfg->max_inflight_bytes = DMX_DEFAULT_MAX_INFLIGHT_BYTES;
	cfg->max_memory = DMX_DEFAULT_MAX_MEMORY;
	cfg->frame_timeout_ms = DMX_DEFAULT_FRAME_TIMEOUT_MS;
	cfg->tcp_keepalive_ms = DMX_DEFAULT_TCP_KEEPALIVE_MS;
	cfg->log_level = -1;
	cfg->max_failures = DMX_DEFAULT_MAX_FAILURES;
	cfg->send_traces = 1;
	cfg->unix_mode = DMX_DEFAULT_UNIX_MODE;
	cfg->tls.handshake_timeout_ms = DMX_DEFAULT_HANDSHAKE_TIMEOUT_MS;
	cfg->tls.min_version = 12;
	cfg->tls.client_auth = -1;
}

int
dmx_config_load(const char *file, dmx_config *cfg, char *err, size_t errlen)
{
	cfg_ctx c;
	yaml_parser_t parser;
	FILE *fp;
	char *slash;
	int rc;

	dmx_config_defaults(cfg);
	memset(&c, 0, sizeof(c));
	c.file = file;
	c.err = err;
	c.errlen = errlen;
	fp = fopen(file, "rb");
	if (fp == NULL) {
		snprintf(err, errlen, "%s: %s", file, strerror(errno));
		return -1;
	}
	cfg->file = strdup(file);
	c.dir = strdup(file);
	if (cfg->file == NULL || c.dir == NULL) {
		fclose(fp);
		free(c.dir);
		snprintf(err, errlen, "%s: out of memory", file);
		return -1;
	}
	slash = strrchr(c.dir, '/');
	if (slash == NULL)
		c.dir[0] = '\0';
	else if (slash == c.dir)
		slash[1] = '\0';
	else
		*slash = '\0';

	yaml_parser_initialize(&parser);
	yaml_parser_set_input_file(&parser, fp);
	if (!yaml_parser_load(&parser, &c.doc)) {
		yaml_mark_t m = parser.problem_mark;

		if (parser.context_mark.line < m.line && parser.context)
			snprintf(err, errlen, "%s:%zu:%zu: %s (%s at line %zu)",
			    file, m.line + 1, m.column + 1,
			    parser.problem ? parser.problem : "syntax error",
			    parser.context, parser.context_mark.line + 1);
		else
			snprintf(err, errlen, "%s:%zu:%zu: %s", file,
			    m.line + 1, m.column + 1,
			    parser.problem ? parser.problem : "syntax error");
		yaml_parser_delete(&parser);
		fclose(fp);
		free(c.dir);
		dmx_config_free(cfg);
		return -1;
	}
	rc = load_root(&c, cfg);
	yaml_document_delete(&c.doc);
	yaml_parser_delete(&parser);
	fclose(fp);
	free(c.dir);
	if (rc != 0)
		dmx_config_free(cfg);
	return rc;
}

void
dmx_config_free(dmx_config *cfg)
{
	size_t i;

	for (i = 0; i < cfg->nlisten; i++)
		free(cfg->listen[i].uri);
	free(cfg->listen);
	for (i = 0; i < cfg->nplugins; i++) {
		free(cfg->plugins[i].name);
		free(cfg->plugins[i].path);
		free(cfg->plugins[i].open);
		free(cfg->plugins[i].config);
		free(cfg->plugins[i].user);
		free(cfg->plugins[i].group);
		for (size_t k = 0; k < cfg->plugins[i].nmethods; k++)
			free(cfg->plugins[i].methods[k].name);
		free(cfg->plugins[i].methods);
	}
	free(cfg->plugins);
	free(cfg->metrics);
	free(cfg->access_log);
	for (i = 0; i < cfg->naccess; i++) {
		dmx_conf_rule *r = &cfg->access[i];

		free(r->identity);
		for (size_t k = 0; k < r->nallow; k++)
			free(r->allow[k]);
		for (size_t k = 0; k < r->ndeny; k++)
			free(r->deny[k]);
		free(r->allow);
		free(r->deny);
	}
	free(cfg->access);
	for (i = 0; i < cfg->ntokens; i++) {
		free(cfg->tokens[i].name);
		if (cfg->tokens[i].secret != NULL) {
			explicit_bzero(cfg->tokens[i].secret,
			    cfg->tokens[i].secret_len);
			free(cfg->tokens[i].secret);
		}
	}
	free(cfg->tokens);
	free(cfg->unix_group);
	free(cfg->tls.cert);
	free(cfg->tls.key);
	free(cfg->tls.ca);
	free(cfg->file);
	memset(cfg, 0, sizeof(*cfg));
}
