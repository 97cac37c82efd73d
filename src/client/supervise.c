/*
 * supervise.c - the handle's background work: replacing broken
 * connections, reconnecting with jittered exponential backoff, $/health
 * probes, and sending (or timing out) calls parked until a connection is up.
 * One supervisor thread per handle that needs it, asleep on m->cv between
 * deadlines; connections kick it when they stop.
 *
 * Locks: m->eplock (write side) to swap an endpoint's connection, m->mu for
 * the supervisor's own state and the parked calls; never both at once, and
 * neither while a connection is opened, probed or closed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
#include <sys/random.h>
#include <time.h>

#include <msgpack.h>

#include "../common/buf.h"
#include "../common/wire.h"
#include "handle.h"

#define HEALTH_TIMEOUT_MS	10000

static uint64_t
rand_u64(void)
{
	uint64_t v;

	if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v))
		v = dmx_now_ns() * 6364136223846793005ull + 1442695040888963407ull;
	return v;
}

/* The delay before attempt `fails` + 1: exponential, capped, jittered to
 * 50..100 % so that many clients of one restarted server do not all come
 * back in the same instant. */
uint64_t
mh_backoff_ns(const mux_options *o, unsigned fails)
{
	uint64_t d = (uint64_t)o->backoff_min_ms * 1000000u;
	uint64_t cap = (uint64_t)o->backoff_max_ms * 1000000u;

	while (fails-- > 0 && d < cap)
		d *= 2;
	if (d > cap)
		d = cap;
	return d / 2 + rand_u64() % (d / 2 + 1);
}

/* Called by a connection's reader as its last act: the supervisor looks
 * for the broken connection, and mux_free counts the reader out. */
static void
on_conn_stop(void *arg)
{
	mh_ep *ep = arg;
	mux_t *m = ep->m;

	pthread_mutex_lock(&m->mu);
	m->kick = 1;
	pthread_cond_signal(&m->cv);
	if (--m->readers == 0)
		pthread_cond_broadcast(&m->users_cv);
	pthread_mutex_unlock(&m->mu);
}

/* Start a connection for ep over fds it takes; counts its reader in. */
/* $/auth [name, secret] on a new connection, before anyone may use it.
 * 0, or -1 with why in err; a refusal marks ep (not reconnected). */
static int
authenticate(mux_t *m, mh_ep *ep, mc_conn *c, char *err, size_t errlen)
{
	struct timespec dl;
	dmx_buf b = DMX_BUF_INIT;
	msgpack_packer pk;
	mux_result res;
	mc_call call;
	int rc, ms = m->opt.connect_timeout_ms > 0 ?
	    m->opt.connect_timeout_ms : 2000;

	msgpack_packer_init(&pk, &b, dmx_buf_pack_write);
	msgpack_pack_array(&pk, 2);
	dmx_pack_cstr(&pk, m->auth_name);
	dmx_pack_cstr(&pk, m->auth_secret);
	memset(&res, 0, sizeof(res));
	memset(&call, 0, sizeof(call));
	call.res = &res;
	clock_gettime(CLOCK_MONOTONIC, &dl);
	dl.tv_sec += ms / 1000;
	dl.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (dl.tv_nsec >= 1000000000L) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000L;
	}
	rc = mc_start(c, &call, "$/auth", b.data, b.len);
	if (rc == MUX_OK)
		rc = mc_wait(c, &call, &dl);
	explicit_bzero(b.data, b.len);
	dmx_buf_release(&b);
	if (rc == MUX_EREMOTE) {
		mh_set_err(err, errlen, "$/auth as %s refused: %s (%lld)",
		    m->auth_name, res.message ? res.message : "",
		    (long long)res.code);
		pthread_rwlock_wrlock(&m->eplock);
		ep->auth_refused = 1;
		ep->auth_code = res.code;
		pthread_rwlock_unlock(&m->eplock);
	} else if (rc != MUX_OK) {
		mh_set_err(err, errlen, "$/auth: %s", res.message ?
		    res.message : mux_strerror(rc));
	}
	mux_result_free(&res);
	return rc == MUX_OK ? 0 : -1;
}

static mc_conn *
conn_start(mux_t *m, mh_ep *ep, dmx_xport *x, int rfd, int wfd, pid_t child,
    char *err, size_t errlen)
{
	mc_conn *c;

	pthread_mutex_lock(&m->mu);
	m->readers++;
	pthread_mutex_unlock(&m->mu);
	c = x != NULL ? mc_open_xport(x, 0, atomic_load(&m->max_frame),
	    on_conn_stop, ep, err, errlen) : mc_open(rfd, wfd, child,
	    atomic_load(&m->max_frame), on_conn_stop, ep, err, errlen);
	if (c == NULL) {
		pthread_mutex_lock(&m->mu);
		m->readers--;
		pthread_mutex_unlock(&m->mu);
		return NULL;
	}
	mc_set_notify(c, mh_on_notify, m);
	mc_set_in_place(c, m->opt.results_in_place);
	/* a handle that wants notifications has them read as they come */
	mc_keep_reader(c, atomic_load(&m->notify_fn) != NULL);
	if (m->auth_name != NULL && authenticate(m, ep, c, err, errlen) != 0) {
		mc_close(c);
		mc_unref(c);
		return NULL;
	}
	return c;
}

