/*
 * server.c - demuxd's server core on the I/O thread: listeners and
 * accepting, signals, reload, the orderly stop, and the run loop that
 * drives the event loop (loop.h) and the connection set (conn.h). See
 * server.h for the layers.
 *
 * Threads: everything here runs on the I/O thread (main before
 * dmx_server_run), except gen_dead (any thread: dead_mu, then a wake-up)
 * and dmx_server_gen_acquire (the generation slot's lock).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <grp.h>
#include <unistd.h>

#include "../common/uri.h"
#include "../common/wire.h"
#include "../common/xport.h"
#include "access.h"
#include "conn.h"
#include "log.h"
#include "loop.h"
#include "pool.h"
#include "tls.h"
#include "server.h"

typedef struct dmx_listener {
	dmx_io		io;		/* first */
	dmx_server     *srv;
	dmx_uri		uri;
	char	       *text;		/* as configured (owned) */
	struct dmx_listener *next;
} dmx_listener;

struct dmx_server {
	dmx_gen_slot	 gen;		/* the generation serving now */
	dmx_gen		*gens;		/* every generation not yet freed,
					 * the current one first */
	pthread_mutex_t	 dead_mu;
	dmx_gen		*dead;		/* unreferenced, to be freed by the I/O
					 * thread (dead_mu) */
	_Atomic int	 have_dead;
	dmx_exec	*exec;		/* the shared pool */
	dmx_loop	*loop;
	dmx_conns	*conns;
	dmx_io		 sig_io;
	dmx_listener	*listeners;	/* list */
	dmx_tls_ctx	*tls;		/* tls: listeners' context, or NULL */
	struct dmx_handshake *handshakes; /* TLS handshakes under way */
	unsigned	 nhandshakes;
	int		 stdio;		/* serving one stdio connection */
	int		 stopping;
	uint64_t	 drain_deadline; /* ns; 0 until a signal */
	int		 abandoned;	/* the drain deadline passed */
	dmx_server_stats stats;
	int		 reserve_fd;	/* spent when out of descriptors */
	uint64_t	 listen_paused_until; /* ns; 0: listeners watched */
	uint64_t	 warned_fds, warned_max; /* rate-limited warnings */
	unsigned	 quiet_fds, quiet_max;
};

dmx_gen *
dmx_server_gen(const dmx_server *s)
{
	return dmx_gen_current(&s->gen);
}

dmx_gen *
dmx_server_gen_acquire(dmx_server *s)
{
	return dmx_gen_acquire(&s->gen);
}

dmx_server_stats *
dmx_server_stats_get(dmx_server *s)
{
	return &s->stats;
}

static void reload(dmx_server *s);

static const dmx_config *
current_cfg(const dmx_server *s)
{
	return dmx_server_gen(s)->cfg;
}


/* The last reference to a generation is gone (any thread): the I/O thread
 * frees it (reap_dead), never a worker, which may belong to a pool the
 * generation stops. */
static void
gen_dead(dmx_gen *g, void *arg)
{
	dmx_server *s = arg;

	pthread_mutex_lock(&s->dead_mu);
	g->dead_next = s->dead;
	s->dead = g;
	pthread_mutex_unlock(&s->dead_mu);
	atomic_store_explicit(&s->have_dead, 1, memory_order_release);
	dmx_loop_wake(s->loop);
}

static dmx_gen_hooks
gen_hooks(dmx_server *s)
{
	dmx_gen_hooks h = { s->exec, { dmx_conn_admit, dmx_conn_send_list,
	    NULL }, gen_dead, s };

	return h;
}

/* Free the generations whose last reference went. (I/O thread) */
static void
reap_dead(dmx_server *s)
{
	dmx_gen *g, *next, **pp;

	if (!atomic_exchange_explicit(&s->have_dead, 0, memory_order_acquire))
		return;
	pthread_mutex_lock(&s->dead_mu);
	g = s->dead;
	s->dead = NULL;
	pthread_mutex_unlock(&s->dead_mu);
	for (; g != NULL; g = next) {
		next = g->dead_next;
		for (pp = &s->gens; *pp != NULL && *pp != g; pp = &(*pp)->next)
			;
		if (*pp == g)
			*pp = g->next;
		dmx_info("generation %u had its last job: freeing it (%zu "
		    "plugin(s) no longer used are unloaded)", g->id,
		    g->nplugins);
		dmx_gen_free(g);
	}
}

static void on_signal(dmx_io *io, uint32_t events);

