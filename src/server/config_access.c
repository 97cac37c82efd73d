/*
 * config_access.c - the security sections of demux.yaml: `access:` (who
 * may call what, first matching rule wins) and `auth:` (tokens for
 * $/auth). See docs/security.md; the rules are applied by access.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config_impl.h"

/* A list of non-empty strings (globs) into *out. */
static int
load_globs(cfg_ctx *c, yaml_node_t *v, const char *key, char ***out,
    size_t *n)
{
	yaml_node_item_t *it;
	size_t cap;

	if (v->type == YAML_SCALAR_NODE) {	/* one glob alone */
		*out = calloc(1, sizeof(char *));
		if (*out == NULL || ((*out)[0] = strdup(cfg_scalar(v))) == NULL)
			return cfg_fail(c, v, "out of memory");
		*n = 1;
		return 0;
	}
	if (v->type != YAML_SEQUENCE_NODE)
		return cfg_fail(c, v, "access: %s: expected a list of method "
		    "names or globs, got %s", key, cfg_kind(v));
	cap = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
	*out = calloc(cap ? cap : 1, sizeof(char *));
	if (*out == NULL)
		return cfg_fail(c, v, "out of memory");
	for (it = v->data.sequence.items.start; it < v->data.sequence.items.top;
	    it++) {
		yaml_node_t *e = yaml_document_get_node(&c->doc, *it);
		const char *s = cfg_scalar(e);

		if (s == NULL || *s == '\0')
			return cfg_fail(c, e, "access: %s: expected a method name "
			    "or glob, got %s", key, cfg_kind(e));
		if (((*out)[(*n)++] = strdup(s)) == NULL)
			return cfg_fail(c, e, "out of memory");
	}
	return 0;
}

int
cfg_load_access(cfg_ctx *c, dmx_config *cfg, yaml_node_t *v)
{
	yaml_node_item_t *it;
	size_t n;

	if (v->type != YAML_SEQUENCE_NODE)
		return cfg_fail(c, v, "access: expected a list of rules "
		    "({ identity, allow, deny }), got %s", cfg_kind(v));
	n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
	cfg->access = calloc(n ? n : 1, sizeof(*cfg->access));
	if (cfg->access == NULL)
		return cfg_fail(c, v, "out of memory");
	cfg->has_access = 1;
	for (it = v->data.sequence.items.start; it < v->data.sequence.items.top;
	    it++) {
		yaml_node_t *e = yaml_document_get_node(&c->doc, *it);
		dmx_conf_rule *r = &cfg->access[cfg->naccess];
		yaml_node_pair_t *pr;

		if (e->type != YAML_MAPPING_NODE)
			return cfg_fail(c, e, "access: each rule must be a "
			    "mapping with identity and allow/deny, got %s",
			    cfg_kind(e));
		if (cfg_check_dup(c, e) != 0)
			return -1;
		cfg->naccess++;		/* dmx_config_free owns r now */
		r->line = (int)e->start_mark.line + 1;
		r->col = (int)e->start_mark.column + 1;
		for (pr = e->data.mapping.pairs.start;
		    pr < e->data.mapping.pairs.top; pr++) {
			yaml_node_t *k = yaml_document_get_node(&c->doc, pr->key);
			yaml_node_t *val = yaml_document_get_node(&c->doc,
			    pr->value);
			const char *key = cfg_scalar(k), *s = cfg_scalar(val);

			if (strcmp(key, "identity") == 0) {
				if (s == NULL || *s == '\0')
					return cfg_fail(c, val, "access: identity: "
					    "expected a glob such as \"unix:root\" "
					    "or \"cert:billing-*\"");
				r->identity = strdup(s);
			} else if (strcmp(key, "allow") == 0) {
				if (load_globs(c, val, key, &r->allow,
				    &r->nallow) != 0)
					return -1;
			} else if (strcmp(key, "deny") == 0) {
				if (load_globs(c, val, key, &r->deny,
				    &r->ndeny) != 0)
					return -1;
			} else {
				return cfg_fail(c, k, "access: unknown key '%s' "
				    "(expected identity, allow or deny)", key);
			}
		}
		if (r->identity == NULL)
			return cfg_fail(c, e, "access: a rule needs identity");
	}
	return 0;
}

