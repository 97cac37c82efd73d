/*
 * buf.h - a growable byte buffer shared by demuxd and libmux.
 *
 * A dmx_buf owns its memory. Growth is geometric so that appending many small
 * pieces costs amortised O(1); dmx_buf_reserve() fails instead of growing past
 * SIZE_MAX. The msgpack-c packer writes into one through dmx_buf_pack_write().
 */
#ifndef DMX_BUF_H
#define DMX_BUF_H

#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

typedef struct dmx_buf {
	char   *data;
	size_t  len;	/* bytes in use */
	size_t  cap;	/* bytes allocated */
} dmx_buf;

#define DMX_BUF_INIT { NULL, 0, 0 }

/* Ensure room for `more` bytes beyond len. Returns 0, or -1 (ENOMEM). */
int  dmx_buf_reserve(dmx_buf *b, size_t more);
/* Append n bytes. Returns 0, or -1 (ENOMEM); the buffer is unchanged on failure. */
int  dmx_buf_append(dmx_buf *b, const void *p, size_t n);
/* Drop the first n bytes, moving the rest to the front. */
void dmx_buf_consume(dmx_buf *b, size_t n);
/* Free the memory and reset to empty. */
void dmx_buf_release(dmx_buf *b);
/* Keep the contents but give back memory if cap is above `keep`
 * (used when a buffer that grew for one large message goes back to a free list). */
void dmx_buf_shrink(dmx_buf *b, size_t keep);

/* A msgpack_packer_write callback: `data` is a dmx_buf *. */
int  dmx_buf_pack_write(void *data, const char *p, size_t n);

/* Pack a NUL-terminated string (NULL packs ""). */
static inline void
dmx_pack_cstr(msgpack_packer *pk, const char *s)
{
	size_t n = s ? __builtin_strlen(s) : 0;

	msgpack_pack_str(pk, n);
	msgpack_pack_str_body(pk, s ? s : "", n);
}

#endif
