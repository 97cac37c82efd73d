/*
 * pack.c - libmux's msgpack helpers: mux_pack, mux_callf, mux_unpack.
 *
 * A format string of one letter per value keeps small calls readable without
 * a builder object to create and free; see mux.h for the letters.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "../common/buf.h"
#include "demux/mux.h"

/* Pack values from fmt until its end or the closing `stop` character.
 * Returns the number of values packed, or -1 on a bad format. */
static int
pack_values(msgpack_packer *pk, const char **fmt, char stop, va_list *ap);

/* Count the values of one level of fmt (up to the matching `stop`). */
static int
count_values(const char *f, char stop)
{
	int n = 0, depth = 0;

	for (; *f; f++) {
		if (depth == 0 && *f == stop)
			return n;
		if (*f == '[' || *f == '{') {
			if (depth == 0)
				n++;
			depth++;
		} else if (*f == ']' || *f == '}') {
			if (--depth < 0)
				return -1;
		} else if (depth == 0) {
			n++;
		}
	}
	return stop == '\0' && depth == 0 ? n : -1;
}

static int
pack_values(msgpack_packer *pk, const char **fmt, char stop, va_list *ap)
{
	const char *s;
	const void *p;
	size_t len;
	int n = 0, k;

	for (; **fmt != stop; n++) {
		char c = *(*fmt)++;

		switch (c) {
		case '\0':
			return -1;
		case 'n':
			msgpack_pack_nil(pk);
			break;
		case 'b':
			if (va_arg(*ap, int))
				msgpack_pack_true(pk);
			else
				msgpack_pack_false(pk);
			break;
		case 'i':
			msgpack_pack_int64(pk, va_arg(*ap, int64_t));
			break;
		case 'u':
			msgpack_pack_uint64(pk, va_arg(*ap, uint64_t));
			break;
		case 'd':
			msgpack_pack_double(pk, va_arg(*ap, double));
			break;
		case 's':
			s = va_arg(*ap, const char *);
			len = s ? strlen(s) : 0;
			msgpack_pack_str(pk, len);
			msgpack_pack_str_body(pk, s, len);
			break;
		case 'S':
			s = va_arg(*ap, const char *);
			len = va_arg(*ap, size_t);
			msgpack_pack_str(pk, len);
			msgpack_pack_str_body(pk, s, len);
			break;
		case 'B':
			p = va_arg(*ap, const void *);
			len = va_arg(*ap, size_t);
			msgpack_pack_bin(pk, len);
			msgpack_pack_bin_body(pk, p, len);
			break;
		case 'r':
			p = va_arg(*ap, const void *);
			len = va_arg(*ap, size_t);
			if (len == 0)
				return -1;
			pk->callback(pk->data, p, len);
			break;
		case '[':
			k = count_values(*fmt, ']');
			if (k < 0)
				return -1;
			msgpack_pack_array(pk, (size_t)k);
			if (pack_values(pk, fmt, ']', ap) != k)
				return -1;
			(*fmt)++;
			break;
		case '{':
			k = count_values(*fmt, '}');
			if (k < 0 || k % 2 != 0)
				return -1;
			msgpack_pack_map(pk, (size_t)k / 2);
			if (pack_values(pk, fmt, '}', ap) != k)
				return -1;
			(*fmt)++;
			break;
		default:
			return -1;
		}
	}
	return n;
}

/* Pack fmt's values, wrapped in an array when `wrap`. */
static int
vpack(dmx_buf *b, int wrap, const char *fmt, va_list ap)
{
	msgpack_packer pk;
	va_list cp;
	int n, rc;

	n = count_values(fmt, '\0');
	if (n < 0)
		return MUX_EINVAL;
	msgpack_packer_init(&pk, b, dmx_buf_pack_write);
	if (wrap)
		msgpack_pack_array(&pk, (size_t)n);
	va_copy(cp, ap);
	rc = pack_values(&pk, &fmt, '\0', &cp);
	va_end(cp);
	if (rc != n) {
		dmx_buf_release(b);
		return MUX_EINVAL;
	}
	if (b->data == NULL && n > 0) {
		dmx_buf_release(b);
		return MUX_ENOMEM;
	}
	return MUX_OK;
}

int
mux_pack(char **out, size_t *len, const char *fmt, ...)
{
	dmx_buf b = DMX_BUF_INIT;
	va_list ap;
	int rc;

	*out = NULL;
	*len = 0;
	if (fmt == NULL)
		return MUX_EINVAL;
	va_start(ap, fmt);
	rc = vpack(&b, 0, fmt, ap);
	va_end(ap);
	if (rc == MUX_OK) {
		*out = b.data;
		*len = b.len;
	}
	return rc;
}

int
mux_callf(mux_t *m, const char *method, mux_result *res, int timeout_ms,
    const char *fmt, ...)
{
	dmx_buf b = DMX_BUF_INIT;
	va_list ap;
	int rc;

	memset(res, 0, sizeof(*res));
	va_start(ap, fmt);
	rc = vpack(&b, 1, fmt ? fmt : "", ap);
	va_end(ap);
	if (rc != MUX_OK)
		return rc;
	rc = mux_call(m, method, b.data, b.len, res, timeout_ms);
	dmx_buf_release(&b);
	return rc;
}

/* ---- unpacking ---- */

static int
get_values(const msgpack_object *o, uint32_t n, const char **fmt, char stop,
    const char *base, va_list *ap);

/* Consume the arguments of one value's format, storing nothing: an
 * optional map key that is absent. */
