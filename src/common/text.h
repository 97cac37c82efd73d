/*
 * text.h - putting peer-supplied strings into logs and messages safely.
 *
 * A method name comes from the network: it may hold control characters (a
 * "\n" in it would forge a log line) and need not be valid UTF-8. Everything
 * a peer sent goes through dmx_escape before it reaches a log, and through
 * dmx_utf8_cut before it is cut to fit a message that a client decodes as a
 * string (cutting inside a character makes strict decoders fail).
 */
#ifndef DMX_TEXT_H
#define DMX_TEXT_H

#include <stddef.h>

/* The longest prefix of s[0..len), at most max bytes, that does not end in
 * the middle of a UTF-8 sequence. */
size_t dmx_utf8_cut(const char *s, size_t len, size_t max);

/* Copy s[0..len) into dst (cap bytes, NUL-terminated), with every control
 * byte (below 0x20, 0x7f), space (log fields are space-separated),
 * backslash and double quote written as \xHH;
 * other bytes as they are. At most max source bytes are taken, cut on a
 * character boundary (then "..." follows); stops early when dst is full.
 * Returns the length written. */
size_t dmx_escape(char *dst, size_t cap, const char *s, size_t len,
    size_t max);

/* A NUL-terminated copy of s[0..len) (a msgpack string is not one), from
 * malloc; NULL without memory. */
char *dmx_strndup(const char *s, size_t len);

#endif
