/*
 * pool.h - the worker pool that runs plugins' process_transaction: demuxd's
 * one executor today.
 *
 * The pool knows jobs, not connections: a finished job (its answer in
 * j->out, or nothing to send) is handed to the `done` callback given at
 * creation, together with the jobs finished with it (->next), and belongs to
 * the callback's owner from then on.
 */
#ifndef DMX_POOL_H
#define DMX_POOL_H

#include <stdint.h>

typedef struct dmx_pool dmx_pool;
struct dmx_job;

/* Finished jobs, linked by ->next; called on the worker that ran them. */
typedef void (*dmx_pool_done_fn)(struct dmx_job *list, void *arg);
/* Asked on the worker before a job runs: 1 to run it now; 0 if the callee
 * kept it (to hand it back later with dmx_pool_requeue). */
typedef int (*dmx_pool_admit_fn)(struct dmx_job *j);

/* nworkers > 0: a fixed pool. 0: on-demand, one thread per job up to
 * max_threads. admit may be NULL (run everything). Returns NULL with a
 * reason in err. */
dmx_pool *dmx_pool_new(int nworkers, int max_threads, unsigned queue_max,
    dmx_pool_admit_fn admit, dmx_pool_done_fn done, void *done_arg,
    char *err, size_t errlen);
/* Hand back one job that admit kept, past the queue bound (it was within
 * it when submitted). Any thread. */
void dmx_pool_requeue(dmx_pool *p, struct dmx_job *j);
/* Queue a list of n jobs linked by ->next. Jobs past the queue bound, or in
 * on-demand mode past the thread cap (or whose thread cannot start), are not
 * run: they come back as a list in *rejected for the caller to answer
 * -32010. */
void dmx_pool_submit(dmx_pool *p, struct dmx_job *head, struct dmx_job *tail,
    unsigned n, struct dmx_job **rejected);
/* Run every queued job, stop the threads and free. NULL is a no-op. */
void dmx_pool_free(dmx_pool *p);

/* A snapshot for $/stats. `stuck`: workers running one job for longer than
 * stuck_ms (or the method's timeout_ms); `longest_ms`: the longest run now. */
typedef struct dmx_pool_info {
	int		 on_demand;
	int		 workers;	/* fixed: pool size; on-demand: running */
	int		 max_threads;
	int		 busy, idle;
	unsigned	 queued;
	unsigned	 stuck;
	uint64_t	 longest_ms;
} dmx_pool_info;
void dmx_pool_info_get(dmx_pool *p, uint64_t stuck_ms, dmx_pool_info *out);

/* Workers running now a method whose counters are `stats` (or, with stats
 * NULL, any method of plugin pl). The pool only compares these pointers,
 * never follows them: they may belong to a generation freed meanwhile. */
unsigned dmx_pool_running(dmx_pool *p, const void *stats, const void *pl);
/* Workers stuck (over stuck_ms, or the method's timeout_ms) in plugin pl. */
unsigned dmx_pool_stuck_in(dmx_pool *p, uint64_t stuck_ms, const void *pl);

#endif
