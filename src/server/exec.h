/*
 * exec.h - the executor interface: what runs routed jobs.
 *
 * The connection layer hands each read pass's jobs to the executor of the
 * plugin that owns their method, and gets them back, answered, through the
 * `done` hook; it never knows how they ran. Today's executor is the thread
 * pool (pool.c: threads in demuxd); the next runs them in child processes.
 *
 * Contract, the same for every implementation:
 * - submit takes a list of n jobs (->next); the ones it cannot take (queue
 *   bound, thread cap, no child up) come back in *rejected, still QUEUED,
 *   for the caller to answer -32010; an executor may put its own -32010
 *   answer in j->out (dmx_job_set_error) to say why. Every other job is answered exactly once through
 *   hooks.done, on a thread of the executor's, with its reply in j->out
 *   (or nothing to send: a notification, or a job answered early).
 * - Before a job runs, hooks.admit may keep it (returns 0): the keeper
 *   hands it back later with requeue, which accepts it past the queue
 *   bound (it was within it when submitted).
 * - info, running and stuck_in are snapshots for $/stats and /metrics;
 *   running and stuck_in only compare the pointers they are given.
 * - free runs or answers every job still queued, waits for those running,
 *   and frees. NULL is a no-op.
 */
#ifndef DMX_EXEC_H
#define DMX_EXEC_H

#include <stdint.h>

struct dmx_job;
typedef struct dmx_exec dmx_exec;

/* Finished jobs, linked by ->next; called on the executor's thread. */
typedef void (*dmx_exec_done_fn)(struct dmx_job *list, void *arg);
/* Asked before a job runs: 1 to run it now; 0 if the callee kept it. */
typedef int (*dmx_exec_admit_fn)(struct dmx_job *j);

typedef struct dmx_exec_hooks {
	dmx_exec_admit_fn admit;	/* NULL: run everything */
	dmx_exec_done_fn done;
	void		*done_arg;
} dmx_exec_hooks;

/* A snapshot. `stuck`: workers running one job for longer than stuck_ms
 * (or the method's timeout_ms); `longest_ms`: the longest run now. */
typedef struct dmx_exec_info {
	int		 on_demand;
	int		 workers;	/* fixed: its size; on-demand: running */
	int		 max_threads;
	int		 busy, idle;
	unsigned	 queued;
	unsigned	 stuck;
	uint64_t	 longest_ms;
	unsigned	 abandoned;	/* written off, still running */
	unsigned	 max_abandoned;	/* 0 for executors that do not */
	unsigned	 unreplaced;	/* written off with no slot left to
					 * replace them: "unhealthy" */
} dmx_exec_info;

/* An executor that runs jobs in child processes says more (proc.c). */
#define DMX_EXEC_CHILDREN 16		/* children listed at most */
typedef struct dmx_exec_child {
	int		 pid;
	int		 up;		/* serving (0: starting or retiring) */
	uint64_t	 started_ms;	/* wall clock, ms since the epoch */
	uint64_t	 calls;		/* answered */
	uint64_t	 rss_kb;
} dmx_exec_child;

typedef struct dmx_exec_procs {
	unsigned	 processes;	/* configured */
	unsigned	 up;		/* children serving now */
	unsigned	 nchildren;	/* listed in child[] */
	dmx_exec_child	 child[DMX_EXEC_CHILDREN];
	uint64_t	 crashes;	/* children that died unasked */
	uint64_t	 crash_sig[65];	/* by signal; [0]: exited non-zero */
	uint64_t	 kills;		/* killed past kill_after_ms */
	uint64_t	 recycles_requests, recycles_rss;
	uint64_t	 respawns;
} dmx_exec_procs;

typedef struct dmx_exec_ops {
	const char *kind;		/* "threads", ... */
	void	  (*submit)(dmx_exec *e, struct dmx_job *head,
		    struct dmx_job *tail, unsigned n, struct dmx_job **rejected);
	void	  (*requeue)(dmx_exec *e, struct dmx_job *j);
	void	  (*info)(dmx_exec *e, uint64_t stuck_ms, dmx_exec_info *out);
	/* workers running now a method whose counters are `stats` (or, with
	 * stats NULL, any method of plugin pl) */
	unsigned  (*running)(dmx_exec *e, const void *stats, const void *pl);
	/* workers stuck (over stuck_ms, or the method's timeout_ms) in pl */
	unsigned  (*stuck_in)(dmx_exec *e, uint64_t stuck_ms, const void *pl);
	void	  (*free)(dmx_exec *e);
	/* optional (NULL: not needed) */
	/* $/cancelRequest for job j (its seq when cancelled) while running:
	 * an executor that runs jobs elsewhere passes it on */
	void	  (*cancel)(dmx_exec *e, struct dmx_job *j, uint64_t seq);
	/* 1 and *out filled if it runs jobs in child processes, else 0 */
	int	  (*procs)(dmx_exec *e, dmx_exec_procs *out);
	/* housekeeping on the I/O thread: ms until it is due again, or -1 */
	int	  (*tick)(dmx_exec *e, uint64_t now);
	/* workers written off while running plugin pl's jobs */
	unsigned  (*abandoned_in)(dmx_exec *e, const void *pl);
} dmx_exec_ops;

/* Embedded first in every implementation's struct. */
struct dmx_exec {
	const dmx_exec_ops *ops;
};

static inline void
dmx_exec_submit(dmx_exec *e, struct dmx_job *head, struct dmx_job *tail,
    unsigned n, struct dmx_job **rejected)
{
	e->ops->submit(e, head, tail, n, rejected);
}

static inline void
dmx_exec_requeue(dmx_exec *e, struct dmx_job *j)
{
	e->ops->requeue(e, j);
}

static inline void
dmx_exec_info_get(dmx_exec *e, uint64_t stuck_ms, dmx_exec_info *out)
{
	e->ops->info(e, stuck_ms, out);
}

static inline unsigned
dmx_exec_running(dmx_exec *e, const void *stats, const void *pl)
{
	return e->ops->running(e, stats, pl);
}

static inline unsigned
dmx_exec_stuck_in(dmx_exec *e, uint64_t stuck_ms, const void *pl)
{
	return e->ops->stuck_in(e, stuck_ms, pl);
}

static inline int
dmx_exec_tick(dmx_exec *e, uint64_t now)
{
	return e->ops->tick != NULL ? e->ops->tick(e, now) : -1;
}

static inline unsigned
dmx_exec_abandoned_in(dmx_exec *e, const void *pl)
{
	return e->ops->abandoned_in != NULL ? e->ops->abandoned_in(e, pl) : 0;
}

static inline void
dmx_exec_cancel(dmx_exec *e, struct dmx_job *j, uint64_t seq)
{
	if (e->ops->cancel != NULL)
		e->ops->cancel(e, j, seq);
}

static inline int
dmx_exec_procs_get(dmx_exec *e, dmx_exec_procs *out)
{
	return e->ops->procs != NULL ? e->ops->procs(e, out) : 0;
}

static inline void
dmx_exec_free(dmx_exec *e)
{
	if (e != NULL)
		e->ops->free(e);
}

#endif
