/*
 * uri.h - transport addresses: "unix:PATH" and "tcp:HOST:PORT".
 *
 * HOST is a name, an IPv4 literal or a bracketed IPv6 literal ("tcp:[::1]:7411").
 * Both sides use these: demuxd to listen, libmux to connect. Errors are written
 * to a caller's buffer (may be NULL) as a full sentence naming the address.
 */
#ifndef DMX_URI_H
#define DMX_URI_H

#include <stddef.h>

enum dmx_uri_kind { DMX_URI_UNIX = 1, DMX_URI_TCP = 2 };

typedef struct dmx_uri {
	enum dmx_uri_kind kind;
	char path[108];		/* unix: the socket path (sun_path size) */
	char host[256];		/* tcp: without brackets */
	char port[16];		/* tcp */
	int  reuseport;		/* tcp listen: SO_REUSEPORT (several demuxd
				 * processes on one port) */
	int  tls;		/* "tls:HOST:PORT": tcp, then TLS */
} dmx_uri;

/* Returns 0, or -1 with a message in err. */
int dmx_uri_parse(const char *s, dmx_uri *u, char *err, size_t errlen);

/* Bind and listen; returns a non-blocking, close-on-exec fd or -1 with err.
 * A unix socket file left by a dead server is replaced; one that a live
 * server still answers on is not (EADDRINUSE). */
int dmx_uri_listen(const dmx_uri *u, int backlog, char *err, size_t errlen);

/* Connect, giving up after timeout_ms (<= 0: no limit of our own); returns a
 * close-on-exec fd or -1 with err. TCP sockets get TCP_NODELAY (every message
 * is a complete unit, Nagle only adds delay) and keepalive probes. */
int dmx_uri_connect(const dmx_uri *u, int timeout_ms, char *err,
    size_t errlen);

#endif
