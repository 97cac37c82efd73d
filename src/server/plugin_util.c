/*
 * plugin_util.c - demux_params() and demux_config_*(): see plugin_util.h
 * and the format in include/demux/plugin.h.
 *
 * A parameter error is the caller's mistake, so it is answered -32602 with
 * the parameter's number, its name and what came; a format the plugin got
 * wrong is the plugin's, answered -32603, and logged, since a caller can do
 * nothing about it.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/units.h"
#include "../common/wire.h"
#include "job.h"
#include "log.h"
#include "plugin_host.h"
#include "plugin_util.h"
#include "router.h"

/* "an integer", "a string", ... for messages */
static const char *
kind_of(const msgpack_object *o)
{
	switch (o->type) {
	case MSGPACK_OBJECT_NIL: return "nil";
	case MSGPACK_OBJECT_BOOLEAN: return "a boolean";
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "an integer";
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64: return "a float";
	case MSGPACK_OBJECT_STR: return "a string";
	case MSGPACK_OBJECT_BIN: return "binary";
	case MSGPACK_OBJECT_ARRAY: return "an array";
	case MSGPACK_OBJECT_MAP: return "a map";
	default: return "an extension";
	}
}

/* ---- params ---- */

typedef struct item {
	char		 name[48];
	char		 type;
	int		 optional, ranged;
	int64_t		 lo, hi;	/* i */
	uint64_t	 ulo, uhi;	/* u */
} item;

/* The next NAME:T[(LO..HI)][?] of fmt; 1, 0 at the end, -1 if malformed. */
static int
next_item(const char **fmt, item *it)
{
	const char *p = *fmt, *colon;
	size_t nl;

	while (*p == ' ')
		p++;
	if (*p == '\0')
		return 0;
	colon = strchr(p, ':');
	if (colon == NULL || (nl = (size_t)(colon - p)) == 0 ||
	    nl >= sizeof(it->name) || memchr(p, ' ', nl) != NULL)
		return -1;
	memcpy(it->name, p, nl);
	it->name[nl] = '\0';
	p = colon + 1;
	it->type = *p++;
	if (strchr("biudsBamo", it->type) == NULL || it->type == '\0')
		return -1;
	it->optional = it->ranged = 0;
	if (*p == '(') {
		char *end;

		if (it->type != 'i' && it->type != 'u')
			return -1;
		it->ranged = 1;
		if (it->type == 'i') {
			it->lo = strtoll(p + 1, &end, 10);
			if (strncmp(end, "..", 2) != 0)
				return -1;
			it->hi = strtoll(end + 2, &end, 10);
		} else {
			it->ulo = strtoull(p + 1, &end, 10);
			if (strncmp(end, "..", 2) != 0)
				return -1;
			it->uhi = strtoull(end + 2, &end, 10);
		}
		if (*end != ')')
			return -1;
		p = end + 1;
	}
	if (*p == '?') {
		it->optional = 1;
		p++;
	}
	if (*p != ' ' && *p != '\0')
		return -1;
	*fmt = p;
	return 1;
}

/* Take one item's pointers without storing (an absent optional). */
static void
skip_args(char type, va_list *ap)
{
	switch (type) {
	case 'b': (void)va_arg(*ap, int *); break;
	case 'i': (void)va_arg(*ap, int64_t *); break;
	case 'u': (void)va_arg(*ap, uint64_t *); break;
	case 'd': (void)va_arg(*ap, double *); break;
	case 's':
		(void)va_arg(*ap, const char **);
		(void)va_arg(*ap, size_t *);
		break;
	case 'B':
		(void)va_arg(*ap, const void **);
		(void)va_arg(*ap, size_t *);
		break;
	default: (void)va_arg(*ap, const msgpack_object **); break;
	}
}

