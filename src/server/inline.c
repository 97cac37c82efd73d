/*
 * inline.c - run to completion and the loop's standby; see inline.h.
 *
 * Ownership of the loop is one word, `word` = epoch << 1 | running: the
 * owner knows its epoch (a thread-local) and sets `running` around each
 * inline batch; the standby takes the loop over by moving the word to the
 * next epoch, which it may only do while a batch runs. The owner ends a
 * batch with a compare-and-swap from its own running word back to its idle
 * one: if that fails, the loop was taken, and it must not touch loop state
 * again. The seq_cst word is also what hands the loop's state from one
 * thread to the other: everything the old owner did before it started the
 * batch happens before the standby's successful swap.
 *
 * The standby's sleep: with nothing running inline, it waits on cv with no
 * timeout, and an owner that begins a batch wakes it (only then: `sleeping`
 * set). The owner sets the word then reads `sleeping`; the standby sets
 * `sleeping` then reads the word, both sequentially consistent, so one of
 * them sees the other: it never sleeps through a batch that stalls.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <msgpack.h>

#include "../common/clock.h"
#include "conn.h"
#include "inline.h"
#include "log.h"
#include "plugin_host.h"
#include "router.h"

struct dmx_inline {
	/* the owner's: what this pass added */
	dmx_job		*head, *tail;
	unsigned	 npass;

	_Atomic uint64_t word;		/* epoch << 1 | running */
	_Atomic uint64_t seq;		/* batches begun */
	_Atomic uint64_t since;		/* when the running batch began, ns */
	/* the `slow` mark of the method running inline now: the standby
	 * sets it as it takes over (the route cannot be freed meanwhile:
	 * generations are freed by the loop's owner, which is stalled in
	 * that very job, or the standby itself) */
	_Atomic int *_Atomic running_slow;

	pthread_mutex_t	 mu;
	pthread_cond_t	 cv;
	_Atomic int	 sleeping;	/* the standby waits with no timeout */
	int		 stop;		/* mu */

	/* one decoding zone per thread that owns the loop at some time */
	msgpack_zone	 zone[2];
	_Atomic uint64_t *runs, *takeovers;
	/* the thresholds of inline.h times DEMUX_INLINE_SLOWDOWN */
	uint32_t	 fast_ns;
	uint64_t	 stall_ns;
};

/* The one run time over which a method is never inlined again (job.c
 * reads it for every run): DMX_INLINE_MAX_NS, times the slowdown. */
_Atomic uint64_t dmx_inline_max_ns = DMX_INLINE_MAX_NS;

/* The epoch this thread owns the loop in, and its zone: the thread that
 * ran dmx_server_run first owns epoch 0 with zone 0; whoever takes the
 * loop over gets the next epoch, and the other zone. */
static __thread uint64_t own_epoch;
static __thread int own_zone;

dmx_inline *
dmx_inline_new(_Atomic uint64_t *runs, _Atomic uint64_t *takeovers)
{
	dmx_inline *in = calloc(1, sizeof(*in));
	pthread_condattr_t ca;
	const char *env;
	unsigned long f;

	if (in == NULL)
		return NULL;
	if (!msgpack_zone_init(&in->zone[0], 4096) ||
	    !msgpack_zone_init(&in->zone[1], 4096)) {
		msgpack_zone_destroy(&in->zone[0]);
		free(in);
		return NULL;
	}
	pthread_mutex_init(&in->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&in->cv, &ca);
	pthread_condattr_destroy(&ca);
	in->runs = runs;
	in->takeovers = takeovers;
	in->fast_ns = DMX_INLINE_NS;
	in->stall_ns = DMX_INLINE_STALL_NS;
	/* code under a sanitizer or valgrind runs many times slower: scale
	 * what "fast" and "stalled" mean, or nothing would qualify */
	if ((env = getenv("DEMUX_INLINE_SLOWDOWN")) != NULL &&
	    (f = strtoul(env, NULL, 10)) > 1 && f <= 1000) {
		in->fast_ns *= (uint32_t)f;
		in->stall_ns *= f;
		atomic_store(&dmx_inline_max_ns, (uint64_t)DMX_INLINE_MAX_NS *
		    f);
	}
	return in;
}

void
dmx_inline_free(dmx_inline *in)
{
	if (in == NULL)
		return;
	msgpack_zone_destroy(&in->zone[0]);
	msgpack_zone_destroy(&in->zone[1]);
	pthread_cond_destroy(&in->cv);
	pthread_mutex_destroy(&in->mu);
	free(in);
}

int
dmx_inline_eligible(const dmx_inline *in, const dmx_job *head, unsigned n)
{
	const dmx_job *j;
	uint32_t avg;

	if (in == NULL || n > DMX_INLINE_BATCH)
		return 0;
	for (j = head; j != NULL; j = j->next) {
		const dmx_route *rt = j->route;

		if (!rt->plugin->inline_ok ||
		    atomic_load_explicit(&rt->stats->slow, memory_order_relaxed))
			return 0;
		/* UINT32_MAX: never ran, not measured yet */
		avg = atomic_load_explicit(&rt->stats->avg_ns,
		    memory_order_relaxed);
		if (avg >= in->fast_ns)
			return 0;
	}
	return 1;
}

