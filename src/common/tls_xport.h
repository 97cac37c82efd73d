/*
 * tls_xport.h - the TLS transport (xport.h), shared by demuxd's tls:
 * listeners (server/tls.c) and libmux's tls: endpoints (client/tls.c).
 *
 * The session's SSL_read and SSL_write are serialised by a lock of the
 * transport's own: the server's I/O thread reads while a worker writes,
 * and one SSL object must not be used by two threads at once. read takes
 * everything OpenSSL holds decrypted, so that a short count means the
 * socket has nothing more (poll/epoll says when it has). With
 * guard_sigpipe set (libmux), SIGPIPE is blocked around writes.
 */
#ifndef DMX_TLS_XPORT_H
#define DMX_TLS_XPORT_H

#include <stddef.h>
#include <stdint.h>

#include "xport.h"

/* A TLS transport over socket fd (taken) for an SSL_CTX (ssl_ctx, an
 * SSL_CTX *), as the server or the client side; the handshake is still to
 * do. NULL without memory (fd is closed). */
dmx_xport *dmx_tls_xport(void *ssl_ctx, int fd, int server);
/* The client side's SSL object, to set the names to verify before the
 * handshake (an SSL *). */
void	*dmx_tls_ssl(dmx_xport *x);
/* Advance the handshake: 1 done, 0 not yet (*events: EPOLLIN or EPOLLOUT
 * to wait for), -1 failed (why in err). Never blocks. */
int	 dmx_tls_step(dmx_xport *x, uint32_t *events, char *err,
	    size_t errlen);
/* After the handshake: "cert:CN" for a verified peer certificate, else
 * "anonymous", into buf. */
void	 dmx_tls_identity(dmx_xport *x, char *buf, size_t len);
/* OpenSSL's queued reasons, oldest first, into buf (and cleared). */
void	 dmx_tls_errors(char *buf, size_t len);

#endif
