/*
 * budget.h - the server-wide memory bound (max_memory) over requests in
 * flight and partial frames, for every connection at once.
 *
 * The I/O thread adds what it reads; whoever releases bytes (a worker
 * recycling a job, the I/O thread shrinking a buffer) subtracts them. When
 * the count is at or over the bound, connections stop reading and wait
 * (dmx_budget_wait); the subtraction that brings it below half the bound
 * wakes the loop once, and the I/O thread resumes them (dmx_budget_woken).
 * Everything is atomics: no lock.
 */
#ifndef DMX_BUDGET_H
#define DMX_BUDGET_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "loop.h"

typedef struct dmx_budget {
	dmx_loop	*loop;		/* woken below half the bound */
	_Atomic size_t	 used;
	_Atomic size_t	 max, low;	/* the bound and its half */
	_Atomic unsigned waiting;	/* connections paused for it */
	_Atomic int	 wake;		/* the I/O thread must resume them */
	uint64_t	 warned;	/* ns (I/O thread) */
} dmx_budget;

void	dmx_budget_init(dmx_budget *b, dmx_loop *loop);
/* The bound of a configuration (0 is none: never full). */
void	dmx_budget_limit(dmx_budget *b, size_t max);
void	dmx_budget_add(dmx_budget *b, size_t n);	/* I/O thread */
void	dmx_budget_sub(dmx_budget *b, size_t n);	/* any thread */
int	dmx_budget_full(dmx_budget *b);
/* A connection pauses for the bound (I/O thread; warns at most every
 * 10 s). It is resumed once dmx_budget_woken says so. */
void	dmx_budget_wait(dmx_budget *b);
/* Below half again since the last call? Then every waiting connection is
 * to resume now, each calling dmx_budget_resumed. (I/O thread) */
int	dmx_budget_woken(dmx_budget *b);
void	dmx_budget_resumed(dmx_budget *b);

#endif