static const char *
type_text(char t)
{
	switch (t) {
	case 'b': return "a boolean";
	case 'i': case 'u': return "an integer";
	case 'd': return "a number";
	case 's': return "a string";
	case 'B': return "binary or a string";
	case 'a': return "an array";
	case 'm': return "a map";
	default: return "a value";
	}
}

/* Check o against it and store through ap; 0, or -1 with msg set. */
static int
take(const msgpack_object *o, const item *it, va_list *ap, char *msg,
    size_t ml)
{
	int64_t iv;

	switch (it->type) {
	case 'b':
		if (o->type != MSGPACK_OBJECT_BOOLEAN)
			break;
		*va_arg(*ap, int *) = o->via.boolean;
		return 0;
	case 'i':
		if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
			iv = o->via.i64;
		else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
		    o->via.u64 <= INT64_MAX)
			iv = (int64_t)o->via.u64;
		else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
			snprintf(msg, ml, "must be at most %" PRId64 ", got %"
			    PRIu64, it->ranged ? it->hi : INT64_MAX,
			    o->via.u64);
			return -1;
		} else
			break;
		if (it->ranged && (iv < it->lo || iv > it->hi)) {
			snprintf(msg, ml, "must be from %" PRId64 " to %" PRId64
			    ", got %" PRId64, it->lo, it->hi, iv);
			return -1;
		}
		*va_arg(*ap, int64_t *) = iv;
		return 0;
	case 'u':
		if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
			snprintf(msg, ml, "must not be negative, got %" PRId64,
			    o->via.i64);
			return -1;
		}
		if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
			break;
		if (it->ranged && (o->via.u64 < it->ulo ||
		    o->via.u64 > it->uhi)) {
			snprintf(msg, ml, "must be from %" PRIu64 " to %" PRIu64
			    ", got %" PRIu64, it->ulo, it->uhi, o->via.u64);
			return -1;
		}
		*va_arg(*ap, uint64_t *) = o->via.u64;
		return 0;
	case 'd':
		if (o->type == MSGPACK_OBJECT_FLOAT32 ||
		    o->type == MSGPACK_OBJECT_FLOAT64)
			*va_arg(*ap, double *) = o->via.f64;
		else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
			*va_arg(*ap, double *) = (double)o->via.u64;
		else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
			*va_arg(*ap, double *) = (double)o->via.i64;
		else
			break;
		return 0;
	case 's':
		if (o->type != MSGPACK_OBJECT_STR)
			break;
		*va_arg(*ap, const char **) = o->via.str.ptr;
		*va_arg(*ap, size_t *) = o->via.str.size;
		return 0;
	case 'B':
		if (o->type != MSGPACK_OBJECT_BIN &&
		    o->type != MSGPACK_OBJECT_STR)
			break;
		/* str and bin share their layout in msgpack_object */
		*va_arg(*ap, const void **) = o->type == MSGPACK_OBJECT_BIN ?
		    (const void *)o->via.bin.ptr : (const void *)o->via.str.ptr;
		*va_arg(*ap, size_t *) = o->type == MSGPACK_OBJECT_BIN ?
		    o->via.bin.size : o->via.str.size;
		return 0;
	case 'a':
	case 'm':
		if (o->type != (it->type == 'a' ? MSGPACK_OBJECT_ARRAY :
		    MSGPACK_OBJECT_MAP))
			break;
		/* fall through */
	case 'o':
		*va_arg(*ap, const msgpack_object **) = o;
		return 0;
	}
	snprintf(msg, ml, "must be %s, got %s", type_text(it->type),
	    kind_of(o));
	return -1;
}

/* "[key, value]" or "[ms?]" for messages */
static void
names_of(const char *fmt, char *out, size_t len)
{
	item it;
	size_t n = 0;
	int first = 1;

	n += (size_t)snprintf(out, len, "[");
	while (n < len && next_item(&fmt, &it) == 1) {
		n += (size_t)snprintf(out + n, len - n, "%s%s%s", first ? "" :
		    ", ", it.name, it.optional ? "?" : "");
		first = 0;
	}
	if (n < len)
		snprintf(out + n, len - n, "]");
}