mc_conn *
mh_conn_start(mux_t *m, mh_ep *ep, int rfd, int wfd, pid_t child, char *err,
    size_t errlen)
{
	return conn_start(m, ep, NULL, rfd, wfd, child, err, errlen);
}

mc_conn *
mh_conn_start_x(mux_t *m, mh_ep *ep, dmx_xport *x, char *err, size_t errlen)
{
	return conn_start(m, ep, x, -1, -1, 0, err, errlen);
}

/* "serving" and "draining" are 9 bytes: anything much larger is not a
 * health answer */
#define HEALTH_MAX_ANSWER 64

static void
probe_done(mc_call *call)
{
	mh_probe *p = (mh_probe *)call;
	const char *s;
	uint32_t n;
	dmx_rd r;

	/* read the answer's first string header in place: whatever a server
	 * sends, a probe decodes nothing else (mux_unpack would build the
	 * whole object, ~24 bytes per element) */
	dmx_rd_init(&r, p->res.data, p->res.len);
	if (call->rc == MUX_OK && p->res.len <= HEALTH_MAX_ANSWER &&
	    dmx_rd_str(&r, &s, &n) == 0)
		atomic_store(&p->ep->health_draining,
		    n == 8 && memcmp(s, "draining", 8) == 0);
	mux_result_free(&p->res);
	atomic_store(&p->busy, 0);
}

static void
probe(mh_ep *ep, mc_conn *c)
{
	mh_probe *p = &ep->probe;

	if (atomic_load(&p->busy) || mc_is_draining(c))
		return;
	atomic_store(&p->busy, 1);
	memset(&p->call, 0, sizeof(p->call));
	p->call.res = &p->res;
	p->call.on_done = probe_done;
	p->call.deadline_ns = dmx_now_ns() + HEALTH_TIMEOUT_MS * 1000000ull;
	if (mc_start(c, &p->call, "$/health", NULL, 0) != MUX_OK)
		atomic_store(&p->busy, 0);
}

/* Connect endpoint ep now (supervisor or mux_open). */
mc_conn *
mh_ep_connect(mux_t *m, mh_ep *ep, char *err, size_t errlen)
{
	int fd;

	fd = dmx_uri_connect(&ep->addr, m->opt.connect_timeout_ms, err,
	    errlen);
	if (fd < 0)
		return NULL;
	if (ep->addr.tls) {
		dmx_xport *x = mh_tls_connect(m, ep, fd, err, errlen);

		return x ? mh_conn_start_x(m, ep, x, err, errlen) : NULL;
	}
	return mh_conn_start(m, ep, fd, fd, 0, err, errlen);
}

/* Make c the endpoint's connection (NULL: down); returns the old one for
 * the caller to release. */
mc_conn *
mh_ep_swap(mux_t *m, mh_ep *ep, mc_conn *c, const char *why)
{
	mc_conn *old;

	pthread_rwlock_wrlock(&m->eplock);
	old = ep->conn;
	ep->conn = c;
	if (c != NULL)
		ep->gen++;
	if (why != NULL)
		snprintf(ep->why, sizeof(ep->why), "%s", why);
	pthread_rwlock_unlock(&m->eplock);
	if (c != NULL) {
		atomic_store(&ep->health_draining, 0);
		atomic_fetch_add(&ep->connects, 1);
	}
	return old;
}

/* Send the parked calls again, or fail those past their deadline (or all,
 * when the handle is closed). Returns the next deadline (ns), 0 if none. */
