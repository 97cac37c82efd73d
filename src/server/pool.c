/*
 * pool.c - the worker pool that runs plugins' process_transaction.
 *
 * Fixed mode: N threads share one FIFO queue under one mutex. A worker loop
 * starts with the lock held: wait, pop one job, unlock, run it, lock again.
 * The submitter adds a whole batch under one lock and wakes at most ONE idle
 * worker; a worker that pops a job and sees more waiting wakes the next one
 * (a chain). So a burst fans out to as many workers as it needs, while a
 * trickle that one awake worker keeps up with costs no wake-ups at all.
 * `wakes` counts signals not yet consumed, so nobody signals twice for the
 * same idle worker.
 *
 * Batches: when the job at the head is of a "fast" method (its measured
 * average run time is under DMX_FAST_NS), a worker takes up to POOL_BATCH
 * consecutive fast jobs at once, runs them, and sends their replies together
 * (one writev per connection instead of one per reply). A slow or not yet
 * measured method is always taken alone, so it never delays other replies
 * nor starves idle workers of jobs.
 *
 * On-demand mode (the recipe's "thread per request"): each job gets a new
 * detached thread, up to max_threads at once. Past the cap the job is handed
 * back for a -32010 answer rather than failing to spawn later.
 *
 * Every thread keeps its own msgpack zone for decoding params, cleared after
 * each job, so decoding does not allocate in the steady state.
 *
 * Written-off workers (fixed mode): a thread cannot be killed, so a handler
 * that never returns would hold its worker for good, and once every worker
 * is held the pool is dead. A worker still on one job past its method's
 * timeout_ms + kill_after_ms is written off instead: its thread is
 * detached and a new one takes its place, up to max_abandoned written off
 * at once. Past that, a write-off goes unreplaced (the pool says so, and
 * $/health answers "unhealthy") until a written-off handler returns: its
 * thread sees the mark and leaves, and the replacement owed starts in its
 * slot. Checked by the I/O thread (dmx_exec_tick, at the next due time)
 * and whenever the figures are read.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "job.h"
#include "log.h"
#include "fatal.h"
#include "pool.h"

/* What a fixed worker is running, for $/stats and /metrics. Readers on
 * other threads compare the pointers and never follow them: the job's
 * generation may be freed by the time they look. */
struct dmx_busy {
	_Atomic uint64_t since;		/* 0 = idle, else ns */
	const void *_Atomic stats;	/* its route's counters */
	const void *_Atomic plugin;
	_Atomic unsigned limit_ms;	/* its method's timeout_ms, or 0 */
	_Atomic unsigned writeoff_ms;	/* timeout_ms + kill_after_ms; 0:
					 * never written off */
	_Atomic int abandoned;		/* written off: its thread leaves when
					 * the handler returns (set under mu) */
};

typedef struct dmx_pool {
	dmx_exec	 base;		/* first: what exec.h's calls see */
	pthread_mutex_t	 mu;
	pthread_cond_t	 cv;		/* workers wait for jobs */
	pthread_cond_t	 done_cv;	/* on-demand: last thread left */
	dmx_job		*head, *tail;	/* protected by mu */
	unsigned	 qlen;		/* protected by mu */
	unsigned	 qmax;		/* bound on qlen; 0: none */
	int		 idle;		/* protected by mu */
	int		 wakes;		/* protected by mu: signals in flight */
	int		 stop;		/* protected by mu */
	int		 nthreads;	/* mu: threads alive (fixed: written-off
					 * ones too); on-demand: running */
	int		 max_threads;
	int		 on_demand;
	/* fixed mode: nslots = workers + max_abandoned slots, each a thread
	 * handle and what it runs; the free ones wait for a replacement */
	int		 nslots;
	pthread_t	*threads;	/* mu */
	uint8_t		*joinable;	/* mu: threads[i] is to be joined */
	struct dmx_busy	*busy;		/* per slot */
	int		*free_slots;	/* mu */
	int		 nfree;		/* mu */
	unsigned	 max_abandoned;
	unsigned	 abandoned;	/* mu: written off, still running */
	unsigned	 owed;		/* mu: write-offs no slot was free to
					 * replace yet (then: unhealthy) */
	int		 warned_full;	/* mu: said max_abandoned is reached */
	size_t		 stack_size;
	dmx_exec_admit_fn admit;
	dmx_exec_done_fn done;
	void		*done_arg;
} dmx_pool;

