/*
 * server.c - demuxd's I/O thread: epoll loop, listeners, accepting, signals,
 * the attention list, and the orderly stop. See server.h for the design.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include "../common/uri.h"
#include "log.h"
#include "server.h"
#include "timer.h"

typedef struct dmx_listener {
	dmx_ev		ev;		/* first */
	int		fd;
	dmx_uri		uri;
	char	       *text;		/* as configured (owned) */
	struct dmx_listener *next;
} dmx_listener;

struct dmx_server {
	/* the generation serving now: replaced by a reload with one store.
	 * The I/O thread reads it freely (it is the only writer); another
	 * thread takes a reference under gen_mu (dmx_server_gen_acquire). */
	dmx_gen *_Atomic gen;
	pthread_mutex_t	 gen_mu;
	dmx_gen		*gens;		/* every generation not yet freed,
					 * the current one first (I/O thread) */
	pthread_mutex_t	 dead_mu;
	dmx_gen		*dead;		/* unreferenced, to be freed by the I/O
					 * thread (dead_mu) */
	_Atomic int	 have_dead;
	dmx_pool	*pool;		/* the shared pool */
	/* the memory bound (max_memory): bytes counted, the bound and its
	 * half (copied from the current configuration for the workers),
	 * connections paused for it, and whether the I/O thread must resume
	 * them */
	_Atomic size_t	 mem;
	_Atomic size_t	 mem_max, mem_low;
	_Atomic unsigned mem_waiting;
	_Atomic int	 mem_wake;
	int		 epfd;
	dmx_ev		 wake_ev;
	int		 wakefd;	/* eventfd: attention list non-empty,
					 * or a generation died */
	dmx_ev		 sig_ev;
	int		 sigfd;
	dmx_listener	*listeners;	/* list */
	dmx_conn	*conns;		/* I/O thread only */
	unsigned	 nconns;
	unsigned	 next_id;
	int		 stdio;		/* serving one stdio connection */
	_Atomic int	 stopping;	/* read by the metrics thread too */
	uint64_t	 drain_deadline; /* ns; 0 until a signal */
	int		 abandoned;	/* the drain deadline passed */
	uint64_t	 next_idle_check; /* ns */
	dmx_timers	 timers;	/* deadlines (I/O thread) */
	dmx_buf		 scratch;
	dmx_server_stats stats;
	int		 reserve_fd;	/* spent when out of descriptors */
	uint64_t	 listen_paused_until; /* ns; 0: listeners watched */
	uint64_t	 warned_fds, warned_max; /* rate-limited warnings */
	unsigned	 quiet_fds, quiet_max;

	pthread_mutex_t	 attn_mu;
	dmx_conn	*attn_head;	/* protected by attn_mu */
};

dmx_gen *
dmx_server_gen(const dmx_server *s)
{
	return atomic_load_explicit(&s->gen, memory_order_relaxed);
}

dmx_gen *
dmx_server_gen_acquire(dmx_server *s)
{
	dmx_gen *g;

	pthread_mutex_lock(&s->gen_mu);
	g = atomic_load_explicit(&s->gen, memory_order_acquire);
	dmx_gen_ref(g, 1);
	pthread_mutex_unlock(&s->gen_mu);
	return g;
}

const dmx_config *
dmx_server_config(const dmx_server *s)
{
	return dmx_server_gen(s)->cfg;
}

const dmx_router *
dmx_server_router(const dmx_server *s)
{
	return dmx_server_gen(s)->router;
}

dmx_pool *
dmx_server_pool(const dmx_server *s)
{
	return s->pool;
}

dmx_server_stats *
dmx_server_stats_get(dmx_server *s)
{
	return &s->stats;
}

dmx_buf *
dmx_server_scratch(dmx_server *s)
{
	return &s->scratch;
}

int
dmx_server_stopping(const dmx_server *s)
{
	return s->stopping;
}

