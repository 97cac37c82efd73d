/*
 * text.c - see text.h.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text.h"

size_t
dmx_utf8_cut(const char *s, size_t len, size_t max)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t n = len < max ? len : max, i;

	if (n == len)
		return n;
	/* s[n] is the first byte cut off: back up over continuation bytes to
	 * the start of its character */
	for (i = n; i > 0 && i > n - 4 && (u[i] & 0xc0) == 0x80; i--)
		;
	return (u[i] & 0xc0) == 0x80 ? n : i;
}

size_t
dmx_escape(char *dst, size_t cap, const char *s, size_t len, size_t max)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i, n = 0, take = dmx_utf8_cut(s, len, max);

	if (cap == 0)
		return 0;
	for (i = 0; i < take; i++) {
		if (u[i] <= 0x20 || u[i] == 0x7f || u[i] == '\\' ||
		    u[i] == '"') {
			if (n + 4 >= cap)
				break;
			snprintf(dst + n, cap - n, "\\x%02x", u[i]);
			n += 4;
		} else {
			if (n + 1 >= cap)
				break;
			dst[n++] = (char)u[i];
		}
	}
	if (i < len && n + 3 < cap) {
		memcpy(dst + n, "...", 3);
		n += 3;
	}
	dst[n] = 0;
	return n;
}

char *
dmx_strndup(const char *s, size_t len)
{
	char *p = malloc(len + 1);

	if (p != NULL) {
		memcpy(p, s, len);
		p[len] = '\0';
	}
	return p;
}
