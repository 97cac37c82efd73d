/*
 * xport.h - the transport seam: every byte a connection reads or writes,
 * on the server and in libmux, goes through one of these.
 *
 * A transport owns a connection's descriptors (rfd and wfd are the same
 * but for a pipe pair) and moves bytes over them; the connection above it
 * frames, multiplexes and waits for readiness. Two implement it: plain
 * (read(2), and sendmsg(2) with MSG_NOSIGNAL on a socket; xport.c) and TLS
 * (the same calls over an OpenSSL session; tls_xport.c).
 *
 * Contract, the same for every implementation:
 * - read and writev return what read(2) and writev(2) would: a count,
 *   0 for end of input (read), or -1 with errno (EAGAIN when they would
 *   block on a non-blocking descriptor). Short writes are normal. A read
 *   that fails for a reason errno cannot say (a TLS alert) leaves it in
 *   why, for the message that reports the connection lost.
 * - One thread at a time reads and one at a time writes, but a read and a
 *   write may run at once (the server's I/O thread reads while a worker
 *   writes): an implementation whose session state is shared by both
 *   directions (TLS) serialises them itself.
 * - shutdown(SHUT_WR) tells the peer no more is coming; on what is not a
 *   socket it does nothing. free closes the descriptors and frees x.
 */
#ifndef DMX_XPORT_H
#define DMX_XPORT_H

#include <sys/types.h>
#include <sys/uio.h>

typedef struct dmx_xport dmx_xport;

typedef struct dmx_xport_ops {
	const char *name;		/* "plain", ... */
	ssize_t	  (*read)(dmx_xport *x, void *buf, size_t n);
	ssize_t	  (*writev)(dmx_xport *x, const struct iovec *iov, int n);
	void	  (*shutdown)(dmx_xport *x, int how);
	void	  (*free)(dmx_xport *x);
	/* whether bytes already taken off the descriptor wait to be read
	 * (TLS reads ahead): poll will not report them. NULL: never */
	int	  (*pending)(dmx_xport *x);
} dmx_xport_ops;

struct dmx_xport {
	const dmx_xport_ops *ops;
	int		 rfd, wfd;	/* for the caller's poll/epoll */
	int		 is_sock;	/* a socket: shutdown and lingering
					 * close apply */
	int		 guard_sigpipe;	/* a library may not ignore SIGPIPE for
					 * the process: block it around writes to
					 * a pipe, and consume the one raised */
	char		 why[96];	/* the reading thread's: the last failed
					 * read's reason beyond errno, or "" */
};

/* Why the last read failed: why, or errno's text. */
const char *dmx_xport_why(const dmx_xport *x, int err);

/* A plain transport over rfd/wfd (taken on success: closed by free),
 * guard_sigpipe off. NULL without memory (the descriptors are left alone). */
dmx_xport *dmx_xport_plain(int rfd, int wfd, int is_sock);

static inline ssize_t
dmx_xport_read(dmx_xport *x, void *buf, size_t n)
{
	return x->ops->read(x, buf, n);
}

static inline ssize_t
dmx_xport_writev(dmx_xport *x, const struct iovec *iov, int n)
{
	return x->ops->writev(x, iov, n);
}

static inline void
dmx_xport_shutdown(dmx_xport *x, int how)
{
	x->ops->shutdown(x, how);
}

/* Nonzero if a read would return data the descriptor no longer shows: read
 * before waiting for readiness (after a handshake, say). */
static inline int
dmx_xport_pending(dmx_xport *x)
{
	return x->ops->pending != NULL && x->ops->pending(x);
}

/* NULL is a no-op. */
static inline void
dmx_xport_free(dmx_xport *x)
{
	if (x != NULL)
		x->ops->free(x);
}

#endif