/* The first line of a secret file that only its owner may read. */
static int
read_secret(cfg_ctx *c, yaml_node_t *v, const char *path,
    dmx_conf_token *t)
{
	char buf[4096];
	struct stat st;
	ssize_t n;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return cfg_fail(c, v, "auth: secret_file %s: %s", path,
		    strerror(errno));
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return cfg_fail(c, v, "auth: secret_file %s: not a regular "
		    "file", path);
	}
	if (st.st_mode & 077) {
		close(fd);
		return cfg_fail(c, v, "auth: secret_file %s: readable by group "
		    "or others (mode %04o); chmod 600 it", path,
		    (unsigned)(st.st_mode & 07777));
	}
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n < 0)
		return cfg_fail(c, v, "auth: secret_file %s: %s", path,
		    strerror(errno));
	buf[n] = '\0';
	t->secret_len = strcspn(buf, "\r\n");
	if (t->secret_len == 0) {
		explicit_bzero(buf, sizeof(buf));
		return cfg_fail(c, v, "auth: secret_file %s: its first line is "
		    "empty", path);
	}
	t->secret = malloc(t->secret_len + 1);
	if (t->secret != NULL) {
		memcpy(t->secret, buf, t->secret_len);
		t->secret[t->secret_len] = '\0';
	}
	explicit_bzero(buf, sizeof(buf));
	return t->secret == NULL ? cfg_fail(c, v, "out of memory") : 0;
}

int
cfg_load_auth(cfg_ctx *c, dmx_config *cfg, yaml_node_t *v)
{
	yaml_node_pair_t *pr;

	if (v->type != YAML_MAPPING_NODE)
		return cfg_fail(c, v, "auth: expected a mapping with tokens "
		    "and max_failures, got %s", cfg_kind(v));
	if (cfg_check_dup(c, v) != 0)
		return -1;
	for (pr = v->data.mapping.pairs.start; pr < v->data.mapping.pairs.top;
	    pr++) {
		yaml_node_t *k = yaml_document_get_node(&c->doc, pr->key);
		yaml_node_t *val = yaml_document_get_node(&c->doc, pr->value);
		const char *key = cfg_scalar(k);
		unsigned long long u;
		yaml_node_item_t *it;
		size_t n;

		if (strcmp(key, "max_failures") == 0) {
			if (cfg_uint(c, val, key, 0, 1000000, &u) != 0)
				return -1;
			if (u == 0)
				return cfg_fail(c, val, "auth: max_failures: "
				    "must be at least 1");
			cfg->max_failures = (unsigned)u;
			continue;
		}
		if (strcmp(key, "tokens") != 0)
			return cfg_fail(c, k, "auth: unknown key '%s' (expected "
			    "tokens or max_failures)", key);
		if (val->type != YAML_SEQUENCE_NODE)
			return cfg_fail(c, val, "auth: tokens: expected a list "
			    "of { name, secret_file }, got %s", cfg_kind(val));
		n = (size_t)(val->data.sequence.items.top -
		    val->data.sequence.items.start);
		cfg->tokens = calloc(n ? n : 1, sizeof(*cfg->tokens));
		if (cfg->tokens == NULL)
			return cfg_fail(c, val, "out of memory");
		for (it = val->data.sequence.items.start;
		    it < val->data.sequence.items.top; it++) {
			yaml_node_t *e = yaml_document_get_node(&c->doc, *it);
			dmx_conf_token *t = &cfg->tokens[cfg->ntokens];
			yaml_node_t *file = NULL;
			yaml_node_pair_t *q;
			size_t i;

			if (e->type != YAML_MAPPING_NODE)
				return cfg_fail(c, e, "auth: tokens: each entry "
				    "must be { name, secret_file }");
			if (cfg_check_dup(c, e) != 0)
				return -1;
			cfg->ntokens++;
			for (q = e->data.mapping.pairs.start;
			    q < e->data.mapping.pairs.top; q++) {
				yaml_node_t *kk = yaml_document_get_node(&c->doc,
				    q->key);
				yaml_node_t *vv = yaml_document_get_node(&c->doc,
				    q->value);
				const char *kn = cfg_scalar(kk), *s = cfg_scalar(vv);

				if (strcmp(kn, "name") == 0 && s && *s) {
					t->name = strdup(s);
				} else if (strcmp(kn, "secret_file") == 0 && s &&
				    *s) {
					file = vv;
				} else {
					return cfg_fail(c, kk, "auth: tokens: "
					    "unknown or empty key '%s' (expected "
					    "name and secret_file)", kn);
				}
			}
			if (t->name == NULL || file == NULL)
				return cfg_fail(c, e, "auth: tokens: an entry "
				    "needs name and secret_file");
			for (i = 0; i + 1 < cfg->ntokens; i++)
				if (strcmp(cfg->tokens[i].name, t->name) == 0)
					return cfg_fail(c, e, "auth: tokens: "
					    "duplicate name '%s'", t->name);
			{
				char *path = cfg_resolve(c, cfg_scalar(file));
				int rc;

				if (path == NULL)
					return cfg_fail(c, file, "out of memory");
				rc = read_secret(c, file, path, t);
				free(path);
				if (rc != 0)
					return -1;
			}
		}
	}
	return 0;
}

