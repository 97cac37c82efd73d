/*
 * listen.c - the server's listeners: opening them (unix sockets' mode and
 * group), accepting (shedding load when out of descriptors, refusing past
 * max_connections), who each peer is, TLS handshakes before a tls:
 * connection exists, and making the listeners match a reloaded
 * configuration. Everything here runs on the I/O thread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include "../common/wire.h"
#include "../common/xport.h"
#include "access.h"
#include "log.h"
#include "server_impl.h"

static void on_listener(dmx_io *io, uint32_t events);

/* Open one listener; -1 with err. */
/* A unix socket's mode and group (unix_mode, unix_group); -1 with err. */
static int
unix_perms(const dmx_uri *u, const dmx_config *cfg, char *err, size_t errlen)
{
	struct group gr, *res = NULL;
	char buf[4096];

	if (chmod(u->path, cfg->unix_mode) != 0) {
		snprintf(err, errlen, "chmod %s: %s", u->path, strerror(errno));
		return -1;
	}
	if (cfg->unix_group == NULL)
		return 0;
	if (getgrnam_r(cfg->unix_group, &gr, buf, sizeof(buf), &res) != 0 ||
	    res == NULL) {
		snprintf(err, errlen, "unix_group: no such group '%s'",
		    cfg->unix_group);
		return -1;
	}
	if (chown(u->path, (uid_t)-1, res->gr_gid) != 0) {
		snprintf(err, errlen, "chown %s to group %s: %s", u->path,
		    cfg->unix_group, strerror(errno));
		return -1;
	}
	return 0;
}

static int
is_loopback(const char *host)
{
	return strncmp(host, "127.", 4) == 0 || strcmp(host, "::1") == 0 ||
	    strcmp(host, "localhost") == 0;
}

