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

/* ---- streaming msgpack -> JSON text (mj_print) ---- */

/*
 * The result of a call is printed straight from its bytes: one object at a
 * time, with an explicit stack for the nesting, so printing costs memory in
 * proportion to the depth, not to the number of elements (a tree of
 * msgpack-c objects and then of jansson values took ~60 bytes an element:
 * 639 MB for a 9.5 MiB result). Scalars are formatted by jansson, so the
 * text is the same as json_dumps would write.
 */

typedef struct mj_frame {
	uint32_t left;		/* elements (a map: keys + values) to come */
	uint8_t	 is_map;
	uint8_t	 first;
} mj_frame;

static uint64_t
rd_be(const uint8_t *p, int n)
{
	uint64_t v = 0;

	while (n-- > 0)
		v = v << 8 | *p++;
	return v;
}

/* One scalar as JSON text through jansson (v is consumed). */
static int
put_json(FILE *fp, json_t *v)
{
	char *s;

	if (v == NULL)
		return -1;
	s = json_dumps(v, JSON_ENCODE_ANY);
	json_decref(v);
	if (s == NULL)
		return -1;
	fputs(s, fp);
	free(s);
	return 0;
}

static void
newline(FILE *fp, int pretty, size_t depth)
{
	if (pretty) {
		fputc('\n', fp);
		while (depth-- > 0)
			fputs("  ", fp);
	}
}

