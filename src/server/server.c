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

/* A deadline: a min-heap entry. The job may have finished (and even been
 * reused: seq tells) by the time it comes up. */
typedef struct dmx_timer {
	uint64_t	 at;
	uint64_t	 seq;
	dmx_conn	*conn;
	dmx_job		*job;
	unsigned	 timeout_ms;
} dmx_timer;

typedef struct dmx_listener {
	dmx_ev		ev;		/* first */
	int		fd;
	dmx_uri		uri;
	char	       *text;		/* as configured (owned) */
	struct dmx_listener *next;
} dmx_listener;

/* A plugin swapped out by a reload, waiting for its last job. */
typedef struct dmx_retired {
	dmx_plugin	   *plugin;
	const dmx_router   *router;	/* whose routes count its jobs */
	struct dmx_retired *next;
} dmx_retired;

struct dmx_server {
	/* swapped by a reload; workers and the metrics thread read them */
	const dmx_config *_Atomic cfg;
	const dmx_router *_Atomic router;
	dmx_pool	*pool;		/* the shared pool */
	dmx_pool	**own_pools;	/* plugins' own pools */
	size_t		 nown;
	int		 epfd;
	dmx_ev		 wake_ev;
	int		 wakefd;	/* eventfd: attention list non-empty */
	dmx_ev		 sig_ev;
	int		 sigfd;
	dmx_listener	*listeners;	/* list */
	/* reloads: generations the server made and owns, and plugins waiting
	 * for their last job */
	dmx_plugin	**initial;	/* main's plugin array (entries may be
					 * unloaded and set to NULL here) */
	size_t		 ninitial;
	dmx_plugin	**live;		/* plugins of the current generation */
	size_t		 nlive;
	dmx_config	**cfgs;		/* configurations loaded by reloads */
	size_t		 ncfgs;
	dmx_router	**routers;	/* routers built by reloads */
	size_t		 nrouters;
	dmx_retired	*retired;
	unsigned	 generation;
	dmx_conn	*conns;		/* I/O thread only */
	unsigned	 nconns;
	unsigned	 next_id;
	int		 stdio;		/* serving one stdio connection */
	_Atomic int	 stopping;	/* read by the metrics thread too */
	uint64_t	 drain_deadline; /* ns; 0 until a signal */
	int		 abandoned;	/* the drain deadline passed */
	uint64_t	 next_idle_check; /* ns */
	dmx_timer	*timers;	/* min-heap by `at` (I/O thread) */
	size_t		 ntimers, captimers;
	dmx_buf		 scratch;
	dmx_server_stats stats;

	pthread_mutex_t	 attn_mu;
	dmx_conn	*attn_head;	/* protected by attn_mu */
};

const dmx_config *
dmx_server_config(const dmx_server *s)
{
	return s->cfg;
}

