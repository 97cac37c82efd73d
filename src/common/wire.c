/*
 * wire.c - msgpack frame scanner and bounded cursor; see wire.h.
 *
 * The scanner keeps one counter of objects still to walk instead of a stack:
 * an array of n adds n, a map of n adds 2n, every object walked subtracts one.
 * That is all framing needs, and it makes the state two words.
 */
#include <string.h>

#include "wire.h"

const char *
dmx_wire_strerror(int64_t code)
{
	switch (code) {
#define DMX_XX(name, c, msg, retry) case (c): return (msg);
	DEMUX_PROTOCOL_ERRORS(DMX_XX)
#undef DMX_XX
	default:
		return NULL;
	}
}

static inline uint32_t
be16(const uint8_t *p)
{
	return (uint32_t)p[0] << 8 | p[1];
}

static inline uint32_t
be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	    (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t
be64(const uint8_t *p)
{
	return (uint64_t)be32(p) << 32 | be32(p + 4);
}

/*
 * Describe the object whose first byte is p[0] given `avail` bytes:
 * *hdr = header size (type byte included), *skip = payload bytes after the
 * header, *children = nested objects it contains. Returns 0, 1 if the header
 * itself is incomplete, or -1 for the reserved byte.
 */
static int
describe(const uint8_t *p, size_t avail, size_t *hdr, uint64_t *skip,
    uint64_t *children)
{
	uint8_t t = p[0];
	size_t h = 1, lenbytes = 0;

	*skip = 0;
	*children = 0;
	if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3) {
		*hdr = 1;
		return 0;
	}
	if ((t & 0xf0) == 0x80) {		/* fixmap */
		*hdr = 1;
		*children = 2u * (t & 0x0f);
		return 0;
	}
	if ((t & 0xf0) == 0x90) {		/* fixarray */
		*hdr = 1;
		*children = t & 0x0f;
		return 0;
	}
	if ((t & 0xe0) == 0xa0) {		/* fixstr */
		*hdr = 1;
		*skip = t & 0x1f;
		return 0;
	}
	switch (t) {
	case 0xc1:
		return -1;
	case 0xc4: case 0xd9: lenbytes = 1; break;	/* bin8, str8 */
	case 0xc5: case 0xda: lenbytes = 2; break;	/* bin16, str16 */
	case 0xc6: case 0xdb: lenbytes = 4; break;	/* bin32, str32 */
	case 0xc7: lenbytes = 1; h = 2; break;		/* ext8: len, type */
	case 0xc8: lenbytes = 2; h = 2; break;
	case 0xc9: lenbytes = 4; h = 2; break;
	case 0xca: *hdr = 5; return 0;			/* float32 */
	case 0xcb: *hdr = 9; return 0;			/* float64 */
	case 0xcc: case 0xd0: *hdr = 2; return 0;
	case 0xcd: case 0xd1: *hdr = 3; return 0;
	case 0xce: case 0xd2: *hdr = 5; return 0;
	case 0xcf: case 0xd3: *hdr = 9; return 0;
	case 0xd4: *hdr = 3; return 0;			/* fixext 1 */
	case 0xd5: *hdr = 4; return 0;
	case 0xd6: *hdr = 6; return 0;
	case 0xd7: *hdr = 10; return 0;
	case 0xd8: *hdr = 18; return 0;
	case 0xdc: case 0xde:				/* array16, map16 */
		if (avail < 3)
			return 1;
		*hdr = 3;
		*children = be16(p + 1) * (t == 0xde ? 2u : 1u);
		return 0;
	case 0xdd: case 0xdf:				/* array32, map32 */
		if (avail < 5)
			return 1;
		*hdr = 5;
		*children = (uint64_t)be32(p + 1) * (t == 0xdf ? 2u : 1u);
		return 0;
	}
	/* length-prefixed: str, bin, ext */
	if (avail < 1 + lenbytes)
		return 1;
	*hdr = 1 + lenbytes + (h - 1);
	*skip = lenbytes == 1 ? p[1] : lenbytes == 2 ? be16(p + 1) : be32(p + 1);
	return 0;
}

int
dmx_scan_frame(dmx_scan *s, const uint8_t *p, size_t n, size_t max,
    size_t *framelen)
{
	size_t hdr;
	uint64_t skip, children;
	int rc;

	if (s->pending == 0 && s->pos == 0) {
		s->pending = 1;
		s->objects = 0;
	}
	while (s->pending > 0 && s->pos < n) {
		rc = describe(p + s->pos, n - s->pos, &hdr, &skip, &children);
		if (rc < 0)
			return DMX_SCAN_INVALID;
		if (rc > 0 || n - s->pos < hdr)
			break;				/* header incomplete */
		if (skip > max || hdr + skip > max - s->pos)
			return DMX_SCAN_TOOBIG;
		s->pos += hdr + (size_t)skip;
		s->pending = s->pending - 1 + children;
		s->objects++;
		/* every object takes at least one byte */
		if (s->pending > max - s->pos)
			return DMX_SCAN_TOOBIG;
	}
	if (s->pending == 0 && s->pos <= n) {
		*framelen = s->pos;
		s->pos = 0;
		return DMX_SCAN_FRAME;
	}
	if (s->pos > max)
		return DMX_SCAN_TOOBIG;
	return DMX_SCAN_MORE;
}

size_t
dmx_wire_one_object(const void *p, size_t n)
{
	dmx_scan s = DMX_SCAN_INIT;
	size_t len;

	if (n == 0)
		return 0;
	if (dmx_scan_frame(&s, p, n, n, &len) != DMX_SCAN_FRAME || len != n)
		return 0;
	return len;
}