static dmx_listener *
listener_open(dmx_server *s, const char *text, const dmx_config *cfg,
    char *err, size_t errlen)
{
	dmx_listener *l = calloc(1, sizeof(*l));
	int fd = -1;

	if (l == NULL || (l->text = strdup(text)) == NULL) {
		free(l);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	l->srv = s;
	l->io.on_ready = on_listener;
	if (dmx_uri_parse(l->text, &l->uri, err, errlen) == 0) {
		l->uri.reuseport = cfg->reuse_port;
		fd = dmx_uri_listen(&l->uri, 1024, err, errlen);
	}
	if (fd >= 0 && l->uri.kind == DMX_URI_UNIX &&
	    unix_perms(&l->uri, cfg, err, errlen) != 0) {
		close(fd);
		unlink(l->uri.path);
		fd = -1;
	}
	l->io.rfd = l->io.wfd = fd;
	if (fd >= 0 && dmx_loop_watch(s->loop, &l->io, EPOLLIN) != 0) {
		snprintf(err, errlen, "epoll_ctl: %s", strerror(errno));
		close(fd);
		fd = -1;
	}
	if (fd < 0) {
		free(l->text);
		free(l);
		return NULL;
	}
	dmx_info("listening on %s", l->text);
	if (l->uri.kind == DMX_URI_TCP && !cfg->has_access &&
	    !is_loopback(l->uri.host))
		dmx_warn("%s is not a loopback address and there is no access: "
		    "section: anyone who reaches it may call every method "
		    "(docs/security.md)", l->text);
	return l;
}

static void
listener_close(dmx_server *s, dmx_listener *l)
{
	dmx_loop_watch(s->loop, &l->io, 0);
	close(l->io.rfd);
	if (l->uri.kind == DMX_URI_UNIX)
		unlink(l->uri.path);
	free(l->text);
	free(l);
}

int
dmx_server_listen(dmx_server *s, char *err, size_t errlen)
{
	const dmx_config *cfg = srv_cfg(s);
	dmx_listener *l, **tail = &s->listeners;
	char e[512];
	size_t i;

	for (i = 0; i < cfg->nlisten; i++) {
		l = listener_open(s, cfg->listen[i].uri, cfg, e,
		    sizeof(e));
		if (l == NULL) {
			snprintf(err, errlen, "%s:%d:%d: listen: %s", cfg->file,
			    cfg->listen[i].line, cfg->listen[i].col, e);
			return -1;
		}
		l->conn_flags = cfg->listen[i].error_string ?
		    DMX_CONN_ERR_STRING : 0;
		*tail = l;
		tail = &l->next;
	}
	return 0;
}

int
dmx_server_add_stdio(dmx_server *s, char *err, size_t errlen)
{
	int fl;

	/* both ends non-blocking: a worker must never block on a slow reader */
	fl = fcntl(STDIN_FILENO, F_GETFL);
	fcntl(STDIN_FILENO, F_SETFL, fl | O_NONBLOCK);
	fl = fcntl(STDOUT_FILENO, F_GETFL);
	fcntl(STDOUT_FILENO, F_SETFL, fl | O_NONBLOCK);
	dmx_xport *x = dmx_xport_plain(STDIN_FILENO, STDOUT_FILENO, 0);
	char id[128];

	/* the process that started us, and owns our pipes */
	dmx_access_unix_identity(geteuid(), id, sizeof(id));
	if (x == NULL || dmx_conns_add(s->conns, x, id, "stdio", 0) == 0) {
		snprintf(err, errlen, "stdio: cannot poll stdin/stdout (%s); "
		    "they must be pipes or sockets", strerror(errno));
		return -1;
	}
	s->stdio = 1;
	return 0;
}

int
dmx_server_add_fd(dmx_server *s, int fd, char *err, size_t errlen)
{
	dmx_xport *x;

	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	char id[128];

	x = dmx_xport_plain(fd, fd, 1);
	dmx_access_unix_identity(geteuid(), id, sizeof(id));
	dmx_conns_trust(s->conns);
	if (x == NULL || dmx_conns_add(s->conns, x, id, "demuxd", 0) == 0) {
		snprintf(err, errlen, "cannot serve descriptor %d: %s", fd,
		    strerror(errno));
		return -1;
	}
	s->stdio = 1;
	return 0;
}

/* A warning at most once per 10 s per kind, with how many were not said. */
static void
warn_limited(uint64_t *last, unsigned *quiet, const char *what)
{
	uint64_t now = dmx_now_ns();

	if (*last != 0 && now - *last < 10000000000ull) {
		(*quiet)++;
		return;
	}
	if (*quiet > 0)
		dmx_warn("%s (and %u more like it in the last 10 s)", what,
		    *quiet);
	else
		dmx_warn("%s", what);
	*last = now;
	*quiet = 0;
}

/*
 * Out of descriptors (EMFILE/ENFILE): the pending connection would make a
 * level-triggered listener report readable forever. Give up the reserve
 * descriptor, accept it, tell it why and close it, then take the reserve
 * back: the peer gets an answer and the loop does not spin.
 */
static int
shed_one(dmx_server *s, dmx_listener *l, int err)
{
	char what[256];
	int fd;

	if (s->reserve_fd >= 0) {
		close(s->reserve_fd);
		s->reserve_fd = -1;
	}
	fd = accept4(l->io.rfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd >= 0) {
		dmx_conn_refuse(fd, DMX_E_OVERLOADED, "out of file descriptors; "
		    "not served, retry later");
		close(fd);
	}
	s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	snprintf(what, sizeof(what), "accept on %s: %s: refusing connections "
	    "(raise RLIMIT_NOFILE or lower max_connections)", l->text,
	    strerror(err));
	warn_limited(&s->warned_fds, &s->quiet_fds, what);
	return fd >= 0;
}

/* Stop or resume watching every listener (out of descriptors with no
 * reserve left: look again in LISTEN_PAUSE_MS rather than spin). */
void
srv_listeners_watch(dmx_server *s, int on)
{
	dmx_listener *l;

	for (l = s->listeners; l != NULL; l = l->next)
		if (dmx_loop_watch(s->loop, &l->io, on ? EPOLLIN : 0) != 0)
			dmx_warn("%s: epoll_ctl: %s", l->text, strerror(errno));
	s->listen_paused_until = on ? 0 : dmx_now_ns() +
	    LISTEN_PAUSE_MS * 1000000ull;
}

static void
keepalive(int fd, unsigned ms)
{
	int one = 1, idle = (int)(ms / 1000), intvl = idle / 6 > 0 ?
	    (idle / 6 < 10 ? idle / 6 : 10) : 1, cnt = 6;

	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
}

/* Who is on the other end of an accepted fd: the identity the access
 * rules see, and an address for the log. */
static void
peer_of(int fd, const dmx_listener *l, char *ident, size_t ilen, char *peer,
    size_t plen)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[INET6_ADDRSTRLEN];

	snprintf(ident, ilen, "%s", DMX_ANONYMOUS);
	snprintf(peer, plen, "%s", l->text);
	if (l->uri.kind == DMX_URI_UNIX) {
		struct ucred uc;
		socklen_t ul = sizeof(uc);

		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &ul) == 0) {
			dmx_access_unix_identity(uc.uid, ident, ilen);
			snprintf(peer, plen, "pid %d, %.60s", (int)uc.pid, ident);
		}
		return;
	}
	if (getpeername(fd, (struct sockaddr *)&ss, &sl) != 0)
		return;
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
		snprintf(peer, plen, "%s:%u", host, ntohs(a->sin_port));
	} else if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
		snprintf(peer, plen, "[%s]:%u", host, ntohs(a->sin6_port));
	}
}

