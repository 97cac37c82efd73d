/*
 * budget.c - the server-wide memory bound; see budget.h.
 */
#include "../common/clock.h"
#include "budget.h"
#include "log.h"

void
dmx_budget_init(dmx_budget *b, dmx_loop *loop)
{
	b->loop = loop;
	atomic_init(&b->used, 0);
	atomic_init(&b->max, 0);
	atomic_init(&b->low, 0);
	atomic_init(&b->waiting, 0);
	atomic_init(&b->wake, 0);
	b->warned = 0;
}

void
dmx_budget_limit(dmx_budget *b, size_t max)
{
	atomic_store(&b->max, max);
	atomic_store(&b->low, max / 2);
}

void
dmx_budget_add(dmx_budget *b, size_t n)
{
	atomic_fetch_add_explicit(&b->used, n, memory_order_relaxed);
}

void
dmx_budget_sub(dmx_budget *b, size_t n)
{
	size_t old, low;

	if (n == 0)
		return;
	old = atomic_fetch_sub_explicit(&b->used, n, memory_order_relaxed);
	if (atomic_load_explicit(&b->waiting, memory_order_relaxed) == 0)
		return;
	low = atomic_load_explicit(&b->low, memory_order_relaxed);
	if (old >= low && old - n < low && !atomic_exchange(&b->wake, 1))
		dmx_loop_wake(b->loop);
}

int
dmx_budget_full(dmx_budget *b)
{
	size_t max = atomic_load_explicit(&b->max, memory_order_relaxed);

	return max > 0 &&
	    atomic_load_explicit(&b->used, memory_order_relaxed) >= max;
}

void
dmx_budget_wait(dmx_budget *b)
{
	uint64_t now = dmx_now_ns();

	atomic_fetch_add(&b->waiting, 1);
	if (now - b->warned > 10000000000ull) {
		b->warned = now;
		dmx_warn("max_memory (%zu bytes) reached by requests in flight "
		    "and partial frames: reading paused until half is free",
		    atomic_load(&b->max));
	}
}

int
dmx_budget_woken(dmx_budget *b)
{
	return atomic_exchange(&b->wake, 0);
}

void
dmx_budget_resumed(dmx_budget *b)
{
	atomic_fetch_sub(&b->waiting, 1);
}
