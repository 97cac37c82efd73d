/*
 * inline.h - run to completion: a request of a method measured fast runs
 * where it was decoded, on the thread that runs the loop, without a
 * hand-off to a worker (as Redis answers PING) — and a standby thread takes
 * the loop over if one such run ever stalls it.
 *
 * Which jobs (dmx_inline_eligible): every job of one read pass's batch for
 * one plugin, at most DMX_INLINE_BATCH of them, each of a thread-mode
 * plugin with `inline: auto` (the default) that runs on the shared pool (a
 * plugin with `workers:` of its own is promised that bound on how many of
 * its handlers run at once: it never runs inline), of a method that has run on a
 * worker before (it is measured), whose average run time is under
 * DMX_INLINE_NS and that never took longer than DMX_INLINE_MAX_NS (the
 * `slow` mark, set by any run, on a worker or inline: a method that once
 * runs long is never inlined again), on a connection that never had more
 * requests in flight than one read brought (conn_in.c: pipelines keep the
 * workers, whose batched replies serve them better). At most
 * DMX_INLINE_PASS jobs run inline per pass of the loop; the rest go to
 * the workers as before.
 *
 * When: after the pass that decoded them (dmx_inline_run), so that the
 * loop's own state is consistent while a plugin runs.
 *
 * The guard: the loop belongs to one thread at a time, its owner (first the
 * thread that called dmx_server_run). While the owner runs inline jobs, a
 * standby thread looks every DMX_INLINE_STALL_NS/2; if the same batch is
 * still running after DMX_INLINE_STALL_NS, it takes the loop over (the
 * method running is marked slow, so it is not inlined again) and serves
 * everyone else; the stalled thread, once its plugin returns, sends its
 * answer and becomes the standby. The standby sleeps without a timeout
 * while nothing runs inline. So a handler that blocks, or never returns,
 * costs the other connections at most DMX_INLINE_STALL_NS twice over, once
 * per method.
 *
 * Threads: dmx_inline_add and dmx_inline_run are the loop owner's;
 * dmx_inline_standby and dmx_inline_stop any thread's.
 */
#ifndef DMX_INLINE_H
#define DMX_INLINE_H

#include <stdint.h>

#include "job.h"

#define DMX_INLINE_NS		10000u	/* average run time below this */
#define DMX_INLINE_MAX_NS	1000000u /* a run longer: never again */
#define DMX_INLINE_STALL_NS	2000000u /* a run longer: take the loop */
#define DMX_INLINE_BATCH	4	/* jobs of one batch at most */
#define DMX_INLINE_PASS		16	/* jobs per pass of the loop at most */

/* DEMUX_INLINE_SLOWDOWN=N in demuxd's environment (1 to 1000) multiplies
 * the three times above: for builds under a sanitizer or valgrind, whose
 * code runs that many times slower. */
extern _Atomic uint64_t dmx_inline_max_ns;	/* DMX_INLINE_MAX_NS, scaled */

typedef struct dmx_inline dmx_inline;

/* NULL without memory. `runs` and `takeovers` are counters it adds to
 * (the server's stats; not owned). */
dmx_inline *dmx_inline_new(_Atomic uint64_t *runs, _Atomic uint64_t *takeovers);
void	 dmx_inline_free(dmx_inline *in);

/* May these n jobs (->next) run inline? Without side effects. */
int	 dmx_inline_eligible(const dmx_inline *in, const dmx_job *head,
	    unsigned n);
/* Take them for the end of this pass (they were committed, as for an
 * executor): returns 1, or 0 if the pass has its share already (then the
 * caller submits them as usual). */
int	 dmx_inline_add(dmx_inline *in, dmx_job *head, dmx_job *tail,
	    unsigned n);
int	 dmx_inline_pending(const dmx_inline *in);

#define DMX_INLINE_LOST 1
/* Run what was added; 0, or DMX_INLINE_LOST if the standby took the loop
 * over meanwhile (the caller stops running the loop). */
int	 dmx_inline_run(dmx_inline *in);

/* Wait as the standby: returns 1 once this thread owns the loop (it took
 * it over), 0 once dmx_inline_stop was called. */
int	 dmx_inline_standby(dmx_inline *in);
/* The loop is done: the standby returns 0. */
void	 dmx_inline_stop(dmx_inline *in);

#endif
