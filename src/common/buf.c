/*
 * buf.c - growable byte buffer; see buf.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

int
dmx_buf_reserve(dmx_buf *b, size_t more)
{
	size_t need, cap;
	char *p;

	if (more > SIZE_MAX - b->len) {
		errno = ENOMEM;
		return -1;
	}
	need = b->len + more;
	if (need <= b->cap)
		return 0;
	/* the first allocation is exact (rounded to 16): many buffers hold
	 * one message and never grow */
	cap = b->cap ? b->cap : (need + 15) & ~(size_t)15;
	while (cap < need)
		cap = cap > SIZE_MAX / 2 ? need : cap * 2;
	p = realloc(b->data, cap);
	if (p == NULL)
		return -1;
	b->data = p;
	b->cap = cap;
	return 0;
}

int
dmx_buf_append(dmx_buf *b, const void *p, size_t n)
{
	if (n == 0)
		return 0;
	if (dmx_buf_reserve(b, n) != 0)
		return -1;
	memcpy(b->data + b->len, p, n);
	b->len += n;
	return 0;
}

void
dmx_buf_consume(dmx_buf *b, size_t n)
{
	if (n >= b->len) {
		b->len = 0;
		return;
	}
	memmove(b->data, b->data + n, b->len - n);
	b->len -= n;
}

void
dmx_buf_release(dmx_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

void
dmx_buf_shrink(dmx_buf *b, size_t keep)
{
	char *p;

	if (b->cap <= keep || b->len > keep)
		return;
	if (b->len == 0) {
		dmx_buf_release(b);
		return;
	}
	p = realloc(b->data, keep);
	if (p != NULL) {
		b->data = p;
		b->cap = keep;
	}
}

int
dmx_buf_pack_write(void *data, const char *p, size_t n)
{
	return dmx_buf_append(data, p, n);
}
