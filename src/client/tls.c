/*
 * tls.c - libmux's tls: endpoints: the handle's client context (the CA to
 * verify servers with, our certificate if any) and connecting one endpoint
 * (TCP, then a handshake within connect_timeout_ms, verifying the server's
 * certificate and its name). The session is a common/tls_xport.c
 * transport, like demuxd's.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "../common/clock.h"
#include "../common/tls_xport.h"
#include "handle.h"

int
mh_tls_init(mux_t *m, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	char why[512];
	const char *what = "out of memory";

	if (ctx == NULL)
		goto fail;
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION |
	    SSL_OP_NO_COMPRESSION);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
	    SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	/* read what the socket has, not one record's header and then its
	 * body: two read(2)s per record otherwise */
	SSL_CTX_set_read_ahead(ctx, 1);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	what = "tls_ca";
	if ((m->tls_ca != NULL ? SSL_CTX_load_verify_locations(ctx, m->tls_ca,
	    NULL) : SSL_CTX_set_default_verify_paths(ctx)) != 1)
		goto fail;
	if (m->tls_cert != NULL) {
		what = "tls_cert";
		if (SSL_CTX_use_certificate_chain_file(ctx, m->tls_cert) != 1)
			goto fail;
		what = "tls_key";
		if (SSL_CTX_use_PrivateKey_file(ctx, m->tls_key ? m->tls_key :
		    m->tls_cert, SSL_FILETYPE_PEM) != 1 ||
		    SSL_CTX_check_private_key(ctx) != 1)
			goto fail;
	}
	m->tls_ctx = ctx;
	return 0;
fail:
	dmx_tls_errors(why, sizeof(why));
	mh_set_err(err, errlen, "%s: %s", what, why);
	SSL_CTX_free(ctx);
	return -1;
}

void
mh_tls_fini(mux_t *m)
{
	SSL_CTX_free(m->tls_ctx);
	m->tls_ctx = NULL;
}

dmx_xport *
mh_tls_connect(mux_t *m, mh_ep *ep, int fd, char *err, size_t errlen)
{
	const char *name = m->tls_server_name ? m->tls_server_name :
	    ep->addr.host;
	unsigned char ip[16];
	uint64_t deadline = dmx_now_ns() + (uint64_t)(m->opt.connect_timeout_ms >
	    0 ? m->opt.connect_timeout_ms : 2000) * 1000000u;
	dmx_xport *x;
	SSL *ssl;
	char why[512];
	uint32_t want = 0;
	int rc;

	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	if ((x = dmx_tls_xport(m->tls_ctx, fd, 0)) == NULL) {
		mh_set_err(err, errlen, "tls: out of memory");
		return NULL;
	}
	x->guard_sigpipe = 1;
	ssl = dmx_tls_ssl(x);
	/* the certificate must be for the name we asked for: a host name,
	 * or an address */
	if (inet_pton(AF_INET, name, ip) == 1 ||
	    inet_pton(AF_INET6, name, ip) == 1) {
		X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name);
	} else {
		SSL_set_tlsext_host_name(ssl, name);
		SSL_set1_host(ssl, name);
	}
	while ((rc = dmx_tls_step(x, &want, why, sizeof(why))) == 0) {
		struct pollfd p = { fd, (short)(want & 1 ? POLLIN : POLLOUT),
		    0 };
		uint64_t now = dmx_now_ns();

		if (now >= deadline) {
			snprintf(why, sizeof(why), "not done within "
			    "connect_timeout_ms");
			rc = -1;
			break;
		}
		(void)poll(&p, 1, (int)((deadline - now) / 1000000u) + 1);
	}
	if (rc < 0) {
		mh_set_err(err, errlen, "tls:%s:%s: handshake failed: %s",
		    ep->addr.host, ep->addr.port, why);
		dmx_xport_free(x);
		return NULL;
	}
	return x;
}