int
mj_print(FILE *fp, const void *data, size_t len, int pretty, char *err,
    size_t errlen)
{
	const uint8_t *p = data, *end = p + len;
	mj_frame *st = NULL;
	size_t depth = 0, cap = 0;
	int rc = -1;

	while (p < end) {
		uint8_t t = *p;
		uint64_t n = 0;
		int hdr = 1, is_map = -1, key;
		json_t *scalar = NULL;
		const uint8_t *body;

		/* separators and, inside a map, whether this is a key */
		key = depth > 0 && st[depth - 1].is_map &&
		    st[depth - 1].left % 2 == 0;
		if (depth > 0) {
			if (!st[depth - 1].first && key)
				fputc(',', fp);
			if (!st[depth - 1].first && !st[depth - 1].is_map)
				fputc(',', fp);
			if ((!st[depth - 1].is_map || key)) {
				if (pretty)
					newline(fp, 1, depth);
				else if (!st[depth - 1].first)
					fputc(' ', fp);
			}
			st[depth - 1].first = 0;
		}
		if (t <= 0x7f) {
			scalar = json_integer(t);
		} else if (t >= 0xe0) {
			scalar = json_integer((int8_t)t);
		} else if ((t & 0xf0) == 0x80 || (t & 0xf0) == 0x90) {
			is_map = (t & 0xf0) == 0x80;
			n = t & 0x0f;
		} else if ((t & 0xe0) == 0xa0) {
			n = t & 0x1f;
			goto str;
		} else {
			switch (t) {
			case 0xc0: scalar = json_null(); break;
			case 0xc2: scalar = json_false(); break;
			case 0xc3: scalar = json_true(); break;
			case 0xcc: case 0xcd: case 0xce: case 0xcf:
				hdr = 1 + (1 << (t - 0xcc));
				if (end - p < hdr)
					goto trunc;
				n = rd_be(p + 1, hdr - 1);
				if (n > INT64_MAX) {
					char d[24];

					snprintf(d, sizeof(d), "%llu",
					    (unsigned long long)n);
					scalar = json_string(d);
				} else {
					scalar = json_integer((json_int_t)n);
				}
				break;
			case 0xd0: case 0xd1: case 0xd2: case 0xd3:
				hdr = 1 + (1 << (t - 0xd0));
				if (end - p < hdr)
					goto trunc;
				n = rd_be(p + 1, hdr - 1);
				/* sign-extend from the field's width */
				if (hdr - 1 < 8 && (n >> (8 * (hdr - 1) - 1)))
					n |= ~0ull << (8 * (hdr - 1));
				scalar = json_integer((json_int_t)(int64_t)n);
				break;
			case 0xca: case 0xcb: {
				hdr = t == 0xca ? 5 : 9;
				if (end - p < hdr)
					goto trunc;
				n = rd_be(p + 1, hdr - 1);
				if (t == 0xca) {
					uint32_t u = (uint32_t)n;
					float f;

					memcpy(&f, &u, 4);
					scalar = json_real(f);
				} else {
					double d;

					memcpy(&d, &n, 8);
					scalar = json_real(d);
				}
				break;
			}
			case 0xd9: case 0xda: case 0xdb:
				hdr = 1 + (1 << (t - 0xd9));
				if (end - p < hdr)
					goto trunc;
				n = rd_be(p + 1, hdr - 1);
				goto str;
			case 0xc4: case 0xc5: case 0xc6:
				hdr = 1 + (1 << (t - 0xc4));
				if (end - p < hdr)
					goto trunc;
				n = rd_be(p + 1, hdr - 1);
				if ((uint64_t)(end - p - hdr) < n)
					goto trunc;
				scalar = wrap_b64("$base64", p + hdr, n);
				p += hdr + n;
				hdr = 0;
				break;
			case 0xdc: case 0xdd: case 0xde: case 0xdf:
				hdr = t == 0xdc || t == 0xde ? 3 : 5;
				if (end - p < hdr)
					goto trunc;
				n = rd_be(p + 1, hdr - 1);
				is_map = t >= 0xde;
				break;
			case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
			case 0xc7: case 0xc8: case 0xc9: {
				int type_at;

				if (t >= 0xd4 && t <= 0xd8) {
					n = 1u << (t - 0xd4);
					hdr = 2;
					type_at = 1;
				} else {
					int lb = 1 << (t - 0xc7);

					hdr = 2 + lb;
					if (end - p < hdr)
						goto trunc;
					n = rd_be(p + 1, lb);
					type_at = 1 + lb;
				}
				if (end - p < hdr || (uint64_t)(end - p - hdr) <
				    n)
					goto trunc;
				scalar = wrap_b64("$base64", p + hdr, n);
				if (scalar)
					json_object_set_new(scalar, "$ext",
					    json_integer((int8_t)p[type_at]));
				p += hdr + n;
				hdr = 0;
				break;
			}
			default:
				snprintf(err, errlen, "the result is not valid "
				    "MessagePack (byte 0x%02x)", t);
				goto out;
			}
		}
		if (0) {
str:
			if ((uint64_t)(end - p - hdr) < n)
				goto trunc;
			body = p + hdr;
			scalar = json_stringn((const char *)body, n);
			if (scalar == NULL)	/* not UTF-8 */
				scalar = wrap_b64("$base64", body, n);
			p += hdr + n;
			hdr = 0;
		}
		if (is_map < 0) {
			p += hdr;
			if (key && scalar != NULL && !json_is_string(scalar)) {
				/* a key that is not a string: its JSON text,
				 * as a string */
				char *ks = json_dumps(scalar, JSON_COMPACT |
				    JSON_ENCODE_ANY);

				json_decref(scalar);
				scalar = ks ? json_string(ks) : NULL;
				free(ks);
			}
			if (put_json(fp, scalar) != 0) {
				snprintf(err, errlen, "out of memory");
				goto out;
			}
			if (key)
				fputs(": ", fp);
		} else {
			if (key) {
				snprintf(err, errlen, "a map key is an array or "
				    "a map: not printable as JSON");
				goto out;
			}
			p += hdr;
			if (depth == MJ_MAX_DEPTH) {
				snprintf(err, errlen, "the result is nested "
				    "deeper than %d levels: not printable as "
				    "JSON", MJ_MAX_DEPTH);
				goto out;
			}
			if (n > UINT32_MAX / 2) {
				snprintf(err, errlen, "the result is not valid "
				    "MessagePack (a container of %llu)",
				    (unsigned long long)n);
				goto out;
			}
			if (depth == cap) {
				size_t nc = cap ? cap * 2 : 16;
				mj_frame *ns = realloc(st, nc * sizeof(*ns));

				if (ns == NULL) {
					snprintf(err, errlen, "out of memory");
					goto out;
				}
				st = ns;
				cap = nc;
			}
			fputc(is_map ? '{' : '[', fp);
			st[depth].left = (uint32_t)(is_map ? 2 * n : n);
			st[depth].is_map = (uint8_t)is_map;
			st[depth].first = 1;
			depth++;
			/* the element just opened counts in its parent */
			if (depth > 1)
				st[depth - 2].left--;
			goto close;
		}
		if (depth > 0)
			st[depth - 1].left--;
close:
		while (depth > 0 && st[depth - 1].left == 0) {
			if (!st[depth - 1].first)
				newline(fp, pretty, depth - 1);
			fputc(st[depth - 1].is_map ? '}' : ']', fp);
			depth--;
		}
		if (depth == 0)
			break;
	}
	if (depth > 0 || p != end) {
		snprintf(err, errlen, p != end ? "the result has bytes after "
		    "its end" : "the result is cut off");
		goto out;
	}
	fputc('\n', fp);
	rc = 0;
	goto out;
trunc:
	snprintf(err, errlen, "the result is cut off");
out:
	free(st);
	return rc;
}

uint64_t
mj_u64(json_t *o, const char *path)
{
	json_t *v = o;
	char buf[128], *tok, *save = NULL;

	snprintf(buf, sizeof(buf), "%s", path);
	for (tok = strtok_r(buf, ".", &save); tok && v;
	    tok = strtok_r(NULL, ".", &save))
		v = json_object_get(v, tok);
	return v && json_is_integer(v) ? (uint64_t)json_integer_value(v) : 0;
}
