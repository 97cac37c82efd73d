/*
 * tls.c - the server's TLS context; see tls.h. The transport itself is
 * common/tls_xport.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "../common/tls_xport.h"
#include "tls.h"

struct dmx_tls_ctx {
	SSL_CTX		*ctx;
};

dmx_tls_ctx *
dmx_tls_ctx_new(const dmx_config *cfg, char *err, size_t errlen)
{
	const dmx_conf_tls *c = &cfg->tls;
	dmx_tls_ctx *t = calloc(1, sizeof(*t));
	char why[512];
	const char *what = "out of memory", *file = NULL;
	int mode;

	if (t == NULL || (t->ctx = SSL_CTX_new(TLS_server_method())) == NULL)
		goto fail;
	what = "tls: min_version";
	if (!SSL_CTX_set_min_proto_version(t->ctx, c->min_version == 13 ?
	    TLS1_3_VERSION : TLS1_2_VERSION))
		goto fail;
	SSL_CTX_set_options(t->ctx, SSL_OP_NO_RENEGOTIATION |
	    SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_mode(t->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
	    SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
	/* read what the socket has, not one record's header and then its
	 * body: two read(2)s per record otherwise */
	SSL_CTX_set_read_ahead(t->ctx, 1);
	what = "tls: cert";
	file = c->cert;
	if (SSL_CTX_use_certificate_chain_file(t->ctx, c->cert) != 1)
		goto fail;
	what = "tls: key";
	file = c->key;
	if (SSL_CTX_use_PrivateKey_file(t->ctx, c->key, SSL_FILETYPE_PEM) != 1)
		goto fail;
	what = "tls: key does not match cert";
	file = c->key;
	if (SSL_CTX_check_private_key(t->ctx) != 1)
		goto fail;
	if (c->ca != NULL) {
		STACK_OF(X509_NAME) *names;

		what = "tls: ca";
		file = c->ca;
		if (SSL_CTX_load_verify_locations(t->ctx, c->ca, NULL) != 1)
			goto fail;
		if ((names = SSL_load_client_CA_file(c->ca)) != NULL)
			SSL_CTX_set_client_CA_list(t->ctx, names);
	}
	mode = c->client_auth == DMX_TLS_AUTH_REQUIRE ? SSL_VERIFY_PEER |
	    SSL_VERIFY_FAIL_IF_NO_PEER_CERT : c->client_auth ==
	    DMX_TLS_AUTH_OPTIONAL ? SSL_VERIFY_PEER : SSL_VERIFY_NONE;
	SSL_CTX_set_verify(t->ctx, mode, NULL);
	/* no session tickets or cache to protect across reloads: every
	 * handshake is full, and a rotated certificate applies at once */
	SSL_CTX_set_session_cache_mode(t->ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_num_tickets(t->ctx, 0);
	return t;
fail:
	dmx_tls_errors(why, sizeof(why));
	snprintf(err, errlen, "%s:%d:%d: %s%s%s: %s", cfg->file ? cfg->file :
	    "", c->line, c->col, what, file ? " " : "", file ? file : "", why);
	dmx_tls_ctx_free(t);
	return NULL;
}

void
dmx_tls_ctx_free(dmx_tls_ctx *t)
{
	if (t == NULL)
		return;
	SSL_CTX_free(t->ctx);
	free(t);
}

dmx_xport *
dmx_tls_accept(dmx_tls_ctx *t, int fd)
{
	return dmx_tls_xport(t->ctx, fd, 1);
}
