/*
 * endpoint.c - a call's way out of the handle: checking its arguments,
 * counting its caller in, picking an endpoint's connection, deciding after
 * each attempt what comes next (the one retry elsewhere, picking again,
 * waiting for a connection), and waiting. Sync calls (mux.c), async calls
 * (async.c) and parked calls (supervise.c) all follow mh_next_attempt;
 * none decides on its own.
 *
 * Locks: eplock (read side) while picking; mu for the up epoch. Neither is
 * held on return.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/wire.h"
#include "handle.h"

/* ---- entering and leaving the API ---- */

void
mh_enter(mux_t *m)
{
	atomic_fetch_add(&m->users, 1);
}

void
mh_leave(mux_t *m)
{
	if (atomic_fetch_sub(&m->users, 1) == 1 && atomic_load(&m->freeing)) {
		pthread_mutex_lock(&m->mu);
		pthread_cond_broadcast(&m->users_cv);
		pthread_mutex_unlock(&m->mu);
	}
}

/* params must be exactly one msgpack array: anything else would corrupt the
 * stream for every other caller. */
int
mh_check_args(mux_t *m, const char *method, const void *params, size_t len,
    mux_result *res)
{
	dmx_rd r;

	if (m == NULL || method == NULL || (len > 0 && params == NULL)) {
		if (res != NULL)
			mh_set_msg(res, "invalid argument");
		return MUX_EINVAL;
	}
	if (len > 0) {
		dmx_rd_init(&r, params, len);
		if (!dmx_rd_is_array(&r) ||
		    dmx_wire_one_object(params, len) != len) {
			if (res != NULL)
				mh_set_msg(res, "invalid argument: params must "
				    "be one msgpack array");
			return MUX_EINVAL;
		}
	}
	if (len > atomic_load(&m->max_frame)) {
		if (res != NULL)
			mh_set_msg(res, "params larger than the frame limit");
		return MUX_ETOOBIG;
	}
	return MUX_OK;
}

/* ---- choosing an endpoint ---- */

/*
 * The open, non-draining connection with the fewest calls in flight, other
 * than endpoint `skip` (-1: none); referenced, with its index. NULL when
 * there is none, with *why MUX_ECLOSED, MUX_EDRAINING (some endpoint is up
 * but draining) or MUX_ENOTCONN, and a reason in res.
 */
mc_conn *
mh_pick(mux_t *m, int skip, unsigned *idx, unsigned *gen, int *why,
    mux_result *res)
{
	mc_conn *best = NULL, *c;
	unsigned i, k, start, n, bestn = ~0u, draining = 0;
	int down = -1;			/* the first endpoint found down */
	char reason[MUX_ERRLEN] = "";

	if (atomic_load(&m->closed)) {
		*why = MUX_ECLOSED;
		if (res != NULL)
			mh_set_msg(res, "the handle was closed (mux_close)");
		return NULL;
	}
	start = m->nep > 1 ? atomic_fetch_add_explicit(&m->rr, 1,
	    memory_order_relaxed) % m->nep : 0;
	pthread_rwlock_rdlock(&m->eplock);
	for (k = 0; k < m->nep; k++) {
		i = start + k < m->nep ? start + k : start + k - m->nep;
		c = m->ep[i].conn;
		if ((int)i == skip)
			continue;
		if (c == NULL || !mc_is_open(c)) {
			if (down < 0)
				down = (int)i;
			continue;
		}
		if (mc_is_draining(c) ||
		    atomic_load_explicit(&m->ep[i].health_draining,
		    memory_order_relaxed)) {
			draining++;
			continue;
		}
		n = mc_inflight(c);
		if (n < bestn) {
			best = c;
			bestn = n;
			*idx = i;
		}
	}
	if (best == NULL && draining == 0) {
		/* an endpoint that refused our $/auth: its answer stands */
		for (k = 0; k < m->nep && !m->ep[k].auth_refused; k++)
			;
		if (k < m->nep && (int)k != skip) {
			*why = MUX_EREMOTE;
			if (res != NULL) {
				res->code = m->ep[k].auth_code;
				mh_set_msg(res, "%s", m->ep[k].why);
			}
			pthread_rwlock_unlock(&m->eplock);
			return NULL;
		}
	}
	if (best != NULL) {
		mc_ref(best);
		*gen = m->ep[*idx].gen;
	} else if (res != NULL && down >= 0) {
		/* only a failed pick says why, so the hot path never copies
		 * a reason; the connection is safe to read under eplock */
		c = m->ep[down].conn;
		if (c != NULL)
			mc_why(c, reason, sizeof(reason));
		else
			snprintf(reason, sizeof(reason), "%s", m->ep[down].why);
	}
	pthread_rwlock_unlock(&m->eplock);
	if (best != NULL)
		return best;
	if (draining) {
		*why = MUX_EDRAINING;
		if (res != NULL)
			mh_set_msg(res, "%s", mux_strerror(MUX_EDRAINING));
	} else {
		*why = MUX_ENOTCONN;
		if (res != NULL)
			mh_set_msg(res, "not connected%s%s%s; the call was not "
			    "sent", reason[0] ? " (" : "", reason,
			    reason[0] ? ")" : "");
	}
	return NULL;
}

