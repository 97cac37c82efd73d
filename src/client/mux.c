/*
 * mux.c - the libmux handle: opening and closing it, its endpoints' info,
 * and sync calls. endpoint.c picks a connection and decides each call's
 * next attempt (the one retry); async.c runs async calls and delivers
 * their completions; supervise.c reconnects, probes and sends parked
 * calls; conn.c is one connection. See include/demux/mux.h for the
 * contract.
 *
 * DESIGN
 *
 * A handle holds a fixed array of endpoints. Each endpoint's current
 * connection (or NULL while it is down) is swapped only by the supervisor
 * thread, under the write side of eplock; a caller picks a connection under
 * the read side and takes a reference, so a swap never frees a connection a
 * caller is using. The supervisor exists only when there is something to
 * supervise (reconnects or health checks): it replaces broken connections,
 * reconnects with jittered exponential backoff, asks $/health, sends calls
 * that were waiting for a connection and fails those whose time ran out. It
 * sleeps on a condition variable that connections kick when they stop.
 *
 * Async calls (async.c) are heap records holding an mc_call. The
 * connection completes them on its reader thread by calling async_done,
 * which either sends the call once more elsewhere (certainly not executed),
 * parks it until a connection is up, or queues the completion. Queued
 * completions run on one dispatcher thread, started on first use, or, with
 * the completion_fd option, in mux_dispatch on the application's thread,
 * signalled through an eventfd. Either way no callback runs on a reader
 * thread, so a callback that blocks, or makes a blocking call, never stops
 * responses from being read.
 *
 * Locks: eplock (endpoint connections), mu (supervisor state, parked calls,
 * the up epoch), qmu (the completion queue). None is held while calling into
 * a connection that may call back (mc_start, mc_unref), and none while a
 * callback runs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "../common/wire.h"
#include "handle.h"

extern char **environ;

static void
deadline_ts(struct timespec *ts, int timeout_ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += timeout_ms / 1000;
	ts->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

/* ---- sync calls ---- */

int
mux_call_token(mux_t *m, const char *method, const void *params, size_t len,
    mux_result *res, int timeout_ms, mux_token *tok)
{
	struct timespec dl, *dlp = NULL;
	mux_result first;		/* the answer a retry replaces */
	mh_try t = MH_TRY_INIT;
	mc_call call;
	mc_conn *c;
	unsigned ep = 0, gen = 0;
	int rc, first_rc = MUX_OK, next;
	uint64_t e0;

	memset(res, 0, sizeof(*res));
	if ((rc = mh_check_args(m, method, params, len, res)) != MUX_OK)
		return rc;
	if (timeout_ms > 0) {
		deadline_ts(&dl, timeout_ms);
		dlp = &dl;
	}
	memset(&first, 0, sizeof(first));
	mh_enter(m);
	for (;;) {
		mux_result_free(res);	/* what a refused attempt left */
		e0 = mh_can_wait(m) ? mh_up_epoch(m) : 0;
		c = mh_pick(m, t.skip, &ep, &gen, &rc, res);
		if (c == NULL && t.retried &&
		    !(first_rc == MUX_ENOTCONN && mh_can_wait(m))) {
			/* nowhere else to retry: the first answer stands */
			mux_result_free(res);
			*res = first;
			memset(&first, 0, sizeof(first));
			rc = first_rc;
			break;
		}
		if (c == NULL) {
			if (rc == MUX_ENOTCONN && mh_can_wait(m)) {
				/* wait for any endpoint, the first one too */
				t.skip = -1;
				if (mh_wait_up(m, e0, dlp) == 0)
					continue;
				free(res->message);
				res->message = strdup("no endpoint connected "
				    "within the timeout; the call was not sent");
			}
			break;
		}
		memset(&call, 0, sizeof(call));
		call.res = res;
		atomic_fetch_add_explicit(&m->calls, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&m->ep[ep].calls, 1,
		    memory_order_relaxed);
		rc = mc_start(c, &call, method, params, len);
		if (rc == MUX_OK) {
			mh_token_set(tok, mh_token(ep, gen, call.msgid));
			rc = mc_wait(c, &call, dlp);
			mh_token_set(tok, 0);
		}
		mc_unref(c);
		next = mh_next_attempt(m, &t, ep, rc, res);
		if (next == MH_ELSEWHERE) {
			first = *res;
			first_rc = rc;
			memset(res, 0, sizeof(*res));
			atomic_fetch_add_explicit(&m->retries, 1,
			    memory_order_relaxed);
			continue;
		}
		if (next == MH_AGAIN)
			continue;	/* the next pick sees why, or waits */
		if (mh_first_stands(&t, rc)) {
			/* the retry was refused: the first answer stands */
			mux_result_free(res);
			*res = first;
			memset(&first, 0, sizeof(first));
			rc = first_rc;
		}
		break;
	}
	mh_leave(m);
	mux_result_free(&first);
	if (rc != MUX_OK && rc != MUX_EREMOTE)
		mh_set_msg(res, "%s", mux_strerror(rc));
	return rc;
}