/* ---- TLS handshakes (before a tls: connection is a connection) ---- */

typedef struct dmx_handshake {
	dmx_io		 io;		/* first */
	dmx_server	*srv;
	dmx_xport	*x;
	uint64_t	 deadline;	/* ns: handshake_timeout_ms */
	unsigned	 conn_flags;	/* its listener's */
	char		 peer[96];
	struct dmx_handshake *prev, *next;
} dmx_handshake;

static void
handshake_end(dmx_server *s, dmx_handshake *h, int done)
{
	char ident[300];

	dmx_loop_watch(s->loop, &h->io, 0);
	if (h->prev)
		h->prev->next = h->next;
	else
		s->handshakes = h->next;
	if (h->next)
		h->next->prev = h->prev;
	s->nhandshakes--;
	if (done) {
		dmx_tls_identity(h->x, ident, sizeof(ident));
		if (dmx_conns_add(s->conns, h->x, ident, h->peer,
		    h->conn_flags) == 0)
			dmx_warn("tls %s: cannot register: %s", h->peer,
			    strerror(errno));
		else
			dmx_debug("tls %s: connected as %s", h->peer, ident);
	} else {
		dmx_xport_free(h->x);
	}
	free(h);
}

static void
handshake_ready(dmx_io *io, uint32_t events)
{
	dmx_handshake *h = (dmx_handshake *)io;
	uint32_t want = EPOLLIN;
	char why[512];
	int rc;

	(void)events;
	rc = dmx_tls_step(h->x, &want, why, sizeof(why));
	if (rc == 0) {
		dmx_loop_watch(h->srv->loop, &h->io, want);
		return;
	}
	if (rc < 0)
		dmx_info("tls %s: handshake failed: %s", h->peer, why);
	handshake_end(h->srv, h, rc > 0);
}

static void
handshake_start(dmx_server *s, int fd, const char *peer, unsigned flags)
{
	dmx_handshake *h = calloc(1, sizeof(*h));

	if (h == NULL || (h->x = dmx_tls_accept(s->tls, fd)) == NULL) {
		if (h == NULL)
			close(fd);
		free(h);
		dmx_warn("tls %s: out of memory", peer);
		return;
	}
	h->srv = s;
	h->conn_flags = flags;
	h->io.on_ready = handshake_ready;
	h->io.rfd = h->io.wfd = fd;
	h->deadline = dmx_now_ns() +
	    (uint64_t)srv_cfg(s)->tls.handshake_timeout_ms * 1000000u;
	snprintf(h->peer, sizeof(h->peer), "%s", peer);
	if (dmx_loop_watch(s->loop, &h->io, EPOLLIN) != 0) {
		dmx_xport_free(h->x);
		free(h);
		return;
	}
	h->next = s->handshakes;
	if (s->handshakes)
		s->handshakes->prev = h;
	s->handshakes = h;
	s->nhandshakes++;
}

/* Close handshakes past handshake_timeout_ms (all, when stopping);
 * returns ms until the next deadline, or -1. */
int
srv_handshakes_tick(dmx_server *s)
{
	uint64_t now = dmx_now_ns(), soonest = 0;
	dmx_handshake *h, *next;

	for (h = s->handshakes; h != NULL; h = next) {
		next = h->next;
		if (s->stopping || now >= h->deadline) {
			if (!s->stopping)
				dmx_info("tls %s: handshake not done within "
				    "handshake_timeout_ms (%u): closed",
				    h->peer,
				    srv_cfg(s)->tls.handshake_timeout_ms);
			handshake_end(s, h, 0);
			continue;
		}
		if (soonest == 0 || h->deadline - now < soonest)
			soonest = h->deadline - now;
	}
	return soonest ? (int)(soonest / 1000000u) + 1 : -1;
}