/* Certainly not executed: refused before sending, overloaded, or refused
 * by a draining server (which says so in a fixed prefix, see protocol.h). */
static int
retryable(int rc, const mux_result *res)
{
	if (rc == MUX_ENOTCONN || rc == MUX_EDRAINING)
		return 1;
	if (rc != MUX_EREMOTE)
		return 0;
	switch (res->code) {	/* the retry column of demux/protocol.h */
#define RETRY_CASE(name, code, meaning, retry) case (code):		\
		if ((retry) == DEMUX_RETRY_SAFE)			\
			return 1;					\
		if ((retry) == DEMUX_RETRY_PREFIX)			\
			return res->message != NULL &&			\
			    strncmp(res->message,			\
			    DEMUX_NOT_EXECUTED_DRAINING,		\
			    sizeof(DEMUX_NOT_EXECUTED_DRAINING) - 1) == 0; \
		return 0;
	DEMUX_PROTOCOL_ERRORS(RETRY_CASE)
#undef RETRY_CASE
	default:
		return 0;	/* a plugin's own code: its effect is its own */
	}
}

/* Wait until a connection is made after epoch e0, the handle closes or *dl
 * passes. Returns 0 to try again, -1 on timeout. */
int
mh_wait_up(mux_t *m, uint64_t e0, const struct timespec *dl)
{
	int rc = 0;

	pthread_mutex_lock(&m->mu);
	while (m->up_epoch == e0 && !atomic_load(&m->closed) && rc == 0) {
		if (dl == NULL)
			pthread_cond_wait(&m->up_cv, &m->mu);
		else if (pthread_cond_timedwait(&m->up_cv, &m->mu, dl) ==
		    ETIMEDOUT)
			rc = -1;
	}
	if (m->up_epoch != e0 || atomic_load(&m->closed))
		rc = 0;
	pthread_mutex_unlock(&m->mu);
	return rc;
}

uint64_t
mh_up_epoch(mux_t *m)
{
	uint64_t e;

	pthread_mutex_lock(&m->mu);
	e = m->up_epoch;
	pthread_mutex_unlock(&m->mu);
	return e;
}

int
mh_can_wait(mux_t *m)
{
	return m->opt.wait_connected && m->sup_started;
}

/*
 * The one retry policy. A call is sent once more, on another endpoint, only
 * when it was certainly not executed (retryable above) and there is another
 * endpoint; at most once, so that a call never runs twice and a storm of
 * refusals never doubles the load. A call refused before it was sent, with
 * nowhere else to go, is picked again once (the pick then says why, or
 * waits for a connection if the handle waits). Everything else stands.
 */
int
mh_next_attempt(mux_t *m, mh_try *t, unsigned ep, int rc,
    const mux_result *res)
{
	int never_sent = rc == MUX_ENOTCONN || rc == MUX_EDRAINING;

	t->sends++;
	if (rc == MUX_OK || atomic_load(&m->closed))
		return MH_DONE;
	if (!t->retried && m->nep > 1 && retryable(rc, res)) {
		t->retried = 1;
		t->skip = (int)ep;
		return MH_ELSEWHERE;
	}
	if (never_sent && !t->retried && t->sends < 2)
		return MH_AGAIN;
	return MH_DONE;
}

int
mh_first_stands(const mh_try *t, int rc)
{
	return t->retried && (rc == MUX_ENOTCONN || rc == MUX_EDRAINING);
}