int
mux_call(mux_t *m, const char *method, const void *params, size_t len,
    mux_result *res, int timeout_ms)
{
	return mux_call_token(m, method, params, len, res, timeout_ms, NULL);
}

int
mux_cancel(mux_t *m, mux_token *tok)
{
	unsigned long long v;
	unsigned ep, gen;
	mc_conn *c = NULL;

	if (m == NULL || tok == NULL ||
	    (v = __atomic_load_n(&tok->opaque, __ATOMIC_ACQUIRE)) == 0)
		return MUX_EINVAL;
	ep = (unsigned)(v >> 48) - 1;
	gen = (unsigned)(v >> 32) & 0xffff;
	if (ep >= m->nep)
		return MUX_EINVAL;
	pthread_rwlock_rdlock(&m->eplock);
	if (m->ep[ep].conn != NULL && (m->ep[ep].gen & 0xffff) == gen) {
		c = m->ep[ep].conn;
		mc_ref(c);
	}
	pthread_rwlock_unlock(&m->eplock);
	if (c == NULL)
		return MUX_EINVAL;	/* its connection is gone, and it */
	mc_cancel(c, (uint32_t)v);
	mc_unref(c);
	return MUX_OK;
}

int
mux_notify(mux_t *m, const char *method, const void *params, size_t len)
{
	unsigned ep, gen;
	mc_conn *c;
	int rc;

	if ((rc = mh_check_args(m, method, params, len, NULL)) != MUX_OK)
		return rc;
	mh_enter(m);
	c = mh_pick(m, -1, &ep, &gen, &rc, NULL);
	if (c != NULL) {
		rc = mc_notify(c, method, params, len);
		mc_unref(c);
	}
	mh_leave(m);
	return rc;
}

/* ---- opening and closing ---- */

void
mux_options_init(mux_options *o)
{
	memset(o, 0, sizeof(*o));
	o->size = sizeof(*o);
	o->reconnect = 1;
	o->backoff_min_ms = 100;
	o->backoff_max_ms = 5000;
	o->wait_connected = 0;
	o->connect_timeout_ms = 2000;
	o->health_interval_ms = 1000;
	o->completion_fd = 0;
	o->max_frame = MUX_DEFAULT_MAX_FRAME;
}

static void
cond_init_mono(pthread_cond_t *cv)
{
	pthread_condattr_t ca;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(cv, &ca);
	pthread_condattr_destroy(&ca);
}

