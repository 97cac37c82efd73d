/*
 * pool.h - the thread pool: demuxd's executor today (exec.h), running
 * plugins' process_transaction on worker threads inside demuxd.
 *
 * Fixed (nworkers > 0): that many threads and a queue of at most queue_max
 * jobs (0: unbounded). On-demand (nworkers 0): one thread per job, up to
 * max_threads at once, no queue. Workers take jobs in batches and hand
 * them back the same way (one `done` call per batch), and time each run
 * for $/stats.
 */
#ifndef DMX_POOL_H
#define DMX_POOL_H

#include <stddef.h>

#include "exec.h"

/* nworkers 0: on-demand, up to max_threads. A fixed pool writes off up to
 * max_abandoned workers stuck past timeout_ms + kill_after_ms (pool.c).
 * Returns NULL with a reason in err. */
dmx_exec *dmx_pool_new(int nworkers, int max_threads, unsigned queue_max,
    unsigned max_abandoned, const dmx_exec_hooks *hooks, char *err,
    size_t errlen);

#endif