dmx_server *
dmx_server_new(dmx_config *cfg, char *err, size_t errlen)
{
	dmx_server *s;
	dmx_gen_hooks hooks;
	dmx_gen *g;
	sigset_t set;

	s = calloc(1, sizeof(*s));
	if (s == NULL) {
		snprintf(err, errlen, "out of memory");
		dmx_config_free(cfg);
		free(cfg);
		return NULL;
	}
	s->stats.started_ns = dmx_now_ns();
	pthread_mutex_init(&s->stats.refusals.mu, NULL);
	s->sig_io.rfd = s->sig_io.wfd = -1;
	s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	dmx_gen_slot_init(&s->gen);
	pthread_mutex_init(&s->dead_mu, NULL);
	/* the loop first: generations report their death to it */
	hooks = gen_hooks(s);
	s->loop = dmx_loop_new(dmx_conn_expire, err, errlen);
	if (s->loop != NULL)
		s->exec = dmx_pool_new(cfg->workers, cfg->max_threads,
		    cfg->queue, &hooks.exec, err, errlen);
	if (s->exec == NULL) {
		dmx_config_free(cfg);
		free(cfg);
		goto fail;
	}
	hooks.shared = s->exec;
	g = dmx_gen_new(cfg, NULL, &hooks, err, errlen);
	if (g == NULL)
		goto fail;
	dmx_gen_publish(&s->gen, g);
	s->gens = g;
	s->conns = dmx_conns_new(s->loop, &s->gen, &s->stats);
	if (s->conns == NULL) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	dmx_conns_limits(s->conns, g->cfg);
	if (g->cfg->has_tls &&
	    (s->tls = dmx_tls_ctx_new(g->cfg, err, errlen)) == NULL)
		goto fail;

	/* SIGINT/SIGTERM/SIGHUP arrive as readable data; main() blocked them
	 * in every thread before any was started */
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	s->sig_io.rfd = s->sig_io.wfd = signalfd(-1, &set, SFD_NONBLOCK |
	    SFD_CLOEXEC);
	s->sig_io.on_ready = on_signal;
	if (s->sig_io.rfd < 0 || dmx_loop_watch(s->loop, &s->sig_io,
	    EPOLLIN) != 0) {
		snprintf(err, errlen, "signalfd: %s", strerror(errno));
		goto fail;
	}
	return s;
fail:
	dmx_server_free(s);
	return NULL;
}

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
	const dmx_config *cfg = current_cfg(s);
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
	if (x == NULL || dmx_conns_add(s->conns, x, id, "stdio") == 0) {
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
	if (x == NULL || dmx_conns_add(s->conns, x, id, "demuxd") == 0) {
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
#define LISTEN_PAUSE_MS 100
static void
listeners_watch(dmx_server *s, int on)
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
		if (dmx_conns_add(s->conns, h->x, ident, h->peer) == 0)
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
handshake_start(dmx_server *s, int fd, const char *peer)
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
	h->io.on_ready = handshake_ready;
	h->io.rfd = h->io.wfd = fd;
	h->deadline = dmx_now_ns() +
	    (uint64_t)current_cfg(s)->tls.handshake_timeout_ms * 1000000u;
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
static int
handshakes_tick(dmx_server *s)
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
				    current_cfg(s)->tls.handshake_timeout_ms);
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
	const dmx_config *cfg = current_cfg(s);
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
				listeners_watch(s, 0);
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
			handshake_start(s, fd, peer);
			continue;
		}
		if ((x = dmx_xport_plain(fd, fd, 1)) == NULL) {
			dmx_warn("accept on %s: out of memory", l->text);
			close(fd);
			continue;
		}
		if ((id = dmx_conns_add(s->conns, x, ident, peer)) == 0) {
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

static void
close_listeners(dmx_server *s)
{
	dmx_listener *l;

	while ((l = s->listeners) != NULL) {
		s->listeners = l->next;
		listener_close(s, l);
	}
}


/* ---- reload (SIGHUP) ---- */

/* Make the listeners match the new configuration; keep what is unchanged. */
static void
relisten(dmx_server *s, const dmx_config *cfg)
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

/*
 * Re-read the configuration. Anything wrong (the YAML, a plugin that does
 * not load) leaves the running configuration exactly as it was. Otherwise
 * the new generation (gen.c: unchanged plugins kept as they are, new and
 * changed ones loaded from a private copy of their file) is published with
 * one store; jobs already dispatched finish on the generation they started
 * with, which is freed, with the plugins only it used, after its last job.
 */
static void
reload(dmx_server *s)
{
	dmx_gen *old = dmx_server_gen(s), *g;
	dmx_tls_ctx *tls = NULL;
	dmx_gen_hooks hooks = gen_hooks(s);
	dmx_config *cfg;
	char err[1024];
	size_t kept = 0, i, k;

	if (old->cfg->file == NULL) {
		dmx_warn("reload: no configuration file to read");
		return;
	}
	dmx_info("reload: reading %s", old->cfg->file);
	cfg = calloc(1, sizeof(*cfg));
	if (cfg == NULL || dmx_config_load(old->cfg->file, cfg, err,
	    sizeof(err)) != 0) {
		dmx_warn("reload: %s; keeping the running configuration",
		    cfg ? err : "out of memory");
		free(cfg);
		atomic_fetch_add(&s->stats.reload_failures, 1);
		return;
	}
	/* the certificate, key and CA are re-read first: a bad one changes
	 * nothing, like any bad configuration */
	if (cfg->has_tls && (tls = dmx_tls_ctx_new(cfg, err,
	    sizeof(err))) == NULL) {
		dmx_warn("reload: %s; keeping the running configuration", err);
		atomic_fetch_add(&s->stats.reload_failures, 1);
		dmx_config_free(cfg);
		free(cfg);
		return;
	}
	g = dmx_gen_new(cfg, old, &hooks, err, sizeof(err));
	if (g == NULL) {
		dmx_warn("reload: %s; keeping the running configuration", err);
		atomic_fetch_add(&s->stats.reload_failures, 1);
		dmx_tls_ctx_free(tls);
		return;
	}

	/* the switch: requests read from now on use the new generation, new
	 * handshakes the new certificate (live sessions keep theirs) */
	dmx_tls_ctx_free(s->tls);
	s->tls = tls;
	relisten(s, g->cfg);
	dmx_gen_publish(&s->gen, g);
	g->next = s->gens;
	s->gens = g;
	dmx_conns_limits(s->conns, g->cfg);
	if (g->cfg->workers != old->cfg->workers ||
	    g->cfg->max_threads != old->cfg->max_threads)
		dmx_warn("reload: the shared pool's size changes on restart "
		    "only");
	if (g->cfg->log_level >= 0)
		dmx_log_set_level(g->cfg->log_level);
	for (i = 0; i < old->nplugins; i++)
		for (k = 0; k < g->nplugins; k++)
			if (g->plugins[k] == old->plugins[i])
				kept++;
	atomic_fetch_add(&s->stats.reloads, 1);
	dmx_info("reload: %s: generation %u: %zu plugin(s): %zu kept, %zu "
	    "loaded, %zu to be unloaded after their last job", g->cfg->file,
	    g->id, g->nplugins, kept, g->nfresh, old->nplugins - kept);
	dmx_gen_unref(old, 1);		/* the slot's reference */
}

static void
begin_stop(dmx_server *s, const char *why)
{
	if (s->stopping)
		return;
	s->stopping = 1;
	s->drain_deadline = dmx_now_ns() +
	    (uint64_t)current_cfg(s)->drain_timeout_ms * 1000000u;
	dmx_info("%s: draining: no new connections, $/drain to %u "
	    "connection(s), new requests answered -32012, up to %u ms for "
	    "those in flight", why, dmx_conns_count(s->conns),
	    current_cfg(s)->drain_timeout_ms);
	close_listeners(s);
	dmx_conns_drain(s->conns, s->stdio);
}

/* The drain deadline passed: answer what is still in flight -32012. */
static void
abandon_all(dmx_server *s)
{
	unsigned n;

	s->abandoned = 1;
	n = dmx_conns_abandon(s->conns);
	dmx_warn("drain_timeout_ms (%u) passed: %u request(s) still in "
	    "flight answered -32012", current_cfg(s)->drain_timeout_ms,
	    n);
}

int
dmx_server_busy_workers(dmx_server *s)
{
	dmx_exec_info pi;
	const dmx_gen *g;
	size_t i;
	int busy;

	dmx_exec_info_get(s->exec, 0, &pi);
	busy = pi.on_demand ? pi.workers : pi.busy;
	/* a plugin's own pool belongs to the first generation that holds it;
	 * count each pool once */
	for (g = s->gens; g != NULL; g = g->next)
		for (i = 0; i < g->nplugins; i++) {
			const dmx_plugin *p = g->plugins[i];
			const dmx_gen *o;
			size_t k;
			int seen = 0;

			if (!p->own_pool)
				continue;
			for (o = s->gens; o != g && !seen; o = o->next)
				for (k = 0; k < o->nplugins && !seen; k++)
					seen = o->plugins[k] == p;
			if (seen)
				continue;
			dmx_exec_info_get(p->exec, 0, &pi);
			busy += pi.busy;
		}
	return busy;
}

static void
on_signal(dmx_io *io, uint32_t events)
{
	dmx_server *s = (dmx_server *)((char *)io -
	    offsetof(dmx_server, sig_io));
	struct signalfd_siginfo si;

	(void)events;
	while (read(io->rfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		if (si.ssi_signo == SIGHUP) {
			if (!s->stopping && !s->stdio)
				reload(s);
			continue;
		}
		if (s->stopping) {
			/* a second signal: the operator will not wait */
			dmx_warn("%s again: exiting without waiting for "
			    "handlers", strsignal((int)si.ssi_signo));
			_exit(1);
		}
		begin_stop(s, strsignal((int)si.ssi_signo));
	}
}

static int
sooner(int a, int b)
{
	return a < 0 ? b : b < 0 ? a : a < b ? a : b;
}

int
dmx_server_run(dmx_server *s)
{
	int timeout, idle;
	uint64_t now;

	for (;;) {
		idle = dmx_conns_count(s->conns) == 0;
		if ((s->stopping || s->stdio) && idle) {
			/* handlers of connections that went away may still
			 * run: their plugins' fini must wait for them, up to
			 * the drain deadline */
			if (s->abandoned || dmx_server_busy_workers(s) == 0)
				break;
		}
		timeout = dmx_loop_deadlines(s->loop);
		if (timeout >= 0)
			dmx_loop_attend(s->loop); /* what the answers changed */
		reap_dead(s);
		if (s->listen_paused_until != 0 && !s->stopping) {
			now = dmx_now_ns();
			if (now >= s->listen_paused_until)
				listeners_watch(s, 1);
			else
				timeout = sooner(timeout, LISTEN_PAUSE_MS);
		}
		timeout = sooner(timeout, dmx_conns_tick(s->conns));
		if (s->handshakes != NULL)
			timeout = sooner(timeout, handshakes_tick(s));
		dmx_loop_attend(s->loop);
		if (s->stopping && !s->abandoned) {
			now = dmx_now_ns();
			if (now >= s->drain_deadline) {
				abandon_all(s);
				dmx_loop_attend(s->loop);
				continue;
			}
			timeout = sooner(timeout, (int)((s->drain_deadline -
			    now) / 1000000u) + 1);
			/* nothing signals a worker becoming idle: look again
			 * soon while only workers remain */
			if (idle && (timeout < 0 || timeout > 10))
				timeout = 10;
		} else if (s->stdio && idle) {
			timeout = 10;
		}
		if (dmx_loop_poll(s->loop, timeout) < 0)
			return -1;
	}
	if (s->stdio && !s->stopping)
		dmx_info("stdio connection closed: stopping");
	close_listeners(s);
	return 0;
}

void
dmx_server_free(dmx_server *s)
{
	if (s == NULL)
		return;
	close_listeners(s);
	dmx_conns_free(s->conns);
	/* runs every queued job; their replies go nowhere and their
	 * connections are freed by the last of them */
	dmx_exec_free(s->exec);
	/* every job is done (the pools were joined above, and connections
	 * are freed by their last job): the current generation goes with the
	 * slot's reference, and every retired one has gone already */
	if (s->gens != NULL) {
		dmx_gen *g = dmx_server_gen(s);

		g->hooks.dead = NULL;	/* free it here, at once */
		for (dmx_gen **pp = &s->gens; *pp; pp = &(*pp)->next)
			if (*pp == g) {
				*pp = g->next;
				break;
			}
		atomic_store(&s->have_dead, 1);
		reap_dead(s);
		dmx_gen_unref(g, 1);
		if (s->gens != NULL)
			dmx_warn("generation %u still has jobs at exit: its "
			    "plugins stay loaded", s->gens->id);
	}
	while (s->handshakes != NULL)
		handshake_end(s, s->handshakes, 0);
	dmx_tls_ctx_free(s->tls);
	if (s->sig_io.rfd >= 0)
		close(s->sig_io.rfd);
	if (s->reserve_fd >= 0)
		close(s->reserve_fd);
	/* deadlines still pending hold their connections: let them go */
	dmx_loop_free(s->loop);
	dmx_gen_slot_destroy(&s->gen);
	pthread_mutex_destroy(&s->stats.refusals.mu);
	pthread_mutex_destroy(&s->dead_mu);
	free(s);
}