/* A handle with n endpoints and no connections yet. */
static mux_t *
handle_new(unsigned n, const mux_options *o, char *err, size_t errlen)
{
	mux_t *m;
	unsigned i;

	m = calloc(1, sizeof(*m));
	if (m != NULL)
		m->ep = calloc(n, sizeof(*m->ep));
	if (m == NULL || m->ep == NULL) {
		free(m);
		mh_set_err(err, errlen, "out of memory");
		errno = ENOMEM;
		return NULL;
	}
	mux_options_init(&m->opt);
	if (o != NULL)
		memcpy(&m->opt, o, o->size < sizeof(m->opt) && o->size != 0 ?
		    o->size : sizeof(m->opt));
	m->opt.size = sizeof(m->opt);
	if (m->opt.auth_name != NULL && m->opt.auth_secret != NULL) {
		m->auth_name = strdup(m->opt.auth_name);
		m->auth_secret = strdup(m->opt.auth_secret);
	}
	m->opt.auth_name = m->opt.auth_secret = NULL;	/* not the caller's */
#define DUP_OPT(f) if (m->opt.f != NULL) m->f = strdup(m->opt.f); \
	m->opt.f = NULL
	DUP_OPT(tls_ca);
	DUP_OPT(tls_cert);
	DUP_OPT(tls_key);
	DUP_OPT(tls_server_name);
#undef DUP_OPT
	if (m->opt.backoff_min_ms <= 0)
		m->opt.backoff_min_ms = 100;
	if (m->opt.backoff_max_ms < m->opt.backoff_min_ms)
		m->opt.backoff_max_ms = m->opt.backoff_min_ms;
	if (m->opt.health_interval_ms < 0)
		m->opt.health_interval_ms = 0;
	m->max_frame = m->opt.max_frame >= 64 ? m->opt.max_frame :
	    MUX_DEFAULT_MAX_FRAME;
	m->nep = n;
	for (i = 0; i < n; i++) {
		m->ep[i].m = m;
		m->ep[i].idx = i;
		m->ep[i].probe.ep = &m->ep[i];
	}
	pthread_rwlock_init(&m->eplock, NULL);
	pthread_mutex_init(&m->mu, NULL);
	pthread_mutex_init(&m->qmu, NULL);
	cond_init_mono(&m->cv);
	cond_init_mono(&m->up_cv);
	pthread_cond_init(&m->qcv, NULL);
	pthread_cond_init(&m->users_cv, NULL);
	m->qfd = -1;
	if (m->opt.completion_fd) {
		m->qfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (m->qfd < 0) {
			mh_set_err(err, errlen, "eventfd: %s", strerror(errno));
			mux_free(m);
			return NULL;
		}
	}
	return m;
}

/* Split a comma-separated list into endpoints of a new handle. */
static mux_t *
parse_list(const char *list, const mux_options *o, char *err, size_t errlen)
{
	const char *p, *e;
	char one[sizeof(((dmx_uri *)0)->host) + 128];
	unsigned n = 1, i;
	size_t l;
	mux_t *m;

	for (p = list; *p; p++)
		n += *p == ',';
	if (n > 0xfffe) {
		mh_set_err(err, errlen, "too many endpoints");
		errno = EINVAL;
		return NULL;
	}
	if ((m = handle_new(n, o, err, errlen)) == NULL)
		return NULL;
	for (p = list, i = 0; i < n; i++, p = e + 1) {
		e = strchr(p, ',');
		if (e == NULL)
			e = p + strlen(p);
		while (p < e && (*p == ' ' || *p == '\t'))
			p++;
		l = (size_t)(e - p);
		while (l > 0 && (p[l - 1] == ' ' || p[l - 1] == '\t'))
			l--;
		if (l == 0 || l >= sizeof(one)) {
			mh_set_err(err, errlen, "endpoint %u of '%s': %s", i + 1,
			    list, l ? "too long" : "empty");
			goto bad;
		}
		memcpy(one, p, l);
		one[l] = '\0';
		if (dmx_uri_parse(one, &m->ep[i].addr, err, errlen) != 0)
			goto bad;
		if (m->ep[i].addr.tls && m->tls_ctx == NULL &&
		    mh_tls_init(m, err, errlen) != 0)
			goto bad;
		m->ep[i].uri = strdup(one);
		if (m->ep[i].uri == NULL) {
			mh_set_err(err, errlen, "out of memory");
			goto bad;
		}
		m->ep[i].can_connect = 1;
	}
	return m;
bad:
	mux_free(m);
	errno = EINVAL;
	return NULL;
}

mux_t *
mux_open(const char *endpoints, const mux_options *o, char *err,
    size_t errlen)
{
	char why[MUX_ERRLEN];
	mux_t *m;
	mc_conn *c;
	unsigned i;

	if (endpoints == NULL) {
		mh_set_err(err, errlen, "no address");
		errno = EINVAL;
		return NULL;
	}
	if ((m = parse_list(endpoints, o, err, errlen)) == NULL)
		return NULL;
	for (i = 0; i < m->nep; i++) {
		c = mh_ep_connect(m, &m->ep[i], why, sizeof(why));
		if (c == NULL && !m->opt.reconnect) {
			mh_set_err(err, errlen, "%s", why);
			mux_free(m);
			errno = ECONNREFUSED;
			return NULL;
		}
		mh_ep_swap(m, &m->ep[i], c, c == NULL ? why : NULL);
		if (c == NULL)
			m->ep[i].retry_at = dmx_now_ns() +
			    mh_backoff_ns(&m->opt, m->ep[i].fails++);
		else
			m->ep[i].health_at = dmx_now_ns() +
			    m->opt.health_interval_ms * 1000000ull;
	}
	if (mh_supervisor_start(m, err, errlen) != 0) {
		mux_free(m);
		return NULL;
	}
	return m;
}