const dmx_router *
dmx_server_router(const dmx_server *s)
{
	return s->router;
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

static int own_pool_add(dmx_server *s, dmx_pool *p);
static void reload(dmx_server *s);
static void reap_retired(dmx_server *s);
static void plugin_drop(dmx_server *s, dmx_plugin *p);

dmx_server *
dmx_server_new(const dmx_config *cfg, const dmx_router *router, char *err,
    size_t errlen)
{
	dmx_server *s;
	struct epoll_event ev;
	sigset_t set;
	size_t i;

	s = calloc(1, sizeof(*s));
	if (s == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	s->cfg = cfg;
	s->router = router;
	s->stats.started_ns = dmx_now_ns();
	s->epfd = s->wakefd = s->sigfd = -1;
	pthread_mutex_init(&s->attn_mu, NULL);
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

	s->pool = dmx_pool_new(cfg->workers, cfg->max_threads, cfg->queue, err,
	    errlen);
	if (s->pool == NULL)
		goto fail;
	/* plugins with `workers:` get a pool of their own, so that a slow
	 * plugin cannot starve the others */
	for (i = 0; i < dmx_router_count(router); i++) {
		dmx_plugin *pl = dmx_router_at(router, i)->plugin;

		if (pl->workers == 0 || pl->pool != NULL)
			continue;
		pl->pool = dmx_pool_new(pl->workers, 0, pl->queue, err, errlen);
		if (pl->pool == NULL || own_pool_add(s, pl->pool) != 0) {
			snprintf(err, errlen, "cannot start the pool of plugin "
			    "'%s'", pl->name);
			goto fail;
		}
	}
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
	const dmx_config *cfg = s->cfg;
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

/* Too many connections: say why, best effort, and close. */
static void
refuse(int fd, unsigned max)
{
	char msg[96];
	uint8_t buf[128];
	size_t n, ml;

	ml = (size_t)snprintf(msg, sizeof(msg),
	    "too many connections (max_connections %u)", max);
	n = 0;
	buf[n++] = 0x93;			/* [2, "$/error", [code, msg]] */
	buf[n++] = DMX_MSG_NOTIFY;
	buf[n++] = 0xa7;
	memcpy(buf + n, "$/error", 7);
	n += 7;
	buf[n++] = 0x92;
	buf[n++] = 0xd1;			/* int16 -32010 */
	buf[n++] = (uint8_t)((uint16_t)DMX_E_OVERLOADED >> 8);
	buf[n++] = (uint8_t)((uint16_t)DMX_E_OVERLOADED & 0xff);
	buf[n++] = (uint8_t)(0xd9);
	buf[n++] = (uint8_t)ml;
	memcpy(buf + n, msg, ml);
	n += ml;
	if (send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
		dmx_debug("refuse: %s", strerror(errno));
	close(fd);
}

static void
on_accept(dmx_server *s, dmx_listener *l)
{
	int fd;

	for (;;) {
		fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				dmx_warn("accept on %s: %s", l->text,
				    strerror(errno));
			return;
		}
		if (s->nconns >= s->cfg->max_connections) {
			dmx_warn("refusing a connection on %s: max_connections "
			    "(%u) reached", l->text, s->cfg->max_connections);
			refuse(fd, s->cfg->max_connections);
			continue;
		}
		if (l->uri.kind == DMX_URI_TCP) {
			int one = 1;

			setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one,
			    sizeof(one));
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

static int
own_pool_add(dmx_server *s, dmx_pool *p)
{
	dmx_pool **a = realloc(s->own_pools, (s->nown + 1) * sizeof(*a));

	if (a == NULL)
		return -1;
	s->own_pools = a;
	s->own_pools[s->nown++] = p;
	return 0;
}

static void
own_pool_remove(dmx_server *s, dmx_pool *p)
{
	size_t i;

	for (i = 0; i < s->nown; i++)
		if (s->own_pools[i] == p) {
			s->own_pools[i] = s->own_pools[--s->nown];
			return;
		}
}

static int
ptr_add(void ***arr, size_t *n, void *p)
{
	void **a = realloc(*arr, (*n + 1) * sizeof(*a));

	if (a == NULL)
		return -1;
	*arr = a;
	a[(*n)++] = p;
	return 0;
}

void
dmx_server_set_plugins(dmx_server *s, dmx_plugin **plugins, size_t n)
{
	s->initial = plugins;
	s->ninitial = n;
	s->live = calloc(n ? n : 1, sizeof(*s->live));
	if (s->live != NULL) {
		memcpy(s->live, plugins, n * sizeof(*plugins));
		s->nlive = n;
	}
}

/* Unload a plugin whose last job is done; forget it in main's array. */
static void
plugin_drop(dmx_server *s, dmx_plugin *p)
{
	size_t i;

	if (p->pool != NULL) {
		own_pool_remove(s, p->pool);
		dmx_pool_free(p->pool);
		p->pool = NULL;
	}
	for (i = 0; i < s->ninitial; i++)
		if (s->initial[i] == p)
			s->initial[i] = NULL;
	dmx_plugin_unload(p);
}

/* Retired plugins whose jobs have all been answered: fini, dlclose. */
static void
reap_retired(dmx_server *s)
{
	dmx_retired **pp = &s->retired, *r;
	size_t i, n;
	uint64_t inflight;

	while ((r = *pp) != NULL) {
		inflight = 0;
		n = dmx_router_count(r->router);
		for (i = 0; i < n; i++) {
			const dmx_route *rt = dmx_router_at(r->router, i);
			uint64_t c, d;

			if (rt->plugin != r->plugin)
				continue;
			c = atomic_load(&rt->stats->m.calls);
			d = atomic_load(&rt->stats->m.dispatched);
			inflight += d > c ? d - c : 0;
		}
		if (inflight == 0 && dmx_pool_running(r->plugin->pool ?
		    r->plugin->pool : s->pool, NULL, r->plugin) == 0) {
			dmx_info("reload: plugin '%s' (%s) had its last job: "
			    "unloading the old code", r->plugin->name,
			    r->plugin->path);
			plugin_drop(s, r->plugin);
			*pp = r->next;
			free(r);
		} else {
			pp = &r->next;
		}
	}
}

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
 * not load) leaves the running configuration exactly as it was. Otherwise:
 * unchanged plugins are kept as they are (same instance, same state), new
 * and changed ones are loaded from a private copy of their file (a changed
 * .so at the same path really is new code), routing switches in one store,
 * jobs already dispatched finish on the code they started with, and old
 * plugins are finalised and unloaded once their last job is answered.
 */
static void
reload(dmx_server *s)
{
	const dmx_config *old = s->cfg;
	const dmx_router *old_router = s->router;
	dmx_config *cfg;
	dmx_plugin **np = NULL;
	char *fresh = NULL, err[1024], sig[256];
	dmx_router *r = NULL;
	size_t i, k, nfresh = 0, nretired = 0;

	if (old->file == NULL) {
		dmx_warn("reload: no configuration file to read");
		return;
	}
	dmx_info("reload: reading %s", old->file);
	cfg = calloc(1, sizeof(*cfg));
	if (cfg == NULL || dmx_config_load(old->file, cfg, err,
	    sizeof(err)) != 0) {
		dmx_warn("reload: %s; keeping the running configuration",
		    cfg ? err : "out of memory");
		free(cfg);
		atomic_fetch_add(&s->stats.reload_failures, 1);
		return;
	}
	np = calloc(cfg->nplugins ? cfg->nplugins : 1, sizeof(*np));
	fresh = calloc(cfg->nplugins ? cfg->nplugins : 1, 1);
	if (np == NULL || fresh == NULL) {
		snprintf(err, sizeof(err), "out of memory");
		goto fail;
	}
	for (i = 0; i < cfg->nplugins; i++) {
		dmx_plugin_signature(&cfg->plugins[i], sig, sizeof(sig));
		for (k = 0; k < s->nlive; k++)
			if (strcmp(s->live[k]->sig, sig) == 0)
				break;
		if (k < s->nlive) {
			np[i] = s->live[k];
			continue;
		}
		np[i] = dmx_plugin_load_fresh(&cfg->plugins[i], cfg->file, err,
		    sizeof(err));
		if (np[i] == NULL)
			goto fail;
		fresh[i] = 1;
		nfresh++;
	}
	for (i = 0; i < cfg->nplugins; i++)
		for (k = 0; k < i; k++)
			if (strcmp(np[i]->name, np[k]->name) == 0) {
				snprintf(err, sizeof(err), "%s:%d:%d: duplicate "
				    "plugin '%s'", cfg->file,
				    cfg->plugins[i].line, cfg->plugins[i].col,
				    np[i]->name);
				goto fail;
			}
	r = dmx_router_new(np, cfg->nplugins, err, sizeof(err));
	if (r == NULL)
		goto fail;
	for (i = 0; i < cfg->nplugins; i++) {
		if (!fresh[i] || np[i]->workers == 0)
			continue;
		np[i]->pool = dmx_pool_new(np[i]->workers, 0, np[i]->queue,
		    err, sizeof(err));
		if (np[i]->pool == NULL || own_pool_add(s, np[i]->pool) != 0)
			goto fail;
	}
	if (ptr_add((void ***)&s->cfgs, &s->ncfgs, cfg) != 0 ||
	    ptr_add((void ***)&s->routers, &s->nrouters, r) != 0) {
		snprintf(err, sizeof(err), "out of memory");
		goto fail;
	}

	/* the switch: requests read from now on use the new routes */
	relisten(s, cfg);
	atomic_store(&s->router, r);
	atomic_store(&s->cfg, cfg);
	if (cfg->workers != old->workers || cfg->max_threads != old->max_threads)
		dmx_warn("reload: the shared pool's size changes on restart "
		    "only");
	if (cfg->log_level >= 0)
		dmx_log_set_level(cfg->log_level);

	/* plugins no longer configured as they were: retire them */
	for (k = 0; k < s->nlive; k++) {
		dmx_retired *rt;

		for (i = 0; i < cfg->nplugins && np[i] != s->live[k]; i++)
			;
		if (i < cfg->nplugins)
			continue;
		rt = calloc(1, sizeof(*rt));
		if (rt == NULL) {
			dmx_warn("reload: out of memory: plugin '%s' stays "
			    "loaded", s->live[k]->name);
			continue;
		}
		rt->plugin = s->live[k];
		rt->router = old_router;
		rt->next = s->retired;
		s->retired = rt;
		nretired++;
	}
	free(s->live);
	s->live = np;
	s->nlive = cfg->nplugins;
	free(fresh);
	atomic_fetch_add(&s->stats.reloads, 1);
	dmx_info("reload: %s: %zu plugin(s): %zu kept, %zu loaded, %zu to be "
	    "unloaded after their last job", cfg->file, cfg->nplugins,
	    cfg->nplugins - nfresh, nfresh, nretired);
	reap_retired(s);
	return;
fail:
	dmx_warn("reload: %s; keeping the running configuration", err);
	atomic_fetch_add(&s->stats.reload_failures, 1);
	for (i = 0; np != NULL && i < cfg->nplugins; i++)
		if (fresh[i] && np[i] != NULL) {
			if (np[i]->pool != NULL) {
				own_pool_remove(s, np[i]->pool);
				dmx_pool_free(np[i]->pool);
				np[i]->pool = NULL;
			}
			dmx_plugin_unload(np[i]);
		}
	if (s->nrouters > 0 && s->routers[s->nrouters - 1] == r)
		s->nrouters--;
	if (s->ncfgs > 0 && s->cfgs[s->ncfgs - 1] == cfg)
		s->ncfgs--;
	dmx_router_free(r);
	dmx_config_free(cfg);
	free(cfg);
	free(np);
	free(fresh);
}

static void
begin_stop(dmx_server *s, const char *why)
{
	dmx_conn *c, *next;

	if (s->stopping)
		return;
	s->stopping = 1;
	s->drain_deadline = dmx_now_ns() +
	    (uint64_t)s->cfg->drain_timeout_ms * 1000000u;
	dmx_info("%s: draining: no new connections, $/drain to %u "
	    "connection(s), new requests answered -32012, up to %u ms for "
	    "those in flight", why, s->nconns, s->cfg->drain_timeout_ms);
	close_listeners(s);
	for (c = s->conns; c != NULL; c = next) {
		next = c->next;
		if (s->stdio)
			dmx_conn_stop_reading(c);
		else
			dmx_conn_drain(c);
	}
}

void
dmx_server_timer_add(dmx_server *s, dmx_conn *c, dmx_job *j, uint64_t at)
{
	dmx_timer t, *h;
	size_t i;

	if (s->ntimers == s->captimers) {
		size_t cap = s->captimers ? s->captimers * 2 : 64;

		h = realloc(s->timers, cap * sizeof(*h));
		if (h == NULL) {
			/* without memory the deadline is lost, not the job */
			dmx_warn("out of memory for a deadline of %s",
			    j->route->name);
			pthread_mutex_lock(&c->mu);
			c->timers--;
			pthread_mutex_unlock(&c->mu);
			return;
		}
		s->timers = h;
		s->captimers = cap;
	}
	t.at = at;
	t.seq = j->seq;
	t.conn = c;
	t.job = j;
	t.timeout_ms = j->route->timeout_ms;
	for (i = s->ntimers++; i > 0 && s->timers[(i - 1) / 2].at > at;
	    i = (i - 1) / 2)
		s->timers[i] = s->timers[(i - 1) / 2];
	s->timers[i] = t;
}

static void
timer_pop(dmx_server *s)
{
	dmx_timer last = s->timers[--s->ntimers];
	size_t i = 0, k;

	while ((k = 2 * i + 1) < s->ntimers) {
		if (k + 1 < s->ntimers && s->timers[k + 1].at < s->timers[k].at)
			k++;
		if (last.at <= s->timers[k].at)
			break;
		s->timers[i] = s->timers[k];
		i = k;
	}
	s->timers[i] = last;
}

/* Fire every deadline that has passed; return ms until the next, or -1. */
static int
run_timers(dmx_server *s)
{
	uint64_t now = dmx_now_ns();
	dmx_timer t;

	while (s->ntimers > 0 && s->timers[0].at <= now) {
		t = s->timers[0];
		timer_pop(s);
		dmx_conn_expire(t.conn, t.job, t.seq, t.timeout_ms);
	}
	if (s->ntimers == 0)
		return -1;
	return (int)((s->timers[0].at - now) / 1000000u) + 1;
}

/*
 * idle_timeout_ms: close connections that have sent nothing and have nothing
 * in flight for that long (a slowloris, or a client that forgot us). One
 * scan every quarter of the timeout; returns ms until the next scan.
 */
static int
close_idle(dmx_server *s)
{
	uint64_t now = dmx_now_ns(), idle_ns, step;
	dmx_conn *c, *next;
	unsigned inflight;

	if (s->cfg->idle_timeout_ms == 0 || s->stopping)
		return -1;
	idle_ns = (uint64_t)s->cfg->idle_timeout_ms * 1000000u;
	step = idle_ns / 4 > 1000000u ? idle_ns / 4 : 1000000u;
	if (now < s->next_idle_check)
		return (int)((s->next_idle_check - now) / 1000000u) + 1;
	s->next_idle_check = now + step;
	for (c = s->conns; c != NULL; c = next) {
		next = c->next;
		if (c->rd_closed || c->discard || now - c->last_active < idle_ns)
			continue;
		pthread_mutex_lock(&c->mu);
		inflight = c->inflight;
		pthread_mutex_unlock(&c->mu);
		if (inflight > 0)
			continue;
		dmx_debug("conn %u: idle for %u ms: closing", c->id,
		    s->cfg->idle_timeout_ms);
		dmx_conn_stop_reading(c);
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
	    "flight answered -32012", s->cfg->drain_timeout_ms, n);
}

int
dmx_server_busy_workers(dmx_server *s)
{
	dmx_pool_info pi;
	size_t i;
	int busy;

	dmx_pool_info_get(s->pool, 0, &pi);
	busy = pi.on_demand ? pi.workers : pi.busy;
	for (i = 0; i < s->nown; i++) {
		dmx_pool_info_get(s->own_pools[i], 0, &pi);
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
		if (s->retired != NULL) {
			/* nothing signals a retired plugin's last job: look
			 * again soon */
			reap_retired(s);
			if (s->retired != NULL && (timeout < 0 || timeout > 20))
				timeout = 20;
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
	while (s->nown > 0)
		dmx_pool_free(s->own_pools[--s->nown]);
	free(s->own_pools);
	/* what reloads loaded: the plugins no longer in main's array (every
	 * job is done: the pools were joined above), their routers and
	 * configurations */
	{
		size_t i, k;

		while (s->retired != NULL) {
			dmx_retired *r = s->retired;

			s->retired = r->next;
			r->plugin->pool = NULL;	/* freed above */
			plugin_drop(s, r->plugin);
			free(r);
		}
		for (i = 0; i < s->nlive; i++) {
			for (k = 0; k < s->ninitial; k++)
				if (s->initial[k] == s->live[i])
					break;
			if (k == s->ninitial) {
				s->live[i]->pool = NULL;
				dmx_plugin_unload(s->live[i]);
			}
		}
		free(s->live);
		for (i = 0; i < s->nrouters; i++)
			dmx_router_free(s->routers[i]);
		free(s->routers);
		for (i = 0; i < s->ncfgs; i++) {
			dmx_config_free(s->cfgs[i]);
			free(s->cfgs[i]);
		}
		free(s->cfgs);
	}
	free(s->listeners);
	if (s->epfd >= 0)
		close(s->epfd);
	if (s->wakefd >= 0)
		close(s->wakefd);
	if (s->sigfd >= 0)
		close(s->sigfd);
	/* deadlines still pending hold their connections: let them go */
	while (s->ntimers > 0) {
		dmx_timer t = s->timers[0];

		timer_pop(s);
		dmx_conn_expire(t.conn, t.job, t.seq, t.timeout_ms);
	}
	free(s->timers);
	dmx_buf_release(&s->scratch);
	pthread_mutex_destroy(&s->attn_mu);
	free(s);
}