static void
on_accept(dmx_server *s, dmx_listener *l)
{
	const dmx_config *cfg = srv_cfg(s);
	char what[256], ident[128], peer[96];
	dmx_xport *x;
	unsigned id;
	int fd;

	for (;;) {
		fd = accept4(l->io.rfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EMFILE || errno == ENFILE) {
				if (shed_one(s, l, errno))
					continue;	/* until EAGAIN */
				srv_listeners_watch(s, 0);
				return;
			}
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				dmx_warn("accept on %s: %s", l->text,
				    strerror(errno));
			return;
		}
		if (dmx_conns_count(s->conns) + s->nhandshakes >=
		    cfg->max_connections) {
			char msg[96];

			snprintf(what, sizeof(what), "refusing a connection on "
			    "%s: max_connections (%u) reached", l->text,
			    cfg->max_connections);
			warn_limited(&s->warned_max, &s->quiet_max, what);
			snprintf(msg, sizeof(msg), "too many connections "
			    "(max_connections %u)", cfg->max_connections);
			dmx_conn_refuse(fd, DMX_E_OVERLOADED, msg);
			close(fd);
			continue;
		}
		if (l->uri.kind == DMX_URI_TCP) {
			int one = 1;

			setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one,
			    sizeof(one));
			/* a peer that vanished without a FIN is found, even
			 * with idle_timeout_ms off */
			if (cfg->tcp_keepalive_ms > 0)
				keepalive(fd, cfg->tcp_keepalive_ms);
		}
		peer_of(fd, l, ident, sizeof(ident), peer, sizeof(peer));
		if (l->uri.tls) {
			/* a connection once its handshake is done */
			handshake_start(s, fd, peer, l->conn_flags);
			continue;
		}
		if ((x = dmx_xport_plain(fd, fd, 1)) == NULL) {
			dmx_warn("accept on %s: out of memory", l->text);
			close(fd);
			continue;
		}
		if ((id = dmx_conns_add(s->conns, x, ident, peer,
		    l->conn_flags)) == 0) {
			dmx_warn("accept on %s: cannot register: %s", l->text,
			    strerror(errno));
			continue;
		}
		dmx_debug("conn %u: accepted on %s", id, l->text);
	}
}

static void
on_listener(dmx_io *io, uint32_t events)
{
	dmx_listener *l = (dmx_listener *)io;

	(void)events;
	if (!l->srv->stopping)
		on_accept(l->srv, l);
}

void
srv_close_listeners(dmx_server *s)
{
	dmx_listener *l;

	while ((l = s->listeners) != NULL) {
		s->listeners = l->next;
		listener_close(s, l);
	}
}


/* Make the listeners match the new configuration; keep what is unchanged. */
void
srv_relisten(dmx_server *s, const dmx_config *cfg)
{
	dmx_listener *l, **pp, *keep = NULL, **ktail = &keep;
	char err[512];
	size_t i;

	for (i = 0; i < cfg->nlisten; i++) {
		for (pp = &s->listeners; (l = *pp) != NULL; pp = &l->next)
			if (strcmp(l->text, cfg->listen[i].uri) == 0)
				break;
		if (l != NULL) {
			*pp = l->next;
		} else if ((l = listener_open(s, cfg->listen[i].uri, cfg, err,
		    sizeof(err))) == NULL) {
			dmx_warn("reload: %s:%d:%d: listen: %s", cfg->file,
			    cfg->listen[i].line, cfg->listen[i].col, err);
			continue;
		}
		/* new connections get the new error_format */
		l->conn_flags = cfg->listen[i].error_string ?
		    DMX_CONN_ERR_STRING : 0;
		l->next = NULL;
		*ktail = l;
		ktail = &l->next;
	}
	while ((l = s->listeners) != NULL) {	/* no longer configured */
		s->listeners = l->next;
		dmx_info("reload: no longer listening on %s", l->text);
		listener_close(s, l);
	}
	s->listeners = keep;
}

void
srv_handshakes_close(dmx_server *s)
{
	while (s->handshakes != NULL)
		handshake_end(s, s->handshakes, 0);
}