mux_t *
mux_connect(const char *uri, char *err, size_t errlen)
{
	mux_options o;

	mux_options_init(&o);
	o.reconnect = 0;
	o.health_interval_ms = 0;
	return mux_open(uri, &o, err, errlen);
}

/* A handle over one existing connection (fds or a child). */
static mux_t *
mux_wrap(int rfd, int wfd, pid_t child, const char *name, char *err,
    size_t errlen)
{
	mux_options o;
	mc_conn *c;
	mux_t *m;

	mux_options_init(&o);
	o.reconnect = 0;
	o.health_interval_ms = 0;
	m = handle_new(1, &o, err, errlen);
	if (m == NULL || (m->ep[0].uri = strdup(name)) == NULL) {
		mh_set_err(err, errlen, "out of memory");
		mux_free(m);
		if (wfd != rfd)
			close(wfd);
		close(rfd);
		return NULL;
	}
	c = mh_conn_start(m, &m->ep[0], rfd, wfd, child, err, errlen);
	if (c == NULL) {
		mux_free(m);
		return NULL;
	}
	mh_ep_swap(m, &m->ep[0], c, NULL);
	return m;
}

mux_t *
mux_open_fds(int rfd, int wfd, char *err, size_t errlen)
{
	if (rfd < 0 || wfd < 0) {
		mh_set_err(err, errlen, "invalid file descriptors");
		errno = EBADF;
		return NULL;
	}
	return mux_wrap(rfd, wfd, 0, "fd", err, errlen);
}

mux_t *
mux_spawn(char *const argv[], char *err, size_t errlen)
{
	posix_spawn_file_actions_t fa;
	int in[2], out[2], rc;
	pid_t pid;

	if (argv == NULL || argv[0] == NULL) {
		mh_set_err(err, errlen, "no program to spawn");
		errno = EINVAL;
		return NULL;
	}
	if (pipe2(in, O_CLOEXEC) != 0) {
		mh_set_err(err, errlen, "pipe: %s", strerror(errno));
		return NULL;
	}
	if (pipe2(out, O_CLOEXEC) != 0) {
		mh_set_err(err, errlen, "pipe: %s", strerror(errno));
		close(in[0]);
		close(in[1]);
		return NULL;
	}
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, in[0], STDIN_FILENO);
	posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
	rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(in[0]);
	close(out[1]);
	if (rc != 0) {
		mh_set_err(err, errlen, "cannot run %s: %s", argv[0],
		    strerror(rc));
		close(in[1]);
		close(out[0]);
		errno = rc;
		return NULL;
	}
	return mux_wrap(out[0], in[1], pid, "spawn", err, errlen);
}

void
mux_set_max_frame(mux_t *m, size_t bytes)
{
	unsigned i;

	if (bytes < 64)
		return;
	atomic_store(&m->max_frame, bytes);
	pthread_rwlock_rdlock(&m->eplock);
	for (i = 0; i < m->nep; i++)
		if (m->ep[i].conn != NULL)
			mc_set_max_frame(m->ep[i].conn, bytes);
	pthread_rwlock_unlock(&m->eplock);
}

int
mux_draining(mux_t *m)
{
	unsigned i, draining = 0, serving = 0;
	mc_conn *c;

	pthread_rwlock_rdlock(&m->eplock);
	for (i = 0; i < m->nep; i++) {
		c = m->ep[i].conn;
		if (c == NULL || !mc_is_open(c))
			continue;
		if (mc_is_draining(c) ||
		    atomic_load(&m->ep[i].health_draining))
			draining++;
		else
			serving++;
	}
	pthread_rwlock_unlock(&m->eplock);
	return draining > 0 && serving == 0;
}

uint64_t
mux_late_responses(mux_t *m)
{
	uint64_t v = atomic_load(&m->late_retired);
	unsigned i;

	pthread_rwlock_rdlock(&m->eplock);
	for (i = 0; i < m->nep; i++)
		if (m->ep[i].conn != NULL)
			v += mc_late(m->ep[i].conn);
	pthread_rwlock_unlock(&m->eplock);
	return v;
}

