/*
 * tls_xport.c - the TLS transport (xport.h) over an OpenSSL session, for
 * demuxd's tls: listeners and libmux's tls: endpoints alike; see
 * tls_xport.h. OpenSSL is used because TLS is exactly the code a project
 * must not write itself.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "tls_xport.h"

typedef struct tls_xport {
	dmx_xport	 base;		/* first */
	SSL		*ssl;
	pthread_mutex_t	 mu;		/* one SSL call at a time */
	char		 gather[16384];	/* mu: small writes into one record */
} tls_xport;

#define GATHER	16384

void
dmx_tls_errors(char *buf, size_t len)
{
	unsigned long e;
	size_t n = 0;

	buf[0] = '\0';
	while ((e = ERR_get_error()) != 0 && n + 2 < len) {
		if (n > 0) {
			buf[n++] = ';';
			buf[n++] = ' ';
		}
		ERR_error_string_n(e, buf + n, len - n);
		n = strlen(buf);
	}
	if (n == 0)
		snprintf(buf, len, "no reason given");
}

/* ---- the transport ---- */

/* The reason of a failed read, for the message that reports the connection
 * lost: an alert the peer sent says more than ECONNRESET. */
static void
tls_why(dmx_xport *x)
{
	unsigned long e = ERR_peek_error();
	const char *r = ERR_reason_error_string(e);

	if (ERR_GET_REASON(e) == SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED)
		snprintf(x->why, sizeof(x->why), "the server requires a "
		    "client certificate (TLS alert)");
	else if (r != NULL)
		snprintf(x->why, sizeof(x->why), "TLS: %s", r);
}

/* As read(2): everything OpenSSL holds decrypted is taken, so that a
 * short count means the socket has nothing more (epoll will say when). */
static ssize_t
tls_read(dmx_xport *x, void *buf, size_t n)
{
	tls_xport *t = (tls_xport *)x;
	size_t total = 0;
	int r, e = 0;

	pthread_mutex_lock(&t->mu);
	while (total < n) {
		r = SSL_read(t->ssl, (char *)buf + total, (int)(n - total >
		    (1u << 30) ? 1u << 30 : n - total));
		if (r > 0) {
			total += (size_t)r;
			continue;
		}
		e = SSL_get_error(t->ssl, r);
		break;
	}
	pthread_mutex_unlock(&t->mu);
	if (total > 0)
		return (ssize_t)total;
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
		errno = EAGAIN;
		return -1;
	}
	if (e == SSL_ERROR_ZERO_RETURN)
		return 0;		/* close_notify: end of input */
	if (e == SSL_ERROR_SSL)
		tls_why(x);
	errno = ECONNRESET;
	ERR_clear_error();
	return -1;
}

static ssize_t
tls_writev(dmx_xport *x, const struct iovec *iov, int cnt)
{
	tls_xport *t = (tls_xport *)x;
	size_t total = 0, off;
	int i, r = 1, e = 0;
	sigset_t pipe_set, old;

	if (x->guard_sigpipe) {
		/* OpenSSL writes with write(2): a peer gone raises SIGPIPE,
		 * which a library must not let kill the application */
		sigemptyset(&pipe_set);
		sigaddset(&pipe_set, SIGPIPE);
		pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
	}
	pthread_mutex_lock(&t->mu);
	/* small replies are gathered into records of up to GATHER bytes: one
	 * SSL_write, one record, one syscall for many of them (as writev for
	 * the plain transport); a retry after EAGAIN passes the same bytes
	 * first, as OpenSSL requires */
	for (i = 0, off = 0; i < cnt && r > 0;) {
		const char *p;
		size_t n = 0;

		if (iov[i].iov_len - off >= GATHER) {
			p = (const char *)iov[i].iov_base + off;
			n = iov[i].iov_len - off;
			if (n > (1u << 30))
				n = 1u << 30;
		} else {
			int k = i;
			size_t o = off;

			while (k < cnt && n < GATHER) {
				size_t take = iov[k].iov_len - o;

				if (take > GATHER - n)
					take = GATHER - n;
				memcpy(t->gather + n, (const char *)iov[k].iov_base +
				    o, take);
				n += take;
				o += take;
				if (o == iov[k].iov_len) {
					k++;
					o = 0;
				}
			}
			p = t->gather;
		}
		if (n == 0) {
			i++;
			off = 0;
			continue;
		}
		r = SSL_write(t->ssl, p, (int)n);
		if (r <= 0) {
			e = SSL_get_error(t->ssl, r);
			break;
		}
		total += (size_t)r;
		/* step over what was written */
		for (size_t w = (size_t)r; w > 0 && i < cnt;) {
			size_t left = iov[i].iov_len - off;

			if (w < left) {
				off += w;
				w = 0;
			} else {
				w -= left;
				i++;
				off = 0;
			}
		}
		if ((size_t)r < n)
			break;		/* a partial write: the socket is full */
	}
	pthread_mutex_unlock(&t->mu);
	if (x->guard_sigpipe) {
		static const struct timespec zero = { 0, 0 };

		while (sigtimedwait(&pipe_set, NULL, &zero) > 0)
			;		/* the one our write raised, if any */
		pthread_sigmask(SIG_SETMASK, &old, NULL);
	}
	if (total > 0)
		return (ssize_t)total;
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
		errno = EAGAIN;
		return -1;
	}
	ERR_clear_error();
	errno = EPIPE;
	return -1;
}

