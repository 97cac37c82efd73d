/*
 * tls.h - TLS for tls: listeners, with OpenSSL 3: the server context of a
 * configuration, and a transport (common/xport.h) over an SSL session.
 *
 * A context is built from the tls: section at start-up and on every reload
 * (SIGHUP), so certificate, key and CA are re-read; a connection keeps the
 * context it was accepted with for its whole life (OpenSSL counts the
 * references). TLS 1.2 or newer, no renegotiation, no compression.
 *
 * An accepted connection first completes its handshake (dmx_tls_step, on
 * the I/O thread, never blocking); only then is it a connection. The
 * transport serialises SSL_read and SSL_write with a lock of its own: the
 * I/O thread reads while a worker writes, and one SSL object must not be
 * used by two threads at once.
 */
#ifndef DMX_TLS_H
#define DMX_TLS_H

#include <stddef.h>
#include <stdint.h>

#include "../common/tls_xport.h"
#include "../common/xport.h"
#include "config.h"

typedef struct dmx_tls_ctx dmx_tls_ctx;

/* Returns NULL with "FILE:LINE:COL: tls: ..." in err. */
dmx_tls_ctx *dmx_tls_ctx_new(const dmx_config *cfg, char *err,
    size_t errlen);
void	 dmx_tls_ctx_free(dmx_tls_ctx *t);	/* NULL is a no-op */

/* A TLS transport over accepted socket fd (taken), handshake pending.
 * NULL without memory (fd is closed). */
dmx_xport *dmx_tls_accept(dmx_tls_ctx *t, int fd);

#endif