int
dmx_host_params(demux_call *c, const char *fmt, va_list ap0)
{
	dmx_job *j = (dmx_job *)c;
	const msgpack_object *p = j->params;
	const char *f = fmt, *method = j->route ? j->route->name : "?";
	char msg[256], names[160];
	uint32_t n, k = 0;
	va_list ap;
	item it;
	int rc, missing = 0;

	if (p == NULL || p->type != MSGPACK_OBJECT_ARRAY) {
		dmx_job_set_error(j, DMX_E_INTERNAL, "demux_params called "
		    "outside process_transaction", NULL);
		return -1;
	}
	n = p->via.array.size;
	va_copy(ap, ap0);
	while ((rc = next_item(&f, &it)) == 1) {
		if (k >= n) {
			if (!it.optional) {
				missing = 1;	/* a required one is absent */
				break;
			}
			skip_args(it.type, &ap);
			k++;
			continue;
		}
		if (take(&p->via.array.ptr[k], &it, &ap, msg,
		    sizeof(msg)) != 0) {
			char *m = NULL;

			if (asprintf(&m, "%s: parameter %u (%s) %s", method,
			    k + 1, it.name, msg) < 0)
				m = NULL;
			dmx_job_set_error(j, DMX_E_INVALID_PARAMS, m ? m :
			    "invalid params", NULL);
			free(m);
			va_end(ap);
			return -1;
		}
		k++;
	}
	va_end(ap);
	if (rc < 0) {
		dmx_warn("%s: demux_params: a malformed format \"%s\" (a bug "
		    "in the plugin)", method, fmt);
		dmx_job_set_error(j, DMX_E_INTERNAL, "the plugin's parameter "
		    "format is malformed", NULL);
		return -1;
	}
	if (!missing && n <= k)
		return 0;
	names_of(fmt, names, sizeof(names));
	{
		char *m = NULL;

		if (asprintf(&m, "%s: expects %s, got %u parameter%s", method,
		    names, n, n == 1 ? "" : "s") < 0)
			m = NULL;
		dmx_job_set_error(j, DMX_E_INVALID_PARAMS, m ? m :
		    "invalid params", NULL);
		free(m);
	}
	return -1;
}

/* ---- config ---- */

static const msgpack_object *
config_find(const msgpack_object *cfg, const char *key)
{
	size_t kl = strlen(key);
	uint32_t i;

	for (i = 0; i < cfg->via.map.size; i++) {
		const msgpack_object *k = &cfg->via.map.ptr[i].key;

		if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == kl &&
		    memcmp(k->via.str.ptr, key, kl) == 0)
			return &cfg->via.map.ptr[i].val;
	}
	return NULL;
}

/* The config key's value as text, for a message. */
static void
shown(const msgpack_object *v, char *buf, size_t len)
{
	if (v->type == MSGPACK_OBJECT_STR)
		snprintf(buf, len, "'%.*s'", (int)(v->via.str.size > 60 ? 60 :
		    v->via.str.size), v->via.str.ptr);
	else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
		snprintf(buf, len, "%" PRId64, v->via.i64);
	else
		snprintf(buf, len, "%s", kind_of(v));
}

/* A size or duration: an integer, or a string in units.h's grammar. */
static int
config_unit(const msgpack_object *v, char kind, uint64_t *out)
{
	char s[64];

	if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
		*out = v->via.u64;
		return 0;
	}
	if (v->type != MSGPACK_OBJECT_STR || v->via.str.size >= sizeof(s))
		return -1;
	memcpy(s, v->via.str.ptr, v->via.str.size);
	s[v->via.str.size] = '\0';
	return kind == 'z' ? dmx_parse_size(s, UINT64_MAX, out) :
	    dmx_parse_ms(s, UINT64_MAX, out);
}