/* Plugins run on these threads: give them room like a main thread would have
 * (the default is inherited from RLIMIT_STACK). */
#define DMX_WORKER_STACK (2u << 20)
#define POOL_BATCH 32

static int
job_is_fast(const dmx_job *j)
{
	return atomic_load_explicit(&j->route->stats->avg_ns,
	    memory_order_relaxed) < DMX_FAST_NS;
}

typedef struct worker_arg {
	dmx_pool	*pool;
	int		 slot;
} worker_arg;

static void *worker_main(void *arg);

/* Start a fixed worker in slot (mu held, or before any thread runs). */
static int
start_worker(dmx_pool *p, int slot)
{
	pthread_attr_t attr;
	worker_arg *a = malloc(sizeof(*a));
	int rc;

	if (a == NULL)
		return ENOMEM;
	a->pool = p;
	a->slot = slot;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, p->stack_size);
	rc = pthread_create(&p->threads[slot], &attr, worker_main, a);
	pthread_attr_destroy(&attr);
	if (rc != 0) {
		free(a);
		return rc;
	}
	p->joinable[slot] = 1;
	p->nthreads++;
	return 0;
}

static void
busy_set(struct dmx_busy *b, const dmx_route *rt)
{
	atomic_store_explicit(&b->stats, rt ? (const void *)rt->stats : NULL,
	    memory_order_relaxed);
	atomic_store_explicit(&b->plugin, rt ? (const void *)rt->plugin : NULL,
	    memory_order_relaxed);
	atomic_store_explicit(&b->limit_ms, rt ? rt->timeout_ms : 0,
	    memory_order_relaxed);
	atomic_store_explicit(&b->writeoff_ms, rt && rt->timeout_ms > 0 ?
	    rt->timeout_ms + rt->plugin->kill_after_ms : 0,
	    memory_order_relaxed);
}

/* Write off the workers past their limit (mu held); ms until the next one
 * is due, or -1 if none is. */
static int
writeoff_locked(dmx_pool *p, uint64_t now)
{
	int i, next = -1, ms, rc;

	for (i = 0; !p->on_demand && i < p->nslots; i++) {
		struct dmx_busy *b = &p->busy[i];
		uint64_t since = atomic_load_explicit(&b->since,
		    memory_order_relaxed), due;
		unsigned w = atomic_load_explicit(&b->writeoff_ms,
		    memory_order_relaxed);

		if (since == 0 || w == 0 || atomic_load_explicit(&b->abandoned,
		    memory_order_relaxed))
			continue;
		due = since + (uint64_t)w * 1000000u;
		if (now < due) {
			ms = (int)((due - now) / 1000000u) + 1;
			next = next < 0 || ms < next ? ms : next;
			continue;
		}
		/* (if it returned just now, it sees the mark under mu and
		 * leaves anyway: one replacement too many, never one short) */
		atomic_store_explicit(&b->abandoned, 1, memory_order_relaxed);
		p->abandoned++;
		pthread_detach(p->threads[i]);
		p->joinable[i] = 0;
		if (p->nfree > 0 && !p->stop) {
			int slot = p->free_slots[--p->nfree];

			if ((rc = start_worker(p, slot)) != 0) {
				p->free_slots[p->nfree++] = slot;
				dmx_warn("pool: cannot start a worker to replace "
				    "a written-off one: %s", strerror(rc));
			}
			dmx_warn("pool: a worker on one job for %llu ms (past "
			    "its method's timeout_ms + kill_after_ms) is "
			    "written off, and a new one takes its place (%u "
			    "written off, max_abandoned %u)",
			    (unsigned long long)((now - since) / 1000000u),
			    p->abandoned, p->max_abandoned);
		} else {
			/* replaced when a written-off thread leaves */
			p->owed++;
			if (!p->warned_full) {
				p->warned_full = 1;
				dmx_warn("pool: %u workers written off "
				    "(max_abandoned %u): no more are replaced; "
				    "$/health says unhealthy until one returns "
				    "or demuxd restarts", p->abandoned,
				    p->max_abandoned);
			}
		}
	}
	return next;
}

