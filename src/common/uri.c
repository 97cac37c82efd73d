/*
 * uri.c - parse transport addresses, listen on and connect to them; see uri.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "uri.h"

static int
fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err != NULL && errlen > 0) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return -1;
}

int
dmx_uri_parse(const char *s, dmx_uri *u, char *err, size_t errlen)
{
	const char *hp, *colon;
	size_t hl;

	memset(u, 0, sizeof(*u));
	if (strncmp(s, "unix:", 5) == 0) {
		if (s[5] == '\0')
			return fail(err, errlen, "'%s': empty socket path", s);
		if (strlen(s + 5) >= sizeof(u->path))
			return fail(err, errlen,
			    "'%s': socket path longer than %zu bytes", s,
			    sizeof(u->path) - 1);
		u->kind = DMX_URI_UNIX;
		strcpy(u->path, s + 5);
		return 0;
	}
	if (strncmp(s, "tcp:", 4) != 0 && strncmp(s, "tls:", 4) != 0)
		return fail(err, errlen,
		    "'%s': address must start with unix:, tcp: or tls:", s);
	hp = s + 4;
	if (*hp == '[') {
		const char *rb = strchr(hp, ']');

		if (rb == NULL || rb[1] != ':')
			return fail(err, errlen,
			    "'%s': IPv6 address must be written [ADDR]:PORT", s);
		hl = (size_t)(rb - hp - 1);
		hp++;
		colon = rb + 1;
	} else {
		colon = strrchr(hp, ':');
		if (colon == NULL)
			return fail(err, errlen, "'%s': missing :PORT", s);
		hl = (size_t)(colon - hp);
		if (memchr(hp, ':', hl) != NULL)
			return fail(err, errlen,
			    "'%s': IPv6 address must be written [ADDR]:PORT", s);
	}
	if (hl == 0 || hl >= sizeof(u->host))
		return fail(err, errlen, "'%s': bad host", s);
	if (colon[1] == '\0' || strlen(colon + 1) >= sizeof(u->port) ||
	    strspn(colon + 1, "0123456789") != strlen(colon + 1))
		return fail(err, errlen, "'%s': bad port", s);
	u->kind = DMX_URI_TCP;
	u->tls = s[1] == 'l';
	memcpy(u->host, hp, hl);
	strcpy(u->port, colon + 1);
	return 0;
}

static int
unix_addr(const dmx_uri *u, struct sockaddr_un *sa)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	memcpy(sa->sun_path, u->path, strlen(u->path) + 1);
	return 0;
}

/* True if something accepts connections on the unix socket path. */
static int
unix_alive(const struct sockaddr_un *sa)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), alive;

	if (fd < 0)
		return 0;
	alive = connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0;
	close(fd);
	return alive;
}

/*
 * connect() that gives up after timeout_ms (<= 0: the kernel's own limit):
 * a host that vanished must not hold up a client's reconnect loop for the
 * minutes of SYN retries.
 */
static int
connect_within(int fd, const struct sockaddr *sa, socklen_t len, int timeout_ms)
{
	struct pollfd pfd;
	socklen_t el = sizeof(int);
	int fl, e = 0, r;

	if (timeout_ms <= 0)
		return connect(fd, sa, len);
	fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0)
		return -1;
	if (connect(fd, sa, len) != 0) {
		if (errno != EINPROGRESS)
			return -1;
		pfd.fd = fd;
		pfd.events = POLLOUT;
		do
			r = poll(&pfd, 1, timeout_ms);
		while (r < 0 && errno == EINTR);
		if (r == 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		if (r < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) != 0)
			return -1;
		if (e != 0) {
			errno = e;
			return -1;
		}
	}
	return fcntl(fd, F_SETFL, fl);
}

/*
 * Resolve a tcp address and bind (passive) or connect to the first address
 * that works. Returns the fd, or -1 with err naming the step that failed.
 */
static int
tcp_open(const dmx_uri *u, int passive, int timeout_ms, char *err,
    size_t errlen)
{
	struct addrinfo hints, *ai, *a;
	int fd = -1, rc, e = 0, one = 1;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = passive ? AI_PASSIVE : 0;
	rc = getaddrinfo(u->host, u->port, &hints, &ai);
	if (rc != 0)
		return fail(err, errlen, "tcp:%s:%s: %s", u->host, u->port,
		    gai_strerror(rc));
	for (a = ai; a != NULL; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC |
		    (passive ? SOCK_NONBLOCK : 0), 0);
		if (fd < 0) {
			e = errno;
			continue;
		}
		if (passive) {
			setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one,
			    sizeof(one));
			if (u->reuseport)
				setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one,
				    sizeof(one));
		}
		if ((passive ? bind(fd, a->ai_addr, a->ai_addrlen) :
		    connect_within(fd, a->ai_addr, a->ai_addrlen,
		    timeout_ms)) == 0)
			break;
		e = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	if (fd < 0)
		return fail(err, errlen, "tcp:%s:%s: %s: %s", u->host, u->port,
		    passive ? "bind" : "connect", strerror(e));
	if (!passive) {
		/* a peer host that vanishes without a RST is found by
		 * keepalive probes: idle 10 s, then 3 probes 5 s apart */
		int idle = 10, intvl = 5, cnt = 3;

		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl,
		    sizeof(intvl));
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
	}
	return fd;
}

int
dmx_uri_listen(const dmx_uri *u, int backlog, char *err, size_t errlen)
{
	int fd = -1, e;

	if (u->kind == DMX_URI_UNIX) {
		struct sockaddr_un sa;

		unix_addr(u, &sa);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
		    0);
		if (fd < 0)
			return fail(err, errlen, "unix:%s: socket: %s", u->path,
			    strerror(errno));
		if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
			e = errno;
			if (e == EADDRINUSE && !unix_alive(&sa)) {
				/* a stale file from a server that died: replace it */
				unlink(u->path);
				if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
					goto listen;
				e = errno;
			}
			close(fd);
			return fail(err, errlen, "unix:%s: bind: %s", u->path,
			    e == EADDRINUSE ? "a server is already listening there" :
			    strerror(e));
		}
	} else if ((fd = tcp_open(u, 1, 0, err, errlen)) < 0) {
		return -1;
	}
listen:
	if (listen(fd, backlog) != 0) {
		e = errno;
		close(fd);
		return fail(err, errlen, "listen: %s", strerror(e));
	}
	return fd;
}

int
dmx_uri_connect(const dmx_uri *u, int timeout_ms, char *err, size_t errlen)
{
	int fd, e;

	if (u->kind == DMX_URI_UNIX) {
		struct sockaddr_un sa;

		unix_addr(u, &sa);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return fail(err, errlen, "unix:%s: socket: %s", u->path,
			    strerror(errno));
		/* a server that stopped accepting leaves its backlog full: a
		 * blocking connect would wait for it without end */
		if (connect_within(fd, (struct sockaddr *)&sa, sizeof(sa),
		    timeout_ms) != 0) {
			e = errno;
			close(fd);
			return fail(err, errlen, "unix:%s: connect: %s", u->path,
			    e == EAGAIN ? "the server's backlog is full (it "
			    "does not accept)" : strerror(e));
		}
		return fd;
	}
	return tcp_open(u, 0, timeout_ms, err, errlen);
}
