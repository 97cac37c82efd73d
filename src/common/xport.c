/*
 * xport.c - the plain transport: the descriptors as they are (see xport.h).
 */
#define _GNU_SOURCE
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

static ssize_t
plain_writev(dmx_xport *x, const struct iovec *iov, int n)
{
	struct msghdr mh;

	if (!x->is_sock)
		return writev(x->wfd, iov, n);
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
	"plain", plain_read, plain_writev, plain_shutdown, plain_free
};

dmx_xport *
dmx_xport_plain(int rfd, int wfd, int is_sock)
{
	dmx_xport *x = malloc(sizeof(*x));

	if (x == NULL)
		return NULL;
	x->ops = &plain_ops;
	x->rfd = rfd;
	x->wfd = wfd;
	x->is_sock = is_sock;
	return x;
}