uint64_t
mh_service_parked(mux_t *m, uint64_t now)
{
	mh_async *list, *a, *next, *keep = NULL;
	uint64_t next_dl = 0;
	int rc, none;

	pthread_mutex_lock(&m->mu);
	list = m->parked;
	m->parked = NULL;
	pthread_mutex_unlock(&m->mu);
	for (a = list; a != NULL; a = next) {
		next = a->next;
		if (atomic_load(&m->closed)) {
			mh_set_msg(&a->res, "the handle was closed (mux_close)");
			mh_deliver(a, MUX_ECLOSED);
			continue;
		}
		if (a->deadline != 0 && a->deadline <= now) {
			mh_set_msg(&a->res, "no endpoint connected within the "
			    "timeout; the call was not sent");
			mh_deliver(a, MUX_ENOTCONN);
			continue;
		}
		rc = mh_async_send(m, a, &none);
		if (rc == MUX_OK)
			continue;
		if (rc == MUX_ENOTCONN && none) {
			a->next = keep;
			keep = a;
			if (a->deadline != 0 &&
			    (next_dl == 0 || a->deadline < next_dl))
				next_dl = a->deadline;
			continue;
		}
		mh_deliver(a, rc);
	}
	if (keep != NULL) {
		pthread_mutex_lock(&m->mu);
		for (a = keep; a != NULL; a = next) {
			next = a->next;
			a->next = m->parked;
			m->parked = a;
		}
		pthread_mutex_unlock(&m->mu);
	}
	return next_dl;
}

static void
soonest(uint64_t *next, uint64_t t)
{
	if (t != 0 && t < *next)
		*next = t;
}

static void *
sup_main(void *arg)
{
	mux_t *m = arg;
	uint64_t now, next, hi = m->opt.health_interval_ms * 1000000ull;
	char err[MUX_ERRLEN];
	struct timespec ts;
	mc_conn *c, *old;
	mh_ep *ep;
	unsigned i;
	int up;

	pthread_mutex_lock(&m->mu);
	while (!m->stop) {
		m->kick = 0;
		pthread_mutex_unlock(&m->mu);
		now = dmx_now_ns();
		next = now + 3600ull * 1000000000u;
		up = 0;
		for (i = 0; i < m->nep && !atomic_load(&m->closed); i++) {
			ep = &m->ep[i];
			c = ep->conn;	/* only this thread changes it */
			if (c != NULL && !mc_is_open(c)) {
				/* broken: take it out, retry soon */
				mc_why(c, err, sizeof(err));
				old = mh_ep_swap(m, ep, NULL, err);
				atomic_fetch_add(&m->late_retired, mc_late(old));
				mc_unref(old);
				c = NULL;
				ep->fails = 0;
				ep->retry_at = now + (m->opt.reconnect ?
				    mh_backoff_ns(&m->opt, 0) : 0);
			}
			if (c == NULL && m->opt.reconnect && ep->can_connect &&
			    !ep->auth_refused && now >= ep->retry_at) {
				c = mh_ep_connect(m, ep, err, sizeof(err));
				now = dmx_now_ns();
				if (c == NULL) {
					atomic_fetch_add(&ep->connect_failures,
					    1);
					mh_ep_swap(m, ep, NULL, err);
					ep->retry_at = now +
					    mh_backoff_ns(&m->opt, ++ep->fails);
				} else {
					mh_ep_swap(m, ep, c, NULL);
					/* mux_close closes what it finds under
					 * eplock; one installed after it looked
					 * is closed here */
					if (atomic_load(&m->closed))
						mc_close(c);
					ep->fails = 0;
					ep->health_at = now + hi;
					up = 1;
				}
			}
			if (c == NULL) {
				if (m->opt.reconnect && ep->can_connect)
					soonest(&next, ep->retry_at);
				continue;
			}
			if (hi != 0) {
				if (now >= ep->health_at) {
					probe(ep, c);
					ep->health_at = now + hi;
				}
				soonest(&next, ep->health_at);
			}
		}
		if (up) {
			pthread_mutex_lock(&m->mu);
			m->up_epoch++;
			pthread_cond_broadcast(&m->up_cv);
			pthread_mutex_unlock(&m->mu);
		}
		soonest(&next, mh_service_parked(m, dmx_now_ns()));

		ts.tv_sec = (time_t)(next / 1000000000u);
		ts.tv_nsec = (long)(next % 1000000000u);
		pthread_mutex_lock(&m->mu);
		while (!m->kick && !m->stop &&
		    pthread_cond_timedwait(&m->cv, &m->mu, &ts) != ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&m->mu);
	return NULL;
}

int
mh_supervisor_start(mux_t *m, char *err, size_t errlen)
{
	int rc;

	if (!m->opt.reconnect && m->opt.health_interval_ms == 0)
		return 0;
	rc = pthread_create(&m->sup, NULL, sup_main, m);
	if (rc != 0) {
		mh_set_err(err, errlen, "cannot start the supervisor thread: %s",
		    strerror(rc));
		errno = rc;
		return -1;
	}
	m->sup_started = 1;
	return 0;
}

void
mh_supervisor_stop(mux_t *m)
{
	if (!m->sup_started)
		return;
	pthread_mutex_lock(&m->mu);
	m->stop = 1;
	pthread_cond_signal(&m->cv);
	pthread_mutex_unlock(&m->mu);
	pthread_join(m->sup, NULL);
	m->sup_started = 0;
}