/* ---- cursor ---- */

/* An array or map header: fix_tag is 0x90 or 0x80, t16/t32 the 16- and
 * 32-bit forms. */
static int
rd_container(dmx_rd *r, uint32_t *n, uint8_t fix_tag, uint8_t t16,
    uint8_t t32)
{
	size_t left = dmx_rd_left(r);
	uint8_t t;

	if (left < 1)
		return -1;
	t = r->p[0];
	if ((t & 0xf0) == fix_tag) {
		*n = t & 0x0f;
		r->p += 1;
		return 0;
	}
	if (t == t16 && left >= 3) {
		*n = be16(r->p + 1);
		r->p += 3;
		return 0;
	}
	if (t == t32 && left >= 5) {
		*n = be32(r->p + 1);
		r->p += 5;
		return 0;
	}
	return -1;
}

int
dmx_rd_array(dmx_rd *r, uint32_t *n)
{
	return rd_container(r, n, 0x90, 0xdc, 0xdd);
}

int
dmx_rd_map(dmx_rd *r, uint32_t *n)
{
	return rd_container(r, n, 0x80, 0xde, 0xdf);
}

/* Read any msgpack integer as a sign flag and magnitude-preserving pair. */
static int
rd_anyint(dmx_rd *r, int *neg, uint64_t *u, int64_t *i)
{
	size_t left = dmx_rd_left(r), need;
	const uint8_t *p = r->p;
	uint8_t t;

	if (left < 1)
		return -1;
	t = p[0];
	if (t <= 0x7f) {
		*neg = 0; *u = t; need = 1;
	} else if (t >= 0xe0) {
		*neg = 1; *i = (int8_t)t; need = 1;
	} else {
		switch (t) {
		case 0xcc: need = 2; break;
		case 0xcd: need = 3; break;
		case 0xce: need = 5; break;
		case 0xcf: need = 9; break;
		case 0xd0: need = 2; break;
		case 0xd1: need = 3; break;
		case 0xd2: need = 5; break;
		case 0xd3: need = 9; break;
		default: return -1;
		}
		if (left < need)
			return -1;
		switch (t) {
		case 0xcc: *neg = 0; *u = p[1]; break;
		case 0xcd: *neg = 0; *u = be16(p + 1); break;
		case 0xce: *neg = 0; *u = be32(p + 1); break;
		case 0xcf: *neg = 0; *u = be64(p + 1); break;
		case 0xd0: *i = (int8_t)p[1]; break;
		case 0xd1: *i = (int16_t)be16(p + 1); break;
		case 0xd2: *i = (int32_t)be32(p + 1); break;
		case 0xd3: *i = (int64_t)be64(p + 1); break;
		}
		if (t >= 0xd0) {
			/* signed encodings may carry non-negative values */
			*neg = *i < 0;
			if (!*neg)
				*u = (uint64_t)*i;
		}
	}
	r->p += need;
	return 0;
}

int
dmx_rd_int(dmx_rd *r, int64_t *v)
{
	dmx_rd save = *r;
	uint64_t u = 0;
	int64_t i = 0;
	int neg;

	if (rd_anyint(r, &neg, &u, &i) != 0)
		return -1;
	if (neg) {
		*v = i;
		return 0;
	}
	if (u > INT64_MAX) {
		*r = save;
		return -1;
	}
	*v = (int64_t)u;
	return 0;
}

int
dmx_rd_uint(dmx_rd *r, uint64_t *v)
{
	dmx_rd save = *r;
	uint64_t u = 0;
	int64_t i = 0;
	int neg;

	if (rd_anyint(r, &neg, &u, &i) != 0)
		return -1;
	if (neg) {
		*r = save;
		return -1;
	}
	*v = u;
	return 0;
}

int
dmx_rd_str(dmx_rd *r, const char **s, uint32_t *len)
{
	size_t left = dmx_rd_left(r), h;
	uint32_t n;
	uint8_t t;

	if (left < 1)
		return -1;
	t = r->p[0];
	if ((t & 0xe0) == 0xa0) {
		h = 1; n = t & 0x1f;
	} else if (t == 0xd9 && left >= 2) {
		h = 2; n = r->p[1];
	} else if (t == 0xda && left >= 3) {
		h = 3; n = be16(r->p + 1);
	} else if (t == 0xdb && left >= 5) {
		h = 5; n = be32(r->p + 1);
	} else {
		return -1;
	}
	if (left - h < n)
		return -1;
	*s = (const char *)r->p + h;
	*len = n;
	r->p += h + n;
	return 0;
}

int
dmx_rd_is_nil(const dmx_rd *r)
{
	return dmx_rd_left(r) >= 1 && r->p[0] == 0xc0;
}

int
dmx_rd_is_array(const dmx_rd *r)
{
	uint8_t t;

	if (dmx_rd_left(r) < 1)
		return 0;
	t = r->p[0];
	return (t & 0xf0) == 0x90 || t == 0xdc || t == 0xdd;
}

int
dmx_rd_nil(dmx_rd *r)
{
	if (!dmx_rd_is_nil(r))
		return -1;
	r->p++;
	return 0;
}

int
dmx_rd_skip(dmx_rd *r)
{
	dmx_scan s = DMX_SCAN_INIT;
	size_t left = dmx_rd_left(r), len;

	if (left == 0 ||
	    dmx_scan_frame(&s, r->p, left, left, &len) != DMX_SCAN_FRAME)
		return -1;
	r->p += len;
	return 0;
}