static int
skip_args(const char **fmt, va_list *ap)
{
	char c = *(*fmt)++;

	switch (c) {
	case 'n':
	case '*':
		return 0;
	case 'b':
		(void)va_arg(*ap, int *);
		return 0;
	case 'i':
		(void)va_arg(*ap, int64_t *);
		return 0;
	case 'u':
		(void)va_arg(*ap, uint64_t *);
		return 0;
	case 'd':
		(void)va_arg(*ap, double *);
		return 0;
	case 's':
	case 'S':
		(void)va_arg(*ap, const char **);
		(void)va_arg(*ap, size_t *);
		return 0;
	case 'B':
		(void)va_arg(*ap, const void **);
		(void)va_arg(*ap, size_t *);
		return 0;
	case '[':
		while (**fmt != ']')
			if (**fmt == '\0' || skip_args(fmt, ap) != 0)
				return -1;
		(*fmt)++;
		return 0;
	case '{':
		while (**fmt != '}') {
			if (*(*fmt)++ != 's')
				return -1;
			(void)va_arg(*ap, const char *);
			if (**fmt == '?')
				(*fmt)++;
			if (skip_args(fmt, ap) != 0)
				return -1;
		}
		(*fmt)++;
		return 0;
	default:
		return -1;
	}
}

/* The value of key in map o, or NULL. */
static const msgpack_object *
map_get(const msgpack_object *o, const char *key)
{
	size_t kl = strlen(key);
	uint32_t i;

	for (i = 0; i < o->via.map.size; i++) {
		const msgpack_object *k = &o->via.map.ptr[i].key;

		if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == kl &&
		    memcmp(k->via.str.ptr, key, kl) == 0)
			return &o->via.map.ptr[i].val;
	}
	return NULL;
}

static int get_one(const msgpack_object *o, const char **fmt,
    const char *base, va_list *ap);

/* { s<value> s?<value> ... }: each s names a key (a const char *
 * argument); its value must match what follows, and be there unless ?
 * says it may be absent. Keys not named are ignored. */
static int
get_map(const msgpack_object *o, const char **fmt, const char *base,
    va_list *ap)
{
	const msgpack_object *v;
	const char *key;
	int optional;

	if (o->type != MSGPACK_OBJECT_MAP)
		return -1;
	while (**fmt != '}') {
		if (*(*fmt)++ != 's')
			return -1;	/* keys are named by string */
		key = va_arg(*ap, const char *);
		optional = **fmt == '?';
		if (optional)
			(*fmt)++;
		if (key == NULL)
			return -1;
		if ((v = map_get(o, key)) != NULL) {
			if (get_one(v, fmt, base, ap) != 0)
				return -1;
		} else if (!optional || skip_args(fmt, ap) != 0) {
			return -1;
		}
	}
	(*fmt)++;
	return 0;
}

static int
get_one(const msgpack_object *o, const char **fmt, const char *base,
    va_list *ap)
{
	(void)base;
	char c = *(*fmt)++;
	int64_t iv;

	switch (c) {
	case 'n':
		return o->type == MSGPACK_OBJECT_NIL ? 0 : -1;
	case '*':
		return 0;
	case 'b':
		if (o->type != MSGPACK_OBJECT_BOOLEAN)
			return -1;
		*va_arg(*ap, int *) = o->via.boolean;
		return 0;
	case 'i':
		if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
			iv = o->via.i64;
		else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
		    o->via.u64 <= INT64_MAX)
			iv = (int64_t)o->via.u64;
		else
			return -1;
		*va_arg(*ap, int64_t *) = iv;
		return 0;
	case 'u':
		if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
			return -1;
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
			return -1;
		return 0;
	case 's':
	case 'S':
		if (o->type != MSGPACK_OBJECT_STR)
			return -1;
		*va_arg(*ap, const char **) = o->via.str.ptr;
		*va_arg(*ap, size_t *) = o->via.str.size;
		return 0;
	case 'B':
		if (o->type != MSGPACK_OBJECT_BIN)
			return -1;
		*va_arg(*ap, const void **) = o->via.bin.ptr;
		*va_arg(*ap, size_t *) = o->via.bin.size;
		return 0;
	case '[':
		if (o->type != MSGPACK_OBJECT_ARRAY)
			return -1;
		if (get_values(o->via.array.ptr, o->via.array.size, fmt, ']',
		    base, ap) != 0)
			return -1;
		(*fmt)++;
		return 0;
	case '{':
		return get_map(o, fmt, base, ap);
	default:
		return -1;
	}
}

static int
get_values(const msgpack_object *o, uint32_t n, const char **fmt, char stop,
    const char *base, va_list *ap)
{
	uint32_t i;

	for (i = 0; i < n; i++) {
		if (**fmt == stop || **fmt == '\0')
			return -1;
		if (get_one(&o[i], fmt, base, ap) != 0)
			return -1;
	}
	return **fmt == stop ? 0 : -1;
}

int
mux_unpack(const void *data, size_t len, const char *fmt, ...)
{
	msgpack_zone zone;
	msgpack_object o;
	va_list ap;
	size_t off = 0;
	int rc = MUX_EINVAL;

	if (data == NULL || fmt == NULL || len == 0)
		return MUX_EINVAL;
	msgpack_zone_init(&zone, 1024);
	if (msgpack_unpack(data, len, &off, &zone, &o) ==
	    MSGPACK_UNPACK_SUCCESS && off == len) {
		va_start(ap, fmt);
		if (get_values(&o, 1, &fmt, '\0', data, &ap) == 0)
			rc = MUX_OK;
		va_end(ap);
	}
	msgpack_zone_destroy(&zone);
	return rc;
}