static void
mem_limits(dmx_server *s, const dmx_config *cfg)
{
	atomic_store(&s->mem_max, cfg->max_memory);
	atomic_store(&s->mem_low, cfg->max_memory / 2);
}

void
dmx_server_mem_add(dmx_server *s, size_t n)
{
	atomic_fetch_add_explicit(&s->mem, n, memory_order_relaxed);
}

void
dmx_server_mem_sub(dmx_server *s, size_t n)
{
	size_t old, low;
	uint64_t one = 1;

	if (n == 0)
		return;
	old = atomic_fetch_sub_explicit(&s->mem, n, memory_order_relaxed);
	if (atomic_load_explicit(&s->mem_waiting, memory_order_relaxed) == 0)
		return;
	low = atomic_load_explicit(&s->mem_low, memory_order_relaxed);
	if (old >= low && old - n < low &&
	    !atomic_exchange(&s->mem_wake, 1) &&
	    write(s->wakefd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		dmx_warn("eventfd write: %s", strerror(errno));
}

int
dmx_server_mem_full(dmx_server *s)
{
	return atomic_load_explicit(&s->mem, memory_order_relaxed) >=
	    atomic_load_explicit(&s->mem_max, memory_order_relaxed);
}

void
dmx_server_mem_wait(dmx_server *s)
{
	static uint64_t last_warn;
	uint64_t now = dmx_now_ns();

	atomic_fetch_add(&s->mem_waiting, 1);
	if (now - last_warn > 10000000000ull) {	/* once per 10 s */
		last_warn = now;
		dmx_warn("max_memory (%zu bytes) reached by requests in flight "
		    "and partial frames: reading paused until half is free",
		    atomic_load(&s->mem_max));
	}
}

/* Below half the memory bound again: resume who waited. (I/O thread) */
static void
mem_resume(dmx_server *s)
{
	dmx_conn *c, *next;

	if (!atomic_exchange(&s->mem_wake, 0))
		return;
	for (c = s->conns; c != NULL; c = next) {
		next = c->next;
		if (c->mem_paused) {
			atomic_fetch_sub(&s->mem_waiting, 1);
			dmx_conn_mem_resume(c);
		}
	}
}

/*
 * Make the epoll registration of c match `events` (EPOLLIN/EPOLLOUT). A
 * connection with neither is removed from epoll altogether: otherwise a hang-up
 * would be reported again and again while reading is paused.
 */
static int
reg_fd(dmx_server *s, int fd, uint32_t old, uint32_t want, void *ptr)
{
	struct epoll_event ev;
	int op;

	if (old == want)
		return 0;
	memset(&ev, 0, sizeof(ev));
	ev.events = want;
	ev.data.ptr = ptr;
	op = old == 0 ? EPOLL_CTL_ADD : want == 0 ? EPOLL_CTL_DEL :
	    EPOLL_CTL_MOD;
	return epoll_ctl(s->epfd, op, fd, &ev);
}

int
dmx_server_epoll_mod(dmx_server *s, dmx_conn *c, uint32_t events)
{
	int rc;

	if (c->rfd == c->wfd) {
		rc = reg_fd(s, c->rfd, c->events, events, c);
	} else {
		rc = reg_fd(s, c->rfd, c->events & EPOLLIN, events & EPOLLIN, c);
		if (rc == 0)
			rc = reg_fd(s, c->wfd, c->events & EPOLLOUT,
			    events & EPOLLOUT, c);
	}
	if (rc != 0)
		dmx_warn("conn %u: epoll_ctl: %s", c->id, strerror(errno));
	else
		c->events = events;
	return rc;
}

void
dmx_server_attn(dmx_server *s, dmx_conn *c)
{
	uint64_t one = 1;
	int first;

	if (c->attn || c->released)
		return;
	c->attn = 1;
	pthread_mutex_lock(&s->attn_mu);
	first = s->attn_head == NULL;
	c->attn_next = s->attn_head;
	s->attn_head = c;
	pthread_mutex_unlock(&s->attn_mu);
	if (first && write(s->wakefd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		dmx_warn("eventfd write: %s", strerror(errno));
}

void
dmx_server_forget(dmx_server *s, dmx_conn *c)
{
	dmx_conn **pp;

	dmx_server_epoll_mod(s, c, 0);
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	s->nconns--;
	atomic_fetch_sub_explicit(&s->stats.connections, 1,
	    memory_order_relaxed);
	pthread_mutex_lock(&c->mu);
	if (c->attn) {
		pthread_mutex_lock(&s->attn_mu);
		for (pp = &s->attn_head; *pp != NULL; pp = &(*pp)->attn_next)
			if (*pp == c) {
				*pp = c->attn_next;
				break;
			}
		pthread_mutex_unlock(&s->attn_mu);
		c->attn = 0;
	}
	pthread_mutex_unlock(&c->mu);
	dmx_debug("conn %u: closed", c->id);
}

static dmx_conn *
conn_new(dmx_server *s, int rfd, int wfd, int is_sock)
{
	dmx_conn *c = calloc(1, sizeof(*c));

	if (c == NULL)
		return NULL;
	c->ev.kind = DMX_EV_CONN;
	c->srv = s;
	c->rfd = rfd;
	c->wfd = wfd;
	c->is_sock = is_sock;
	c->id = ++s->next_id;
	c->last_active = dmx_now_ns();
	c->out_limit = dmx_server_config(s)->max_output;
	pthread_mutex_init(&c->mu, NULL);
	if (dmx_server_epoll_mod(s, c, EPOLLIN) != 0) {
		pthread_mutex_destroy(&c->mu);
		free(c);
		return NULL;
	}
	c->next = s->conns;
	if (s->conns)
		s->conns->prev = c;
	s->conns = c;
	s->nconns++;
	atomic_fetch_add_explicit(&s->stats.connections, 1,
	    memory_order_relaxed);
	atomic_fetch_add_explicit(&s->stats.accepted, 1, memory_order_relaxed);
	return c;
}

static void reload(dmx_server *s);

/* A finished batch from any pool: to the connections. */
static void
jobs_done(dmx_job *list, void *arg)
{
	(void)arg;
	dmx_conn_send_list(list);
}

/* The last reference to a generation is gone (any thread): the I/O thread
 * frees it (reap_dead), never a worker, which may belong to a pool the
 * generation stops. */
static void
gen_dead(dmx_gen *g, void *arg)
{
	dmx_server *s = arg;
	uint64_t one = 1;

	pthread_mutex_lock(&s->dead_mu);
	g->dead_next = s->dead;
	s->dead = g;
	pthread_mutex_unlock(&s->dead_mu);
	atomic_store_explicit(&s->have_dead, 1, memory_order_release);
	if (write(s->wakefd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		dmx_warn("eventfd write: %s", strerror(errno));
}

static dmx_gen_hooks
gen_hooks(dmx_server *s)
{
	dmx_gen_hooks h = { s->pool, dmx_conn_admit, jobs_done, s, gen_dead,
	    s };

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

dmx_server *
dmx_server_new(dmx_config *cfg, char *err, size_t errlen)
{
	dmx_server *s;
	dmx_gen_hooks hooks;
	dmx_gen *g;
	struct epoll_event ev;
	sigset_t set;

	s = calloc(1, sizeof(*s));
	if (s == NULL) {
		snprintf(err, errlen, "out of memory");
		dmx_config_free(cfg);
		free(cfg);
		return NULL;
	}
	s->stats.started_ns = dmx_now_ns();
	s->epfd = s->wakefd = s->sigfd = -1;
	s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	pthread_mutex_init(&s->attn_mu, NULL);
	pthread_mutex_init(&s->gen_mu, NULL);
	pthread_mutex_init(&s->dead_mu, NULL);
	s->pool = dmx_pool_new(cfg->workers, cfg->max_threads, cfg->queue,
	    dmx_conn_admit, jobs_done, s, err, errlen);
	if (s->pool == NULL) {
		dmx_config_free(cfg);
		free(cfg);
		goto fail;
	}
	hooks = gen_hooks(s);
	g = dmx_gen_new(cfg, NULL, &hooks, err, errlen);
	if (g == NULL)
		goto fail;
	atomic_store(&s->gen, g);
	s->gens = g;
	mem_limits(s, g->cfg);
	if (dmx_buf_reserve(&s->scratch, 256u << 10) != 0) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	s->epfd = epoll_create1(EPOLL_CLOEXEC);
	s->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (s->epfd < 0 || s->wakefd < 0) {
		snprintf(err, errlen, "epoll/eventfd: %s", strerror(errno));
		goto fail;
	}
	s->wake_ev.kind = DMX_EV_WAKE;
	memset(&ev, 0, sizeof(ev));
	ev.events = EPOLLIN;
	ev.data.ptr = &s->wake_ev;
	epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->wakefd, &ev);

	/* SIGINT/SIGTERM arrive as readable data; main() blocked them in every
	 * thread before any was started */
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	s->sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (s->sigfd < 0) {
		snprintf(err, errlen, "signalfd: %s", strerror(errno));
		goto fail;
	}
	s->sig_ev.kind = DMX_EV_SIGNAL;
	ev.data.ptr = &s->sig_ev;
	epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->sigfd, &ev);
	return s;
fail:
	dmx_server_free(s);
	return NULL;
}

/* Open one listener; -1 with err. */
static dmx_listener *
listener_open(dmx_server *s, const char *text, int reuse_port, char *err,
    size_t errlen)
{
	struct epoll_event ev;
	dmx_listener *l = calloc(1, sizeof(*l));

	if (l == NULL || (l->text = strdup(text)) == NULL) {
		free(l);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	l->ev.kind = DMX_EV_LISTEN;
	if (dmx_uri_parse(l->text, &l->uri, err, errlen) == 0) {
		l->uri.reuseport = reuse_port;
		l->fd = dmx_uri_listen(&l->uri, 1024, err, errlen);
	} else {
		l->fd = -1;
	}
	if (l->fd < 0) {
		free(l->text);
		free(l);
		return NULL;
	}
	memset(&ev, 0, sizeof(ev));
	ev.events = EPOLLIN;
	ev.data.ptr = l;
	epoll_ctl(s->epfd, EPOLL_CTL_ADD, l->fd, &ev);
	dmx_info("listening on %s", l->text);
	return l;
}

static void
listener_close(dmx_server *s, dmx_listener *l)
{
	epoll_ctl(s->epfd, EPOLL_CTL_DEL, l->fd, NULL);
	close(l->fd);
	if (l->uri.kind == DMX_URI_UNIX)
		unlink(l->uri.path);
	free(l->text);
	free(l);
}

int
dmx_server_listen(dmx_server *s, char *err, size_t errlen)
{
	const dmx_config *cfg = dmx_server_config(s);
	dmx_listener *l, **tail = &s->listeners;
	char e[512];
	size_t i;

	for (i = 0; i < cfg->nlisten; i++) {
		l = listener_open(s, cfg->listen[i].uri, cfg->reuse_port, e,
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
	if (conn_new(s, STDIN_FILENO, STDOUT_FILENO, 0) == NULL) {
		snprintf(err, errlen, "stdio: cannot poll stdin/stdout (%s); "
		    "they must be pipes or sockets", strerror(errno));
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
	fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
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
	struct epoll_event ev;
	dmx_listener *l;

	for (l = s->listeners; l != NULL; l = l->next) {
		memset(&ev, 0, sizeof(ev));
		ev.events = EPOLLIN;
		ev.data.ptr = l;
		epoll_ctl(s->epfd, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, l->fd,
		    &ev);
	}
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

static void
on_accept(dmx_server *s, dmx_listener *l)
{
	const dmx_config *cfg = dmx_server_config(s);
	char what[256];
	int fd;

	for (;;) {
		fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
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
		if (s->nconns >= cfg->max_connections) {
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
		if (conn_new(s, fd, fd, 1) == NULL) {
			dmx_warn("accept on %s: cannot register: %s", l->text,
			    strerror(errno));
			close(fd);
			continue;
		}
		dmx_debug("conn %u: accepted on %s", s->next_id, l->text);
	}
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
		} else if ((l = listener_open(s, cfg->listen[i].uri,
		    cfg->reuse_port, err, sizeof(err))) == NULL) {
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
	g = dmx_gen_new(cfg, old, &hooks, err, sizeof(err));
	if (g == NULL) {
		dmx_warn("reload: %s; keeping the running configuration", err);
		atomic_fetch_add(&s->stats.reload_failures, 1);
		return;
	}

	/* the switch: requests read from now on use the new generation */
	relisten(s, g->cfg);
	pthread_mutex_lock(&s->gen_mu);
	atomic_store_explicit(&s->gen, g, memory_order_release);
	pthread_mutex_unlock(&s->gen_mu);
	g->next = s->gens;
	s->gens = g;
	mem_limits(s, g->cfg);
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
	dmx_gen_unref(old, 1);		/* the server's reference */
}

static void
begin_stop(dmx_server *s, const char *why)
{
	dmx_conn *c, *next;

	if (s->stopping)
		return;
	s->stopping = 1;
	s->drain_deadline = dmx_now_ns() +
	    (uint64_t)dmx_server_config(s)->drain_timeout_ms * 1000000u;
	dmx_info("%s: draining: no new connections, $/drain to %u "
	    "connection(s), new requests answered -32012, up to %u ms for "
	    "those in flight", why, s->nconns,
	    dmx_server_config(s)->drain_timeout_ms);
	close_listeners(s);
	for (c = s->conns; c != NULL; c = next) {
		next = c->next;
		if (s->stdio)
			dmx_conn_stop_reading(c);
		else
			dmx_conn_drain(c);
	}
}

int
dmx_server_timer_add(dmx_server *s, dmx_job *j, uint64_t at)
{
	int rc = dmx_timers_add(&s->timers, j, at, j->route->timeout_ms);

	if (rc < 0)	/* without memory the deadline is lost, not the job */
		dmx_warn("out of memory for a deadline of %s", j->route->name);
	return rc > 0;
}

int
dmx_server_timer_del(dmx_server *s, dmx_job *j)
{
	return dmx_timers_del(&s->timers, j);
}

/* Fire every deadline that has passed; return ms until the next, or -1. */
static int
run_timers(dmx_server *s)
{
	uint64_t now = dmx_now_ns();
	dmx_timer t;

	while (dmx_timers_pop_due(&s->timers, now, &t))
		dmx_conn_expire(t.job->conn, t.job, t.seq, t.timeout_ms);
	return dmx_timers_next_ms(&s->timers, now);
}

/*
 * idle_timeout_ms: close connections that have sent nothing for that long
 * and have nothing running (a slowloris, a client that forgot us, one that
 * sent a bad frame, one that stopped reading its answers);
 * frame_timeout_ms: close those whose frame began that long ago and is
 * still incomplete. One scan every quarter of the shorter; returns ms
 * until the next scan, -1 if neither is set.
 */
static int
close_idle(dmx_server *s)
{
	const dmx_config *cfg = dmx_server_config(s);
	uint64_t now = dmx_now_ns(), idle_ns, frame_ns, shortest, step;
	dmx_conn *c, *next;

	if (s->stopping)
		return -1;
	idle_ns = (uint64_t)cfg->idle_timeout_ms * 1000000u;
	frame_ns = (uint64_t)cfg->frame_timeout_ms * 1000000u;
	if (idle_ns == 0 && frame_ns == 0)
		return -1;
	shortest = idle_ns == 0 ? frame_ns : frame_ns == 0 ? idle_ns :
	    idle_ns < frame_ns ? idle_ns : frame_ns;
	step = shortest / 4 > 1000000u ? shortest / 4 : 1000000u;
	if (now < s->next_idle_check)
		return (int)((s->next_idle_check - now) / 1000000u) + 1;
	s->next_idle_check = now + step;
	for (c = s->conns; c != NULL; c = next) {
		next = c->next;		/* c may be freed */
		dmx_conn_check_timeouts(c, now, idle_ns, frame_ns);
	}
	return (int)(step / 1000000u) + 1;
}

/*
 * While draining: connections idle since their $/drain linger (see
 * dmx_conn_attend) until their clients close or DMX_DRAIN_LINGER_MS pass.
 * Attend those whose time is up; returns ms until the next, -1 if none.
 */
static int
end_lingering(dmx_server *s)
{
	uint64_t now = dmx_now_ns(), linger = DMX_DRAIN_LINGER_MS * 1000000ull,
	    left, soonest = 0;
	dmx_conn *c, *next;

	for (c = s->conns; c != NULL; c = next) {
		next = c->next;		/* attend may free c */
		if (c->drain_idle_since == 0)
			continue;
		if (now - c->drain_idle_since >= linger) {
			dmx_conn_attend(c);
			continue;
		}
		left = linger - (now - c->drain_idle_since);
		if (soonest == 0 || left < soonest)
			soonest = left;
	}
	return soonest ? (int)(soonest / 1000000u) + 1 : -1;
}

/* The drain deadline passed: answer what is still in flight -32012. */
static void
abandon_all(dmx_server *s)
{
	dmx_conn *c, *next;
	unsigned n = 0;

	s->abandoned = 1;
	for (c = s->conns; c != NULL; c = next) {
		next = c->next;
		n += dmx_conn_abandon(c);
	}
	dmx_warn("drain_timeout_ms (%u) passed: %u request(s) still in "
	    "flight answered -32012", dmx_server_config(s)->drain_timeout_ms,
	    n);
}

int
dmx_server_busy_workers(dmx_server *s)
{
	dmx_pool_info pi;
	const dmx_gen *g;
	size_t i;
	int busy;

	dmx_pool_info_get(s->pool, 0, &pi);
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
			dmx_pool_info_get(p->pool, 0, &pi);
			busy += pi.busy;
		}
	return busy;
}

static void
on_signal(dmx_server *s)
{
	struct signalfd_siginfo si;

	while (read(s->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
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

/* Attend to every connection on the attention list. `woke`: the eventfd
 * fired and must be reset. */
static void
on_wake(dmx_server *s, int woke)
{
	uint64_t v;
	dmx_conn *c, *next;

	if (woke && read(s->wakefd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		dmx_warn("eventfd read: %s", strerror(errno));
	pthread_mutex_lock(&s->attn_mu);
	c = s->attn_head;
	s->attn_head = NULL;
	pthread_mutex_unlock(&s->attn_mu);
	for (; c != NULL; c = next) {
		/* attn_next is read before attend, which may free c */
		pthread_mutex_lock(&c->mu);
		next = c->attn_next;
		pthread_mutex_unlock(&c->mu);
		dmx_conn_attend(c);
	}
}

int
dmx_server_run(dmx_server *s)
{
	struct epoll_event evs[256];
	int n, i, woke, timeout;
	uint64_t now;

	for (;;) {
		if ((s->stopping || s->stdio) && s->conns == NULL) {
			/* handlers of connections that went away may still
			 * run: their plugins' fini must wait for them, up to
			 * the drain deadline */
			if (s->abandoned || dmx_server_busy_workers(s) == 0)
				break;
		}
		timeout = run_timers(s);
		if (timeout >= 0)
			on_wake(s, 0);	/* act on what the answers changed */
		reap_dead(s);
		mem_resume(s);
		if (s->listen_paused_until != 0 && !s->stopping) {
			uint64_t t = dmx_now_ns();

			if (t >= s->listen_paused_until)
				listeners_watch(s, 1);
			else if (timeout < 0 || timeout > LISTEN_PAUSE_MS)
				timeout = LISTEN_PAUSE_MS;
		}
		{
			int idle = close_idle(s);

			if (idle >= 0) {
				on_wake(s, 0);
				if (timeout < 0 || idle < timeout)
					timeout = idle;
			}
		}
		if (s->stopping && !s->abandoned) {
			now = dmx_now_ns();
			if (now >= s->drain_deadline) {
				abandon_all(s);
				on_wake(s, 0);
				continue;
			}
			{
				int d = (int)((s->drain_deadline - now) /
				    1000000u) + 1, l = end_lingering(s);

				if (timeout < 0 || d < timeout)
					timeout = d;
				if (l >= 0 && l < timeout)
					timeout = l;
			}
			/* nothing signals a worker becoming idle: look again
			 * soon while only workers remain */
			if (s->conns == NULL && timeout > 10)
				timeout = 10;
		} else if (s->stdio && s->conns == NULL) {
			timeout = 10;
		}
		n = epoll_wait(s->epfd, evs, 256, timeout);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			dmx_error("epoll_wait: %s", strerror(errno));
			return -1;
		}
		woke = 0;
		for (i = 0; i < n; i++) {
			dmx_ev *e = evs[i].data.ptr;
			uint32_t f = evs[i].events;

			switch (e->kind) {
			case DMX_EV_LISTEN:
				if (!s->stopping)
					on_accept(s, (dmx_listener *)e);
				break;
			case DMX_EV_SIGNAL:
				on_signal(s);
				break;
			case DMX_EV_WAKE:
				woke = 1;
				break;	/* the attention list is read below */
			case DMX_EV_CONN: {
				dmx_conn *c = (dmx_conn *)e;

				/* connections are only released by on_wake,
				 * after the whole batch: a later event in the
				 * batch never points to a freed connection */
				if (f & (EPOLLOUT | EPOLLERR | EPOLLHUP) &&
				    c->events & EPOLLOUT)
					dmx_conn_on_writable(c);
				if (f & (EPOLLIN | EPOLLERR | EPOLLHUP) &&
				    c->events & EPOLLIN)
					dmx_conn_on_readable(c);
				break;
			}
			}
		}
		on_wake(s, woke);
	}
	if (s->stdio && !s->stopping)
		dmx_info("stdio connection closed: stopping");
	close_listeners(s);
	return 0;
}

void
dmx_server_free(dmx_server *s)
{
	dmx_conn *c;

	if (s == NULL)
		return;
	close_listeners(s);
	while ((c = s->conns) != NULL)
		dmx_conn_release(c);
	/* runs every queued job; their replies go nowhere and their
	 * connections are freed by the last of them */
	dmx_pool_free(s->pool);
	/* every job is done (the pools were joined above, and connections
	 * are freed by their last job): the current generation goes with the
	 * server's reference, and every retired one has gone already */
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
	free(s->listeners);
	if (s->epfd >= 0)
		close(s->epfd);
	if (s->wakefd >= 0)
		close(s->wakefd);
	if (s->sigfd >= 0)
		close(s->sigfd);
	if (s->reserve_fd >= 0)
		close(s->reserve_fd);
	/* deadlines still pending hold their connections: let them go */
	{
		dmx_timer t;

		while (dmx_timers_pop_due(&s->timers, UINT64_MAX, &t))
			dmx_conn_expire(t.job->conn, t.job, t.seq,
			    t.timeout_ms);
	}
	dmx_timers_free(&s->timers);
	dmx_buf_release(&s->scratch);
	pthread_mutex_destroy(&s->attn_mu);
	pthread_mutex_destroy(&s->gen_mu);
	pthread_mutex_destroy(&s->dead_mu);
	free(s);
}
