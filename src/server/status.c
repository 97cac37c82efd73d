/*
 * status.c - GET / and GET /stats.json (status.h).
 *
 * /stats.json is $/stats as built for a client, re-encoded as JSON: the
 * same keys and numbers, so that the page, curl and jq users, and muxcall
 * --stats all read one thing. The encoder covers what $/stats holds (maps
 * with string keys, arrays, integers, floats, booleans, nil, strings);
 * anything else becomes null rather than invalid JSON.
 */
#include <stdio.h>
#include <string.h>

#include <msgpack.h>

#include "builtins.h"
#include "status.h"

#include "status_html.h"	/* generated from status.html: STATUS_HTML */

const char *
dmx_status_page(void)
{
	return STATUS_HTML;
}

static void
json_str(dmx_buf *b, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	size_t i;

	dmx_buf_append(b, "\"", 1);
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		char e[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };

		if (c == '"' || c == '\\') {
			dmx_buf_append(b, "\\", 1);
			dmx_buf_append(b, &s[i], 1);
		} else if (c < 0x20) {
			dmx_buf_append(b, e, 6);
		} else {
			dmx_buf_append(b, &s[i], 1);
		}
	}
	dmx_buf_append(b, "\"", 1);
}

static void
json_obj(dmx_buf *b, const msgpack_object *o, int depth)
{
	char num[40];
	uint32_t i;
	int n;

	if (depth > 64) {
		dmx_buf_append(b, "null", 4);
		return;
	}
	switch (o->type) {
	case MSGPACK_OBJECT_BOOLEAN:
		dmx_buf_append(b, o->via.boolean ? "true" : "false",
		    o->via.boolean ? 4 : 5);
		return;
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		n = snprintf(num, sizeof(num), "%llu",
		    (unsigned long long)o->via.u64);
		dmx_buf_append(b, num, (size_t)n);
		return;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		n = snprintf(num, sizeof(num), "%lld", (long long)o->via.i64);
		dmx_buf_append(b, num, (size_t)n);
		return;
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		n = snprintf(num, sizeof(num), "%.17g", o->via.f64);
		dmx_buf_append(b, num, (size_t)n);
		return;
	case MSGPACK_OBJECT_STR:
		json_str(b, o->via.str.ptr, o->via.str.size);
		return;
	case MSGPACK_OBJECT_ARRAY:
		dmx_buf_append(b, "[", 1);
		for (i = 0; i < o->via.array.size; i++) {
			if (i)
				dmx_buf_append(b, ",", 1);
			json_obj(b, &o->via.array.ptr[i], depth + 1);
		}
		dmx_buf_append(b, "]", 1);
		return;
	case MSGPACK_OBJECT_MAP:
		dmx_buf_append(b, "{", 1);
		for (i = 0; i < o->via.map.size; i++) {
			const msgpack_object *k = &o->via.map.ptr[i].key;

			if (i)
				dmx_buf_append(b, ",", 1);
			if (k->type == MSGPACK_OBJECT_STR) {
				json_str(b, k->via.str.ptr, k->via.str.size);
			} else {	/* JSON keys are strings */
				dmx_buf_append(b, "\"", 1);
				json_obj(b, k, depth + 1);
				dmx_buf_append(b, "\"", 1);
			}
			dmx_buf_append(b, ":", 1);
			json_obj(b, &o->via.map.ptr[i].val, depth + 1);
		}
		dmx_buf_append(b, "}", 1);
		return;
	default:
		dmx_buf_append(b, "null", 4);
		return;
	}
}

int
dmx_status_json(const dmx_gen *g, dmx_server_stats *st, dmx_buf *out)
{
	dmx_buf mp = DMX_BUF_INIT;
	msgpack_unpacked u;
	size_t off = 0;
	int rc = -1;

	if (dmx_builtin(g, st, "anonymous", "$/stats", 7, &mp) != 0 ||
	    mp.data == NULL) {
		dmx_buf_release(&mp);
		return -1;
	}
	msgpack_unpacked_init(&u);
	if (msgpack_unpack_next(&u, mp.data, mp.len, &off) ==
	    MSGPACK_UNPACK_SUCCESS) {
		json_obj(out, &u.data, 0);
		dmx_buf_append(out, "\n", 1);
		rc = out->data != NULL ? 0 : -1;
	}
	msgpack_unpacked_destroy(&u);
	dmx_buf_release(&mp);
	return rc;
}
