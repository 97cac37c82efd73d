/*
 * timer.h - the jobs' deadlines: a min-heap owned by the I/O thread.
 *
 * Each entry points to a job and remembers the job's seq at the time, so an
 * entry that outlives its job's use (the answer came first, the job was
 * recycled and maybe reused) is recognised when it fires. A job has at most
 * one entry (j->timer_slot): a reused job takes over its stale one, and a
 * connection that closes removes its jobs' entries at once, so no entry
 * keeps a closed connection's memory alive.
 */
#ifndef DMX_TIMER_H
#define DMX_TIMER_H

#include <stddef.h>
#include <stdint.h>

#include "job.h"

typedef struct dmx_timer {
	uint64_t	 at;		/* ns */
	uint64_t	 seq;		/* the job's seq when set */
	dmx_job		*job;
	unsigned	 timeout_ms;
} dmx_timer;

typedef struct dmx_timers {
	dmx_timer	*h;
	size_t		 n, cap;
} dmx_timers;

/* Set j's deadline. Returns 1 if a new entry was made (the job's
 * connection gains a claim), 0 if j's stale entry was reused, -1 without
 * memory (the deadline is lost, not the job). */
int  dmx_timers_add(dmx_timers *t, dmx_job *j, uint64_t at,
    unsigned timeout_ms);
/* Remove j's entry, if it has one; returns 1 if it had. */
int  dmx_timers_del(dmx_timers *t, dmx_job *j);
/* Pop the earliest entry if it is due at `now` into *out; 0 if none. */
int  dmx_timers_pop_due(dmx_timers *t, uint64_t now, dmx_timer *out);
/* ms until the earliest entry (at least 1), or -1 if there is none. */
int  dmx_timers_next_ms(const dmx_timers *t, uint64_t now);
void dmx_timers_free(dmx_timers *t);

#endif