int
dmx_host_config_get(const demux_host *h, const char *key, char kind,
    void *out, char *err, size_t errlen)
{
	const msgpack_object *cfg = h->config, *v;
	const char *want = "";
	char got[96];

	if (cfg == NULL || cfg->type == MSGPACK_OBJECT_NIL)
		return 0;
	if (cfg->type != MSGPACK_OBJECT_MAP) {
		snprintf(err, errlen, "config: expected a mapping of keys, got "
		    "%s", kind_of(cfg));
		return -1;
	}
	if (kind == 'k') {
		uint32_t i;

		for (i = 0; i < cfg->via.map.size; i++) {
			const msgpack_object *k = &cfg->via.map.ptr[i].key;
			const char *p = key;
			size_t kl;
			int found = 0;

			if (k->type != MSGPACK_OBJECT_STR) {
				snprintf(err, errlen, "config: keys must be "
				    "strings, got %s", kind_of(k));
				return -1;
			}
			kl = k->via.str.size;
			while (*p != '\0' && !found) {
				size_t wl = strcspn(p, " ");

				found = wl == kl && memcmp(p, k->via.str.ptr,
				    kl) == 0;
				p += wl;
				p += strspn(p, " ");
			}
			if (!found) {
				snprintf(err, errlen, "config: unknown key "
				    "'%.*s' (expected one of: %s)", (int)(kl >
				    60 ? 60 : kl), k->via.str.ptr, key);
				return -1;
			}
		}
		return 0;
	}
	if ((v = config_find(cfg, key)) == NULL)
		return 0;
	switch (kind) {
	case 'i':
		if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
			*(int64_t *)out = v->via.i64;
		else if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
		    v->via.u64 <= INT64_MAX)
			*(int64_t *)out = (int64_t)v->via.u64;
		else {
			want = "an integer";
			break;
		}
		return 1;
	case 'u':
		if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
			want = "a non-negative integer";
			break;
		}
		*(uint64_t *)out = v->via.u64;
		return 1;
	case 'z':
	case 't':
		if (config_unit(v, kind, (uint64_t *)out) != 0) {
			want = kind == 'z' ? "a size (65536 or 64KiB)" :
			    "a duration (500, 500ms, 2s, 5m or 1h)";
			break;
		}
		return 1;
	case 'b':
		if (v->type != MSGPACK_OBJECT_BOOLEAN) {
			want = "true or false";
			break;
		}
		*(int *)out = v->via.boolean;
		return 1;
	case 'd':
		if (v->type == MSGPACK_OBJECT_FLOAT32 ||
		    v->type == MSGPACK_OBJECT_FLOAT64)
			*(double *)out = v->via.f64;
		else if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
			*(double *)out = (double)v->via.u64;
		else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
			*(double *)out = (double)v->via.i64;
		else {
			want = "a number";
			break;
		}
		return 1;
	case 's': {
		dmx_plugin *p = (dmx_plugin *)(void *)((char *)(uintptr_t)h -
		    offsetof(dmx_plugin, host));
		char *s;

		if (v->type != MSGPACK_OBJECT_STR) {
			want = "a string";
			break;
		}
		/* lives as long as the config it came from: until fini */
		s = msgpack_zone_malloc(&p->cfg_zone, v->via.str.size + 1);
		if (s == NULL) {
			snprintf(err, errlen, "config: %s: out of memory", key);
			return -1;
		}
		memcpy(s, v->via.str.ptr, v->via.str.size);
		s[v->via.str.size] = '\0';
		*(const char **)out = s;
		return 1;
	}
	default:
		snprintf(err, errlen, "config: %s: unknown kind '%c'", key, kind);
		return -1;
	}
	shown(v, got, sizeof(got));
	snprintf(err, errlen, "config: %s: expected %s, got %s", key, want, got);
	return -1;
}