static void
tls_shutdown(dmx_xport *x, int how)
{
	tls_xport *t = (tls_xport *)x;

	if (how == SHUT_WR || how == SHUT_RDWR) {
		pthread_mutex_lock(&t->mu);
		(void)SSL_shutdown(t->ssl);	/* close_notify, best effort */
		ERR_clear_error();
		pthread_mutex_unlock(&t->mu);
	}
	(void)shutdown(x->wfd, how);
}

static void
tls_free(dmx_xport *x)
{
	tls_xport *t = (tls_xport *)x;

	SSL_free(t->ssl);
	close(x->rfd);
	pthread_mutex_destroy(&t->mu);
	free(t);
}

/* Read ahead (SSL_CTX_set_read_ahead) may have taken the peer's first
 * request off the socket with the handshake's last flight. */
static int
tls_pending(dmx_xport *x)
{
	tls_xport *t = (tls_xport *)x;
	int r;

	pthread_mutex_lock(&t->mu);
	r = SSL_has_pending(t->ssl);
	pthread_mutex_unlock(&t->mu);
	return r;
}

static const dmx_xport_ops tls_ops = {
	"tls", tls_read, tls_writev, tls_shutdown, tls_free, tls_pending
};

dmx_xport *
dmx_tls_xport(void *ssl_ctx, int fd, int server)
{
	tls_xport *t = calloc(1, sizeof(*t));

	if (t == NULL || (t->ssl = SSL_new(ssl_ctx)) == NULL ||
	    SSL_set_fd(t->ssl, fd) != 1) {
		if (t != NULL)
			SSL_free(t->ssl);
		free(t);
		close(fd);
		ERR_clear_error();
		return NULL;
	}
	if (server)
		SSL_set_accept_state(t->ssl);
	else
		SSL_set_connect_state(t->ssl);
	pthread_mutex_init(&t->mu, NULL);
	t->base.ops = &tls_ops;
	t->base.rfd = t->base.wfd = fd;
	t->base.is_sock = 1;
	return &t->base;
}

void *
dmx_tls_ssl(dmx_xport *x)
{
	return ((tls_xport *)x)->ssl;
}

int
dmx_tls_step(dmx_xport *x, uint32_t *events, char *err, size_t errlen)
{
	tls_xport *t = (tls_xport *)x;
	int r = SSL_do_handshake(t->ssl), e;
	long v;

	if (r == 1)
		return 1;
	e = SSL_get_error(t->ssl, r);
	if (e == SSL_ERROR_WANT_READ) {
		*events = EPOLLIN;
		return 0;
	}
	if (e == SSL_ERROR_WANT_WRITE) {
		*events = EPOLLOUT;
		return 0;
	}
	v = SSL_get_verify_result(t->ssl);
	if (v != X509_V_OK)
		snprintf(err, errlen, "%s certificate refused: %s",
		    SSL_is_server(t->ssl) ? "client" : "server",
		    X509_verify_cert_error_string(v));
	else if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
		snprintf(err, errlen, "the peer closed the connection during "
		    "the handshake");
	else
		dmx_tls_errors(err, errlen);
	ERR_clear_error();
	return -1;
}

void
dmx_tls_identity(dmx_xport *x, char *buf, size_t len)
{
	tls_xport *t = (tls_xport *)x;
	X509 *peer = SSL_get1_peer_certificate(t->ssl);
	char cn[256];

	snprintf(buf, len, "anonymous");
	if (peer == NULL)
		return;
	if (SSL_get_verify_result(t->ssl) == X509_V_OK &&
	    X509_NAME_get_text_by_NID(X509_get_subject_name(peer),
	    NID_commonName, cn, sizeof(cn)) > 0)
		snprintf(buf, len, "cert:%s", cn);
	X509_free(peer);
}
