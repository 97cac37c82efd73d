/*
 * json.h - JSON <-> MessagePack for muxcall (with jansson).
 *
 * msgpack -> JSON: nil null, booleans, integers (exact, up to 64 bits; an
 * unsigned value above 2^63-1 becomes a string of its digits), floats,
 * strings (valid UTF-8), arrays, maps. What JSON cannot hold is wrapped in a
 * one-key object: binary {"$base64": "..."}, a string that is not UTF-8
 * {"$base64": "..."} too, an extension {"$ext": TYPE, "$base64": "..."}; a
 * map key that is not a string is written as the JSON text of the key
 * ({"1": ...} for the key 1, {"[1,2]": ...} for [1, 2]).
 * JSON -> msgpack: the reverse; {"$base64": "..."} becomes binary.
 */
#ifndef MUXCALL_JSON_H
#define MUXCALL_JSON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>
#include <msgpack.h>

/* A new reference, or NULL on memory failure. */
json_t *mj_from_msgpack(const msgpack_object *o);
/* Decode data (one object) and convert; NULL if data is not msgpack. */
json_t *mj_from_bytes(const void *data, size_t len);
/* Print the msgpack object data[0..len) as JSON text and a newline, as
 * json_dumps would (pretty: JSON_INDENT(2)), without building it in memory:
 * what printing costs grows with the depth only. Returns 0, or -1 with a
 * reason in err for what is not valid msgpack, is nested deeper than
 * MJ_MAX_DEPTH (what JSON parsers accept), or has a container as a map
 * key. Map keys that repeat are printed as they come. */
#define MJ_MAX_DEPTH 2048
int mj_print(FILE *fp, const void *data, size_t len, int pretty, char *err,
    size_t errlen);
/* The integer at a dotted path ("server.requests") of a JSON object, or 0
 * where there is none. */
uint64_t mj_u64(json_t *o, const char *path);
/* Pack v; returns 0, or -1 (with a reason in err) for what cannot be
 * represented. */
int mj_to_msgpack(msgpack_packer *pk, const json_t *v, char *err,
    size_t errlen);

#endif