int
dmx_inline_add(dmx_inline *in, dmx_job *head, dmx_job *tail, unsigned n)
{
	if (in->npass + n > DMX_INLINE_PASS)
		return 0;
	in->npass += n;
	tail->next = NULL;
	if (in->tail != NULL)
		in->tail->next = head;
	else
		in->head = head;
	in->tail = tail;
	return 1;
}

int
dmx_inline_pending(const dmx_inline *in)
{
	return in != NULL && in->head != NULL;
}

int
dmx_inline_run(dmx_inline *in)
{
	msgpack_zone *zone = &in->zone[own_zone];
	dmx_job *j, *next, *out = NULL, **tail = &out;
	uint64_t idle = own_epoch << 1, busy = idle | 1, now, e, n = 0;

	j = in->head;
	in->head = in->tail = NULL;
	in->npass = 0;
	now = dmx_now_ns();
	atomic_fetch_add(&in->seq, 1);
	atomic_store(&in->since, now);
	atomic_store(&in->word, busy);
	if (atomic_load(&in->sleeping)) {
		pthread_mutex_lock(&in->mu);
		pthread_cond_signal(&in->cv);
		pthread_mutex_unlock(&in->mu);
	}
	for (; j != NULL; j = next) {
		next = j->next;
		j->next = NULL;
		if (!dmx_conn_admit(j))
			continue;	/* parked: its executor runs it later */
		atomic_store(&in->running_slow, &j->route->stats->slow);
		n++;
		if (dmx_job_run(j, zone, &now) == 0) {
			*tail = j;
			tail = &j->next;
		}
		msgpack_zone_clear(zone);
	}
	atomic_store(&in->running_slow, NULL);
	if (out != NULL)
		dmx_conn_send_list(out, NULL);
	atomic_fetch_add_explicit(in->runs, n, memory_order_relaxed);
	e = busy;
	return atomic_compare_exchange_strong(&in->word, &e, idle) ? 0 :
	    DMX_INLINE_LOST;
}

static void
deadline_in(struct timespec *ts, uint64_t ns)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += (time_t)(ns / 1000000000u);
	ts->tv_nsec += (long)(ns % 1000000000u);
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

int
dmx_inline_standby(dmx_inline *in)
{
	uint64_t w, seq, seen = UINT64_MAX, since, now;
	_Atomic int *slow;
	struct timespec ts;
	int quiet = 0;

	pthread_mutex_lock(&in->mu);
	for (;;) {
		if (in->stop) {
			pthread_mutex_unlock(&in->mu);
			return 0;
		}
		w = atomic_load(&in->word);
		seq = atomic_load(&in->seq);
		since = atomic_load(&in->since);
		now = dmx_now_ns();
		if ((w & 1) && seq == seen && now - since >= in->stall_ns) {
			/* the same batch for a whole period and more: take the
			 * loop (fails if it just ended: look again) */
			if (!atomic_compare_exchange_strong(&in->word, &w,
			    ((w >> 1) + 1) << 1))
				continue;
			slow = atomic_load(&in->running_slow);
			if (slow != NULL)
				atomic_store(slow, 1);
			own_epoch = (w >> 1) + 1;
			own_zone = (int)(own_epoch & 1);
			atomic_fetch_add_explicit(in->takeovers, 1,
			    memory_order_relaxed);
			pthread_mutex_unlock(&in->mu);
			dmx_warn("a request run on the I/O thread (inline: "
			    "auto) still runs after %llu ms: another thread "
			    "took over the loop; its method is not run inline "
			    "again (set inline: never for a plugin whose "
			    "methods can block)",
			    (unsigned long long)((now - since) / 1000000u));
			return 1;
		}
		quiet = !(w & 1) && seq == seen ? quiet + 1 : 0;
		seen = seq;
		if (quiet >= 2) {
			/* nothing ran inline for two looks: sleep until a
			 * batch begins (see the top of the file) */
			atomic_store(&in->sleeping, 1);
			if (!(atomic_load(&in->word) & 1) &&
			    atomic_load(&in->seq) == seen && !in->stop)
				pthread_cond_wait(&in->cv, &in->mu);
			atomic_store(&in->sleeping, 0);
			quiet = 0;
			continue;
		}
		deadline_in(&ts, in->stall_ns / 2);
		pthread_cond_timedwait(&in->cv, &in->mu, &ts);
	}
}

void
dmx_inline_stop(dmx_inline *in)
{
	pthread_mutex_lock(&in->mu);
	in->stop = 1;
	pthread_cond_broadcast(&in->cv);
	pthread_mutex_unlock(&in->mu);
}
