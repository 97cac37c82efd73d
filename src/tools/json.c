/*
 * json.c - JSON <-> MessagePack; see json.h for the mapping.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

static const char b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *
base64(const unsigned char *p, size_t n)
{
	char *out = malloc(4 * ((n + 2) / 3) + 1), *o = out;
	size_t i;

	if (out == NULL)
		return NULL;
	for (i = 0; i + 2 < n; i += 3) {
		*o++ = b64[p[i] >> 2];
		*o++ = b64[((p[i] & 3) << 4) | (p[i + 1] >> 4)];
		*o++ = b64[((p[i + 1] & 15) << 2) | (p[i + 2] >> 6)];
		*o++ = b64[p[i + 2] & 63];
	}
	if (i < n) {
		*o++ = b64[p[i] >> 2];
		if (i + 1 < n) {
			*o++ = b64[((p[i] & 3) << 4) | (p[i + 1] >> 4)];
			*o++ = b64[(p[i + 1] & 15) << 2];
		} else {
			*o++ = b64[(p[i] & 3) << 4];
			*o++ = '=';
		}
		*o++ = '=';
	}
	*o = '\0';
	return out;
}

/* Decode base64 into a new buffer; -1 if s is not base64. */
static int
unbase64(const char *s, unsigned char **out, size_t *outlen)
{
	size_t n = strlen(s), i, o = 0;
	unsigned char *buf;
	uint32_t acc = 0;
	int bits = 0;

	buf = malloc(n * 3 / 4 + 3);
	if (buf == NULL)
		return -1;
	for (i = 0; i < n; i++) {
		const char *q;

		if (s[i] == '=')
			break;
		q = strchr(b64, s[i]);
		if (q == NULL || s[i] == '\0') {
			free(buf);
			return -1;
		}
		acc = acc << 6 | (uint32_t)(q - b64);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			buf[o++] = (unsigned char)(acc >> bits);
		}
	}
	*out = buf;
	*outlen = o;
	return 0;
}

static json_t *
wrap_b64(const char *key, const void *p, size_t n)
{
	char *s = base64(p, n);
	json_t *o = s ? json_pack("{s:s}", key, s) : NULL;

	free(s);
	return o;
}

json_t *
mj_from_msgpack(const msgpack_object *o)
{
	json_t *v, *e;
	uint32_t i;

	switch (o->type) {
	case MSGPACK_OBJECT_NIL:
		return json_null();
	case MSGPACK_OBJECT_BOOLEAN:
		return json_boolean(o->via.boolean);
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		if (o->via.u64 > INT64_MAX) {
			char d[24];

			snprintf(d, sizeof(d), "%llu",
			    (unsigned long long)o->via.u64);
			return json_string(d);
		}
		return json_integer((json_int_t)o->via.u64);
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		return json_integer((json_int_t)o->via.i64);
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		return json_real(o->via.f64);
	case MSGPACK_OBJECT_STR:
		v = json_stringn(o->via.str.ptr, o->via.str.size);
		return v ? v : wrap_b64("$base64", o->via.str.ptr,
		    o->via.str.size);
	case MSGPACK_OBJECT_BIN:
		return wrap_b64("$base64", o->via.bin.ptr, o->via.bin.size);
	case MSGPACK_OBJECT_EXT:
		v = wrap_b64("$base64", o->via.ext.ptr, o->via.ext.size);
		if (v)
			json_object_set_new(v, "$ext",
			    json_integer(o->via.ext.type));
		return v;
	case MSGPACK_OBJECT_ARRAY:
		v = json_array();
		for (i = 0; v && i < o->via.array.size; i++)
			json_array_append_new(v,
			    mj_from_msgpack(&o->via.array.ptr[i]));
		return v;
	case MSGPACK_OBJECT_MAP:
		v = json_object();
		for (i = 0; v && i < o->via.map.size; i++) {
			const msgpack_object *k = &o->via.map.ptr[i].key;
			json_t *val = mj_from_msgpack(&o->via.map.ptr[i].val);
			char *ks;

			if (k->type == MSGPACK_OBJECT_STR) {
				ks = strndup(k->via.str.ptr, k->via.str.size);
			} else {
				e = mj_from_msgpack(k);
				ks = e ? json_dumps(e, JSON_COMPACT |
				    JSON_ENCODE_ANY) : NULL;
				json_decref(e);
			}
			if (ks != NULL)
				json_object_set_new(v, ks, val);
			else
				json_decref(val);
			free(ks);
		}
		return v;
	}
	return json_null();
}

json_t *
mj_from_bytes(const void *data, size_t len)
{
	msgpack_zone zone;
	msgpack_object o;
	json_t *v = NULL;
	size_t off = 0;

	msgpack_zone_init(&zone, 1024);
	if (msgpack_unpack(data, len, &off, &zone, &o) ==
	    MSGPACK_UNPACK_SUCCESS)
		v = mj_from_msgpack(&o);
	msgpack_zone_destroy(&zone);
	return v;
}

int
mj_to_msgpack(msgpack_packer *pk, const json_t *v, char *err, size_t errlen)
{
	const char *k, *s;
	json_t *e;
	size_t i, n;

	switch (json_typeof(v)) {
	case JSON_NULL:
		return msgpack_pack_nil(pk);
	case JSON_TRUE:
		return msgpack_pack_true(pk);
	case JSON_FALSE:
		return msgpack_pack_false(pk);
	case JSON_INTEGER:
		return msgpack_pack_int64(pk, json_integer_value(v));
	case JSON_REAL:
		return msgpack_pack_double(pk, json_real_value(v));
	case JSON_STRING:
		s = json_string_value(v);
		n = json_string_length(v);
		msgpack_pack_str(pk, n);
		return msgpack_pack_str_body(pk, s, n);
	case JSON_ARRAY:
		msgpack_pack_array(pk, json_array_size(v));
		json_array_foreach(v, i, e)
			if (mj_to_msgpack(pk, e, err, errlen) != 0)
				return -1;
		return 0;
	case JSON_OBJECT:
		/* {"$base64": "..."} is binary */
		if (json_object_size(v) == 1 &&
		    (e = json_object_get(v, "$base64")) != NULL &&
		    json_is_string(e)) {
			unsigned char *b;
			size_t bl;

			if (unbase64(json_string_value(e), &b, &bl) != 0) {
				snprintf(err, errlen, "\"$base64\": not base64");
				return -1;
			}
			msgpack_pack_bin(pk, bl);
			msgpack_pack_bin_body(pk, b, bl);
			free(b);
			return 0;
		}
		msgpack_pack_map(pk, json_object_size(v));
		json_object_foreach((json_t *)v, k, e) {
			n = strlen(k);
			msgpack_pack_str(pk, n);
			msgpack_pack_str_body(pk, k, n);
			if (mj_to_msgpack(pk, e, err, errlen) != 0)
				return -1;
		}
		return 0;
	}
	snprintf(err, errlen, "unsupported JSON value");
	return -1;
}