/* The jobs of list that admit lets run now, in order. */
static dmx_job *
admitted(dmx_pool *p, dmx_job *list)
{
	dmx_job *head = NULL, **tail = &head, *j, *next;

	for (j = list; j != NULL; j = next) {
		next = j->next;
		j->next = NULL;
		if (p->admit(j)) {
			*tail = j;
			tail = &j->next;
		}
	}
	return head;
}

static void *
worker_main(void *arg)
{
	worker_arg a = *(worker_arg *)arg;
	dmx_pool *p = a.pool;
	msgpack_zone zone;
	dmx_job *j, *last, *next, **pp;
	uint64_t now;
	int n, me = a.slot;

	free(arg);
	dmx_fatal_thread_begin();
	msgpack_zone_init(&zone, 4096);
	pthread_mutex_lock(&p->mu);
	for (;;) {
		int chain = 0;

		while (p->head == NULL && !p->stop) {
			p->idle++;
			pthread_cond_wait(&p->cv, &p->mu);
			p->idle--;
			if (p->wakes > 0)
				p->wakes--;
		}
		if (p->head == NULL)
			break;		/* stopping and nothing left */
		/* take the head job, and the fast ones right behind a fast
		 * one */
		j = last = p->head;
		n = 1;
		if (job_is_fast(j))
			while (n < POOL_BATCH && last->next != NULL &&
			    job_is_fast(last->next)) {
				last = last->next;
				n++;
			}
		p->head = last->next;
		last->next = NULL;
		p->qlen -= (unsigned)n;
		if (p->head == NULL)
			p->tail = NULL;
		else if (p->idle > p->wakes) {
			p->wakes++;
			chain = 1;
		}
		pthread_mutex_unlock(&p->mu);
		if (chain)
			pthread_cond_signal(&p->cv);
		/* one clock read per batch: a batch is one slow job, or
		 * fast ones */
		if (p->admit != NULL)
			j = admitted(p, j);
		now = dmx_now_ns();
		atomic_store_explicit(&p->busy[me].since, now,
		    memory_order_relaxed);
		/* a job its plugin deferred leaves the batch: the plugin
		 * sends it (defer.c) */
		for (pp = &j; (next = *pp) != NULL;) {
			dmx_job *after = next->next;	/* before it can go */

			busy_set(&p->busy[me], next->route);
			if (dmx_job_run(next, &zone, &now) != 0)
				*pp = after;
			else
				pp = &next->next;
			msgpack_zone_clear(&zone);
		}
		atomic_store_explicit(&p->busy[me].since, 0,
		    memory_order_relaxed);
		busy_set(&p->busy[me], NULL);
		if (j != NULL)
			p->done(j, p->done_arg);
		pthread_mutex_lock(&p->mu);
		if (atomic_load_explicit(&p->busy[me].abandoned,
		    memory_order_relaxed)) {
			/* written off while its handler ran: its replacement
			 * serves; this thread (detached) leaves, and its slot
			 * waits for the next replacement */
			atomic_store_explicit(&p->busy[me].abandoned, 0,
			    memory_order_relaxed);
			p->abandoned--;
			p->nthreads--;
			if (p->owed > 0 && !p->stop &&
			    start_worker(p, me) == 0) {
				/* a write-off that found no free slot gets
				 * its replacement in this one */
				p->owed--;
			} else {
				p->free_slots[p->nfree++] = me;
			}
			if (p->owed == 0)
				p->warned_full = 0;
			break;
		}
	}
	pthread_mutex_unlock(&p->mu);
	msgpack_zone_destroy(&zone);
	dmx_fatal_thread_end();
	return NULL;
}

typedef struct ondemand_arg {
	dmx_pool *pool;
	dmx_job  *job;
} ondemand_arg;

