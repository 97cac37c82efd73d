/*
 * xport.c - the plain transport: the descriptors as they are (see xport.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "xport.h"

static ssize_t
plain_read(dmx_xport *x, void *buf, size_t n)
{
	return read(x->rfd, buf, n);
}

/*
 * A pipe to a peer that died raises SIGPIPE. demuxd ignores it; a library
 * must not change the process's disposition, so it blocks it in this
 * thread around the write and consumes the one the write raised.
 */
static ssize_t
pipe_writev(dmx_xport *x, const struct iovec *iov, int n)
{
	static const struct timespec zero = { 0, 0 };
	sigset_t pipe_set, old;
	ssize_t r;
	int e;

	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
	r = writev(x->wfd, iov, n);
	e = errno;
	if (r < 0 && e == EPIPE)
		while (sigtimedwait(&pipe_set, NULL, &zero) < 0 &&
		    errno == EINTR)
			;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	errno = e;
	return r;
}

static ssize_t
plain_writev(dmx_xport *x, const struct iovec *iov, int n)
{
	struct msghdr mh;

	if (!x->is_sock)
		return x->guard_sigpipe ? pipe_writev(x, iov, n) :
		    writev(x->wfd, iov, n);
	/* a peer that went away is an error here, never SIGPIPE */
	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = (struct iovec *)iov;
	mh.msg_iovlen = (size_t)n;
	return sendmsg(x->wfd, &mh, MSG_NOSIGNAL);
}

static void
plain_shutdown(dmx_xport *x, int how)
{
	if (x->is_sock)
		(void)shutdown(x->wfd, how);
}

static void
plain_free(dmx_xport *x)
{
	if (x->wfd != x->rfd && x->wfd >= 0)
		close(x->wfd);
	if (x->rfd >= 0)
		close(x->rfd);
	free(x);
}

static const dmx_xport_ops plain_ops = {
	"plain", plain_read, plain_writev, plain_shutdown, plain_free, NULL
};

dmx_xport *
dmx_xport_plain(int rfd, int wfd, int is_sock)
{
	dmx_xport *x = calloc(1, sizeof(*x));	/* guard_sigpipe off, why "" */

	if (x == NULL)
		return NULL;
	x->ops = &plain_ops;
	x->rfd = rfd;
	x->wfd = wfd;
	x->is_sock = is_sock;
	return x;
}

const char *
dmx_xport_why(const dmx_xport *x, int err)
{
	return x->why[0] != '\0' ? x->why : strerror(err);
}
