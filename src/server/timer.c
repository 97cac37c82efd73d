/*
 * timer.c - a binary min-heap of deadlines that knows where each job's
 * entry is (j->timer_slot = index + 1), so entries can be replaced and
 * removed in O(log n); see timer.h.
 */
#include <stdlib.h>

#include "timer.h"

static void
place(dmx_timers *t, size_t i, dmx_timer e)
{
	t->h[i] = e;
	e.job->timer_slot = i + 1;
}

static void
sift_up(dmx_timers *t, size_t i, dmx_timer e)
{
	while (i > 0 && t->h[(i - 1) / 2].at > e.at) {
		place(t, i, t->h[(i - 1) / 2]);
		i = (i - 1) / 2;
	}
	place(t, i, e);
}

static void
sift_down(dmx_timers *t, size_t i, dmx_timer e)
{
	size_t k;

	while ((k = 2 * i + 1) < t->n) {
		if (k + 1 < t->n && t->h[k + 1].at < t->h[k].at)
			k++;
		if (e.at <= t->h[k].at)
			break;
		place(t, i, t->h[k]);
		i = k;
	}
	place(t, i, e);
}

/* Put e at i (a hole, or an entry being replaced) where it belongs. */
static void
settle(dmx_timers *t, size_t i, dmx_timer e)
{
	if (i > 0 && t->h[(i - 1) / 2].at > e.at)
		sift_up(t, i, e);
	else
		sift_down(t, i, e);
}

int
dmx_timers_add(dmx_timers *t, dmx_job *j, uint64_t at, unsigned timeout_ms)
{
	dmx_timer e = { at, j->seq, j, timeout_ms };

	if (j->timer_slot != 0) {
		settle(t, j->timer_slot - 1, e);
		return 0;
	}
	if (t->n == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 64;
		dmx_timer *h = realloc(t->h, cap * sizeof(*h));

		if (h == NULL)
			return -1;
		t->h = h;
		t->cap = cap;
	}
	sift_up(t, t->n++, e);
	return 1;
}

int
dmx_timers_del(dmx_timers *t, dmx_job *j)
{
	size_t i;
	dmx_timer last;

	if (j->timer_slot == 0)
		return 0;
	i = j->timer_slot - 1;
	j->timer_slot = 0;
	last = t->h[--t->n];
	if (i < t->n)
		settle(t, i, last);
	return 1;
}

int
dmx_timers_pop_due(dmx_timers *t, uint64_t now, dmx_timer *out)
{
	if (t->n == 0 || t->h[0].at > now)
		return 0;
	*out = t->h[0];
	dmx_timers_del(t, out->job);
	return 1;
}

int
dmx_timers_next_ms(const dmx_timers *t, uint64_t now)
{
	if (t->n == 0)
		return -1;
	return t->h[0].at <= now ? 0 : (int)((t->h[0].at - now) / 1000000u) + 1;
}

void
dmx_timers_free(dmx_timers *t)
{
	free(t->h);
	t->h = NULL;
	t->n = t->cap = 0;
}