static void *
ondemand_thread(void *arg)
{
	ondemand_arg a = *(ondemand_arg *)arg;
	msgpack_zone zone;
	uint64_t now = dmx_now_ns();

	free(arg);
	dmx_fatal_thread_begin();
	a.job->next = NULL;
	if (a.pool->admit == NULL || a.pool->admit(a.job)) {
		msgpack_zone_init(&zone, 4096);
		if (dmx_job_run(a.job, &zone, &now) == 0)
			a.pool->done(a.job, a.pool->done_arg);
		msgpack_zone_destroy(&zone);
	}
	dmx_fatal_thread_end();
	/* dmx_pool_free waits for nthreads to reach 0, so a.pool is alive */
	pthread_mutex_lock(&a.pool->mu);
	if (--a.pool->nthreads == 0)
		pthread_cond_broadcast(&a.pool->done_cv);
	pthread_mutex_unlock(&a.pool->mu);
	return NULL;
}

static void pool_free(dmx_pool *p);
static const dmx_exec_ops pool_ops;

dmx_exec *
dmx_pool_new(int nworkers, int max_threads, unsigned queue_max,
    unsigned max_abandoned, const dmx_exec_hooks *hooks, char *err,
    size_t errlen)
{
	dmx_pool *p;
	int i, rc;

	p = calloc(1, sizeof(*p));
	if (p == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	pthread_cond_init(&p->done_cv, NULL);
	p->stack_size = DMX_WORKER_STACK;
	p->qmax = queue_max;
	p->base.ops = &pool_ops;
	p->admit = hooks->admit;
	p->done = hooks->done;
	p->done_arg = hooks->done_arg;
	if (nworkers == 0) {
		p->on_demand = 1;
		p->max_threads = max_threads;
		return &p->base;
	}
	p->max_abandoned = max_abandoned;
	p->nslots = nworkers + (int)max_abandoned;
	p->threads = calloc((size_t)p->nslots, sizeof(*p->threads));
	p->joinable = calloc((size_t)p->nslots, sizeof(*p->joinable));
	p->busy = calloc((size_t)p->nslots, sizeof(*p->busy));
	p->free_slots = calloc((size_t)p->nslots, sizeof(*p->free_slots));
	if (p->threads == NULL || p->joinable == NULL || p->busy == NULL ||
	    p->free_slots == NULL) {
		snprintf(err, errlen, "out of memory");
		pool_free(p);
		return NULL;
	}
	for (i = p->nslots - 1; i >= nworkers; i--)
		p->free_slots[p->nfree++] = i;
	pthread_mutex_lock(&p->mu);
	for (i = 0; i < nworkers; i++) {
		if ((rc = start_worker(p, i)) != 0) {
			pthread_mutex_unlock(&p->mu);
			snprintf(err, errlen, "cannot start worker %d of %d: %s",
			    i + 1, nworkers, strerror(rc));
			pool_free(p);
			return NULL;
		}
	}
	pthread_mutex_unlock(&p->mu);
	return &p->base;
}

/* Append n jobs head..tail to the queue (p->mu held, released here), and
 * wake one idle worker unless a wake-up is already on its way. */
static void
append_unlock(dmx_pool *p, dmx_job *head, dmx_job *tail, unsigned n)
{
	int wake;

	p->qlen += n;
	if (p->tail)
		p->tail->next = head;
	else
		p->head = head;
	p->tail = tail;
	wake = p->idle > p->wakes;
	if (wake)
		p->wakes++;
	pthread_mutex_unlock(&p->mu);
	if (wake)
		pthread_cond_signal(&p->cv);
}

static void
pool_submit(dmx_pool *p, dmx_job *head, dmx_job *tail, unsigned n,
    dmx_job **rejected)
{
	pthread_attr_t attr;
	pthread_t tid;
	ondemand_arg *a;
	dmx_job *j, *next, *rej_tail = NULL;
	int rc;

	*rejected = NULL;
	if (head == NULL)
		return;
	if (!p->on_demand) {
		tail->next = NULL;
		pthread_mutex_lock(&p->mu);
		if (p->qmax > 0 && p->qlen + n > p->qmax) {
			/* keep the first jobs up to the bound; the rest are
			 * refused before they run: safe for clients to retry */
			unsigned room = p->qmax > p->qlen ? p->qmax - p->qlen : 0;

			if (room == 0) {
				pthread_mutex_unlock(&p->mu);
				*rejected = head;
				return;
			}
			for (j = head; --room > 0; j = j->next)
				;
			*rejected = j->next;
			j->next = NULL;
			tail = j;
			for (n = 0, j = head; j != NULL; j = j->next)
				n++;
		}
		append_unlock(p, head, tail, n);
		return;
	}

	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, p->stack_size);
	for (j = head; j != NULL; j = next) {
		next = j->next;
		j->next = NULL;
		pthread_mutex_lock(&p->mu);
		rc = p->nthreads < p->max_threads ? 0 : EAGAIN;
		if (rc == 0)
			p->nthreads++;
		pthread_mutex_unlock(&p->mu);
		a = rc == 0 ? malloc(sizeof(*a)) : NULL;
		if (rc == 0 && a == NULL)
			rc = ENOMEM;
		if (rc == 0) {
			a->pool = p;
			a->job = j;
			rc = pthread_create(&tid, &attr, ondemand_thread, a);
			if (rc != 0) {
				free(a);
				dmx_warn("on-demand: cannot start a thread: %s",
				    strerror(rc));
				pthread_mutex_lock(&p->mu);
				if (--p->nthreads == 0)
					pthread_cond_broadcast(&p->done_cv);
				pthread_mutex_unlock(&p->mu);
			}
		}
		if (rc != 0) {
			if (rej_tail)
				rej_tail->next = j;
			else
				*rejected = j;
			rej_tail = j;
		}
		if (j == tail)
			break;
	}
	pthread_attr_destroy(&attr);
}