int
cfg_load_tls(cfg_ctx *c, dmx_config *cfg, yaml_node_t *v)
{
	dmx_conf_tls *t = &cfg->tls;
	yaml_node_pair_t *pr;

	if (v->type != YAML_MAPPING_NODE)
		return cfg_fail(c, v, "tls: expected a mapping with cert and "
		    "key, got %s", cfg_kind(v));
	if (cfg_check_dup(c, v) != 0)
		return -1;
	cfg->has_tls = 1;
	t->line = (int)v->start_mark.line + 1;
	t->col = (int)v->start_mark.column + 1;
	for (pr = v->data.mapping.pairs.start; pr < v->data.mapping.pairs.top;
	    pr++) {
		yaml_node_t *k = yaml_document_get_node(&c->doc, pr->key);
		yaml_node_t *val = yaml_document_get_node(&c->doc, pr->value);
		const char *key = cfg_scalar(k), *s = cfg_scalar(val);
		char **path = NULL;

		if (strcmp(key, "cert") == 0)
			path = &t->cert;
		else if (strcmp(key, "key") == 0)
			path = &t->key;
		else if (strcmp(key, "ca") == 0)
			path = &t->ca;
		if (path != NULL) {
			struct stat st;

			if (s == NULL || *s == '\0')
				return cfg_fail(c, val, "tls: %s: expected a file "
				    "name", key);
			free(*path);
			*path = cfg_resolve(c, s);
			if (*path == NULL)
				return cfg_fail(c, val, "out of memory");
			if (stat(*path, &st) != 0)
				return cfg_fail(c, val, "tls: %s: %s: %s", key,
				    *path, strerror(errno));
			continue;
		}
		if (strcmp(key, "client_auth") == 0) {
			if (s != NULL && strcmp(s, "none") == 0)
				t->client_auth = DMX_TLS_AUTH_NONE;
			else if (s != NULL && strcmp(s, "optional") == 0)
				t->client_auth = DMX_TLS_AUTH_OPTIONAL;
			else if (s != NULL && strcmp(s, "require") == 0)
				t->client_auth = DMX_TLS_AUTH_REQUIRE;
			else
				return cfg_fail(c, val, "tls: client_auth: "
				    "expected none, optional or require");
		} else if (strcmp(key, "min_version") == 0) {
			if (s != NULL && strcmp(s, "1.2") == 0)
				t->min_version = 12;
			else if (s != NULL && strcmp(s, "1.3") == 0)
				t->min_version = 13;
			else
				return cfg_fail(c, val, "tls: min_version: "
				    "expected \"1.2\" or \"1.3\"");
		} else if (strcmp(key, "handshake_timeout_ms") == 0) {
			unsigned long long u;

			if (cfg_uint(c, val, key, 0, 3600000u, &u) != 0)
				return -1;
			if (u == 0)
				return cfg_fail(c, val, "tls: handshake_timeout_ms: "
				    "must be at least 1");
			t->handshake_timeout_ms = (unsigned)u;
		} else {
			return cfg_fail(c, k, "tls: unknown key '%s' (expected "
			    "cert, key, ca, client_auth, min_version or "
			    "handshake_timeout_ms)", key);
		}
	}
	if (t->cert == NULL || t->key == NULL)
		return cfg_fail(c, v, "tls: cert and key are required");
	if (t->client_auth > DMX_TLS_AUTH_NONE && t->ca == NULL)
		return cfg_fail(c, v, "tls: client_auth %s needs ca (the CA "
		    "that signs client certificates)", t->client_auth ==
		    DMX_TLS_AUTH_REQUIRE ? "require" : "optional");
	return 0;
}
