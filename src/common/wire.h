/*
 * wire.h - the MessagePack-RPC framing shared by demuxd and libmux.
 *
 * MessagePack-RPC adds nothing around a message, so the only way to find where
 * one ends is to walk its msgpack structure. dmx_scan does that without
 * decoding: it looks at type headers only, skips str/bin/ext payloads in O(1)
 * and is resumable, so a frame that arrives in pieces is walked once in total
 * (no quadratic re-parsing of a 64 MiB message that trickles in).
 *
 * dmx_rd is a bounded cursor over one complete frame: every accessor checks the
 * remaining length before it reads, and fails (returns -1) on a short buffer or
 * a wrong type instead of reading past the end.
 *
 * The error codes of the protocol live in one X-macro list, DMX_WIRE_ERRORS,
 * from which the enum and the default messages are generated.
 */
#ifndef DMX_WIRE_H
#define DMX_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "demux/protocol.h"

/* The protocol's error codes, from the one list in demux/protocol.h, under
 * demuxd's and libmux's internal prefix. */
enum dmx_wire_error {
#define DMX_XX(name, code, meaning, retry) DMX_E_##name = (code),
	DEMUX_PROTOCOL_ERRORS(DMX_XX)
#undef DMX_XX
};

#define DMX_NOT_EXECUTED_DRAINING DEMUX_NOT_EXECUTED_DRAINING

/* Default message for a protocol error code, or NULL if the code is not one. */
const char *dmx_wire_strerror(int64_t code);

/* Message types, the first element of every message. */
enum { DMX_MSG_REQUEST = 0, DMX_MSG_RESPONSE = 1, DMX_MSG_NOTIFY = 2 };

/* ---- resumable frame scanner ---- */

typedef struct dmx_scan {
	size_t   pos;		/* bytes of the current frame walked so far */
	uint64_t pending;	/* objects still to walk; 0 = between frames */
	uint64_t objects;	/* objects walked in the current frame; after
				 * DMX_SCAN_FRAME, the frame's count (what
				 * decoding it would allocate scales with) */
} dmx_scan;

#define DMX_SCAN_INIT { 0, 0, 0 }

enum {
	DMX_SCAN_MORE    = 0,	/* the frame is incomplete: read more */
	DMX_SCAN_FRAME   = 1,	/* *framelen bytes form one complete message */
	DMX_SCAN_INVALID = -1,	/* not msgpack (the reserved byte 0xc1) */
	DMX_SCAN_TOOBIG  = -2,	/* the frame is or must become larger than max */
};

/*
 * Walk the frame that starts at p[0]; n bytes are available. State carries
 * over between calls for the same frame, so the caller passes the same prefix
 * again with more bytes after it. On DMX_SCAN_FRAME the state is reset for the
 * next frame, which starts at p[*framelen]. `max` bounds the frame size; the
 * check is made as soon as a header announces more than max bytes, before any
 * of them arrive.
 */
int dmx_scan_frame(dmx_scan *s, const uint8_t *p, size_t n, size_t max,
    size_t *framelen);

/* Bytes the current incomplete frame needs at least (for buffer sizing). */
static inline size_t
dmx_scan_need(const dmx_scan *s)
{
	return s->pos + 1;
}

/* ---- bounded cursor ---- */

typedef struct dmx_rd {
	const uint8_t *p;
	const uint8_t *end;
} dmx_rd;

static inline void
dmx_rd_init(dmx_rd *r, const void *p, size_t n)
{
	r->p = p;
	r->end = r->p + n;
}

static inline size_t
dmx_rd_left(const dmx_rd *r)
{
	return (size_t)(r->end - r->p);
}

/* Each returns 0 and advances, or -1 and leaves the cursor where it was. */
int dmx_rd_array(dmx_rd *r, uint32_t *n);
int dmx_rd_map(dmx_rd *r, uint32_t *n);
int dmx_rd_int(dmx_rd *r, int64_t *v);		/* any int that fits int64 */
int dmx_rd_uint(dmx_rd *r, uint64_t *v);	/* any int >= 0 */
int dmx_rd_str(dmx_rd *r, const char **s, uint32_t *len);
int dmx_rd_nil(dmx_rd *r);			/* 0 if the next object is nil */
int dmx_rd_skip(dmx_rd *r);			/* skip one whole object */
/* True if the next object is nil (does not advance). */
int dmx_rd_is_nil(const dmx_rd *r);
/* True if the next object is an array (does not advance). */
int dmx_rd_is_array(const dmx_rd *r);

/* Walk exactly one object starting at p; returns its size, or 0 if p[0..n)
 * does not hold exactly one complete object. Used to validate plugin output. */
size_t dmx_wire_one_object(const void *p, size_t n);

#endif