static void
pool_requeue(dmx_pool *p, dmx_job *j)
{
	dmx_job *rej = NULL;

	j->next = NULL;
	if (p->on_demand) {
		pool_submit(p, j, j, 1, &rej);
		if (rej != NULL) {
			/* no thread to be had: run it here, its connection's
			 * output is what held it */
			msgpack_zone zone;
			uint64_t now = dmx_now_ns();

			msgpack_zone_init(&zone, 4096);
			if (dmx_job_run(j, &zone, &now) == 0)
				p->done(j, p->done_arg);
			msgpack_zone_destroy(&zone);
		}
		return;
	}
	pthread_mutex_lock(&p->mu);
	append_unlock(p, j, j, 1);
}

static void
pool_free(dmx_pool *p)
{
	unsigned left;
	int i;

	if (p == NULL)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = 1;
	pthread_cond_broadcast(&p->cv);
	if (p->on_demand)
		while (p->nthreads > 0)
			pthread_cond_wait(&p->done_cv, &p->mu);
	pthread_mutex_unlock(&p->mu);
	for (i = 0; !p->on_demand && i < p->nslots; i++)
		if (p->joinable[i])
			pthread_join(p->threads[i], NULL);
	/* read under mu: a written-off thread leaving does its bookkeeping
	 * under it, and is done with the pool once it has let go of it */
	pthread_mutex_lock(&p->mu);
	left = p->abandoned;
	pthread_mutex_unlock(&p->mu);
	if (left > 0) {
		/* a written-off thread may still return into the pool: it is
		 * left to the process's end, never freed under it */
		dmx_info("pool: %u written-off worker(s) still running at "
		    "exit", left);
		return;
	}
	free(p->threads);
	free(p->joinable);
	free(p->free_slots);
	free(p->busy);
	pthread_cond_destroy(&p->cv);
	pthread_cond_destroy(&p->done_cv);
	pthread_mutex_destroy(&p->mu);
	free(p);
}

/* A worker is stuck past its method's deadline, or past stuck_ms for a
 * method without one. */
static uint64_t
stuck_limit(const struct dmx_busy *b, uint64_t stuck_ms)
{
	unsigned t = atomic_load_explicit(&b->limit_ms, memory_order_relaxed);

	return t > 0 ? t : stuck_ms;
}