int
mux_endpoint(mux_t *m, unsigned i, mux_endpoint_info *info)
{
	mh_ep *ep;
	mc_conn *c;

	if (m == NULL || info == NULL || i >= m->nep)
		return MUX_EINVAL;
	ep = &m->ep[i];
	memset(info, 0, sizeof(*info));
	info->uri = ep->uri;
	info->calls = atomic_load(&ep->calls);
	info->connects = atomic_load(&ep->connects);
	info->connect_failures = atomic_load(&ep->connect_failures);
	pthread_rwlock_rdlock(&m->eplock);
	c = ep->conn;
	if (c != NULL && mc_is_open(c)) {
		info->connected = 1;
		info->draining = mc_is_draining(c) ||
		    atomic_load(&ep->health_draining);
		info->inflight = mc_inflight(c);
	} else if (c != NULL) {
		mc_why(c, info->why, sizeof(info->why));
	} else {
		snprintf(info->why, sizeof(info->why), "%s", ep->why);
	}
	pthread_rwlock_unlock(&m->eplock);
	return MUX_OK;
}

void
mux_get_stats(mux_t *m, mux_stats *st)
{
	mux_endpoint_info info;
	unsigned i;

	memset(st, 0, sizeof(*st));
	st->calls = atomic_load(&m->calls);
	st->retries = atomic_load(&m->retries);
	st->late = mux_late_responses(m);
	st->endpoints = m->nep;
	for (i = 0; i < m->nep; i++) {
		mux_endpoint(m, i, &info);
		st->connects += info.connects;
		st->up += info.connected && !info.draining;
	}
}

void
mux_close(mux_t *m)
{
	unsigned i;

	if (m == NULL || atomic_exchange(&m->closed, 1))
		return;
	pthread_rwlock_rdlock(&m->eplock);
	for (i = 0; i < m->nep; i++)
		if (m->ep[i].conn != NULL)
			mc_close(m->ep[i].conn);
	pthread_rwlock_unlock(&m->eplock);
	pthread_mutex_lock(&m->mu);
	m->kick = 1;
	pthread_cond_signal(&m->cv);
	pthread_cond_broadcast(&m->up_cv);
	pthread_mutex_unlock(&m->mu);
	if (!m->sup_started)
		mh_service_parked(m, dmx_now_ns());
}

void
mux_free(mux_t *m)
{
	unsigned i;
	mc_conn *c;

	if (m == NULL)
		return;
	mux_close(m);
	mh_supervisor_stop(m);
	atomic_store(&m->freeing, 1);
	pthread_mutex_lock(&m->mu);
	while (atomic_load(&m->users) > 0)
		pthread_cond_wait(&m->users_cv, &m->mu);
	pthread_mutex_unlock(&m->mu);
	/* close the connections (mux_close did, but the supervisor may have
	 * made one after it looked): their readers complete every async call
	 * still on them (MUX_ECLOSED) and stop; wait for the last */
	for (i = 0; i < m->nep; i++) {
		c = mh_ep_swap(m, &m->ep[i], NULL, NULL);
		if (c != NULL) {
			mc_close(c);	/* its reader stops only then */
			mc_unref(c);
		}
	}
	pthread_mutex_lock(&m->mu);
	while (m->readers > 0)
		pthread_cond_wait(&m->users_cv, &m->mu);
	pthread_mutex_unlock(&m->mu);
	mh_service_parked(m, dmx_now_ns());		/* none can be sent now */
	mh_async_finish(m);	/* every callback has run */
	for (i = 0; i < m->nep; i++)
		free(m->ep[i].uri);
	free(m->ep);
	free(m->auth_name);
	free(m->tls_ca);
	free(m->tls_cert);
	free(m->tls_key);
	free(m->tls_server_name);
	mh_tls_fini(m);
	if (m->auth_secret != NULL) {
		explicit_bzero(m->auth_secret, strlen(m->auth_secret));
		free(m->auth_secret);
	}
	pthread_cond_destroy(&m->users_cv);
	pthread_cond_destroy(&m->qcv);
	pthread_cond_destroy(&m->up_cv);
	pthread_cond_destroy(&m->cv);
	pthread_mutex_destroy(&m->qmu);
	pthread_mutex_destroy(&m->mu);
	pthread_rwlock_destroy(&m->eplock);
	free(m);
}