static void
pool_info_get(dmx_pool *p, uint64_t stuck_ms, dmx_exec_info *out)
{
	uint64_t now = dmx_now_ns(), since, ms;
	int i;

	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&p->mu);
	(void)writeoff_locked(p, now);	/* the figures as of now */
	out->abandoned = p->abandoned;
	out->max_abandoned = p->max_abandoned;
	out->unreplaced = p->owed;
	out->on_demand = p->on_demand;
	out->max_threads = p->max_threads;
	out->workers = p->nthreads;
	out->idle = p->on_demand ? 0 : p->idle;
	out->queued = p->qlen;
	pthread_mutex_unlock(&p->mu);
	out->busy = p->on_demand ? out->workers : out->workers - out->idle;
	for (i = 0; !p->on_demand && i < p->nslots; i++) {
		since = atomic_load_explicit(&p->busy[i].since,
		    memory_order_relaxed);
		if (since == 0 || since > now)
			continue;
		ms = (now - since) / 1000000u;
		if (ms > out->longest_ms)
			out->longest_ms = ms;
		if (ms >= stuck_limit(&p->busy[i], stuck_ms))
			out->stuck++;
	}
}

static unsigned
pool_stuck_in(dmx_pool *p, uint64_t stuck_ms, const void *pl)
{
	uint64_t now = dmx_now_ns(), since;
	unsigned n = 0;
	int i;

	for (i = 0; !p->on_demand && i < p->nslots; i++) {
		since = atomic_load_explicit(&p->busy[i].since,
		    memory_order_relaxed);
		if (since != 0 && since <= now && atomic_load_explicit(
		    &p->busy[i].plugin, memory_order_relaxed) == pl &&
		    (now - since) / 1000000u >= stuck_limit(&p->busy[i],
		    stuck_ms))
			n++;
	}
	return n;
}

static unsigned
pool_running(dmx_pool *p, const void *stats, const void *pl)
{
	unsigned n = 0;
	int i;

	for (i = 0; !p->on_demand && i < p->nslots; i++) {
		if (atomic_load_explicit(&p->busy[i].since,
		    memory_order_relaxed) == 0)
			continue;
		if (stats ? atomic_load_explicit(&p->busy[i].stats,
		    memory_order_relaxed) == stats : atomic_load_explicit(
		    &p->busy[i].plugin, memory_order_relaxed) == pl)
			n++;
	}
	return n;
}

/* ---- the executor interface ---- */

static void
op_submit(dmx_exec *e, dmx_job *head, dmx_job *tail, unsigned n,
    dmx_job **rejected)
{
	pool_submit((dmx_pool *)e, head, tail, n, rejected);
}

static void
op_requeue(dmx_exec *e, dmx_job *j)
{
	pool_requeue((dmx_pool *)e, j);
}

static void
op_info(dmx_exec *e, uint64_t stuck_ms, dmx_exec_info *out)
{
	pool_info_get((dmx_pool *)e, stuck_ms, out);
}

static unsigned
op_running(dmx_exec *e, const void *stats, const void *pl)
{
	return pool_running((dmx_pool *)e, stats, pl);
}

static unsigned
op_stuck_in(dmx_exec *e, uint64_t stuck_ms, const void *pl)
{
	return pool_stuck_in((dmx_pool *)e, stuck_ms, pl);
}

static void
op_free(dmx_exec *e)
{
	pool_free((dmx_pool *)e);
}

static int
op_tick(dmx_exec *e, uint64_t now)
{
	dmx_pool *p = (dmx_pool *)e;
	int ms;

	if (p->on_demand)
		return -1;
	pthread_mutex_lock(&p->mu);
	ms = writeoff_locked(p, now);
	pthread_mutex_unlock(&p->mu);
	return ms;
}

/* Written-off workers of plugin pl, still running. */
static unsigned
op_abandoned_in(dmx_exec *e, const void *pl)
{
	dmx_pool *p = (dmx_pool *)e;
	unsigned n = 0;
	int i;

	for (i = 0; !p->on_demand && i < p->nslots; i++)
		if (atomic_load_explicit(&p->busy[i].abandoned,
		    memory_order_relaxed) && atomic_load_explicit(
		    &p->busy[i].plugin, memory_order_relaxed) == pl)
			n++;
	return n;
}

static const dmx_exec_ops pool_ops = {
	"threads", op_submit, op_requeue, op_info, op_running, op_stuck_in,
	op_free, NULL, NULL, op_tick, op_abandoned_in
};
