/*
 * stats.c - histogram and counters for $/stats; see stats.h.
 *
 * Threads: no locks. Every counter is a relaxed atomic; an error slot is
 * claimed by compare-and-swap on its code before its count is added.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/bug.h"
#include "stats.h"

/* Bucket of v: octave e = floor(log2 v), then the next 3 bits below the top
 * one. Values below 8 get exact buckets 0..7. */
static unsigned
bucket(uint64_t v)
{
	unsigned e;

	if (v < DMX_HIST_SUB)
		return (unsigned)v;
	e = 63u - (unsigned)__builtin_clzll(v);
	return e * DMX_HIST_SUB +
	    (unsigned)((v >> (e - 3)) & (DMX_HIST_SUB - 1));
}

/* The largest value that falls in bucket b. */
static uint64_t
bucket_top(unsigned b)
{
	unsigned e = b / DMX_HIST_SUB, sub = b % DMX_HIST_SUB;

	if (e < 3)
		return b;	/* the exact buckets below 8 */
	return ((uint64_t)(DMX_HIST_SUB + sub + 1) << (e - 3)) - 1;
}

void
dmx_hist_record(dmx_hist *h, uint64_t ns)
{
	uint64_t m;

	atomic_fetch_add_explicit(&h->count[bucket(ns)], 1,
	    memory_order_relaxed);

	m = atomic_load_explicit(&h->max_ns, memory_order_relaxed);
	while (ns > m && !atomic_compare_exchange_weak_explicit(&h->max_ns, &m,
	    ns, memory_order_relaxed, memory_order_relaxed))
		;
}

uint64_t
dmx_hist_quantile(const dmx_hist *h, double q)
{
	uint64_t total = 0, want, seen = 0, c, max;
	unsigned b;

	for (b = 0; b < DMX_HIST_N; b++)
		total += atomic_load_explicit(&h->count[b], memory_order_relaxed);
	if (total == 0)
		return 0;
	want = (uint64_t)(q * (double)total + 0.999999);
	if (want == 0)
		want = 1;
	max = atomic_load_explicit(&h->max_ns, memory_order_relaxed);
	for (b = 0; b < DMX_HIST_N; b++) {
		c = atomic_load_explicit(&h->count[b], memory_order_relaxed);
		seen += c;
		if (c && seen >= want) {
			uint64_t top = bucket_top(b);

			return top < max ? top : max;
		}
	}
	return max;
}

unsigned
dmx_hist_buckets(const dmx_hist *h, uint64_t *top_ns, uint64_t *count,
    unsigned max)
{
	unsigned b, n = 0;
	uint64_t c;

	for (b = 0; b < DMX_HIST_N && n < max; b++) {
		c = atomic_load_explicit(&h->count[b], memory_order_relaxed);
		if (c == 0)
			continue;
		top_ns[n] = bucket_top(b);
		count[n++] = c;
	}
	return n;
}

uint64_t
dmx_hist_count(const dmx_hist *h)
{
	uint64_t n = 0;
	unsigned b;

	for (b = 0; b < DMX_HIST_N; b++)
		n += atomic_load_explicit(&h->count[b], memory_order_relaxed);
	return n;
}

double
dmx_hist_sum_ns(const dmx_hist *h)
{
	double sum = 0;
	uint64_t lo = 0, hi;
	unsigned b;

	for (b = 0; b < DMX_HIST_N; b++) {
		hi = bucket_top(b);
		sum += (double)atomic_load_explicit(&h->count[b],
		    memory_order_relaxed) * ((double)lo + (double)hi) / 2;
		lo = hi + 1;
	}
	return sum;
}

void
dmx_method_error(dmx_method_stats *s, int64_t code)
{
	int64_t c;
	unsigned i;

	/* 0 marks a free slot: job.c never lets an answer carry it */
	DMX_BUG_ON(code == 0);
	for (i = 0; i < DMX_ERR_SLOTS; i++) {
		c = atomic_load_explicit(&s->err_code[i], memory_order_acquire);
		if (c == 0) {
			/* slots fill in order: the first free one is ours
			 * unless another thread claims it first, maybe for
			 * this very code */
			if (atomic_compare_exchange_strong_explicit(
			    &s->err_code[i], &c, code, memory_order_acq_rel,
			    memory_order_acquire))
				c = code;
		}
		if (c == code) {
			atomic_fetch_add_explicit(&s->err_count[i], 1,
			    memory_order_relaxed);
			return;
		}
	}
	atomic_fetch_add_explicit(&s->errors_other, 1, memory_order_relaxed);
}

void
dmx_method_errors(dmx_method_stats *s, dmx_err_snap *out)
{
	unsigned i;
	int64_t c;

	out->n = 0;
	out->total = out->other = atomic_load_explicit(&s->errors_other,
	    memory_order_relaxed);
	for (i = 0; i < DMX_ERR_SLOTS; i++) {
		c = atomic_load_explicit(&s->err_code[i], memory_order_acquire);
		if (c == 0)
			break;
		out->code[out->n] = c;
		out->count[out->n] = atomic_load_explicit(&s->err_count[i],
		    memory_order_relaxed);
		out->total += out->count[out->n++];
	}
}

void
dmx_refusal_count(dmx_refusals *r, const char *identity)
{
	unsigned i;

	pthread_mutex_lock(&r->mu);
	for (i = 0; i < r->n; i++)
		if (strcmp(r->slot[i].identity, identity) == 0)
			break;
	if (i == r->n && r->n < DMX_REFUSAL_SLOTS) {
		snprintf(r->slot[i].identity, sizeof(r->slot[i].identity), "%s",
		    identity);
		r->slot[i].count = 0;
		r->n++;
	}
	if (i < r->n)
		r->slot[i].count++;
	else
		r->other++;
	pthread_mutex_unlock(&r->mu);
}

void
dmx_refusals_get(dmx_refusals *r, dmx_refusals *out)
{
	pthread_mutex_lock(&r->mu);
	out->n = r->n;
	memcpy(out->slot, r->slot, sizeof(out->slot));
	out->other = r->other;
	pthread_mutex_unlock(&r->mu);
}

uint64_t
dmx_rss_kb(pid_t pid)
{
	char path[64];
	unsigned long size, res;
	FILE *f;
	int ok;

	snprintf(path, sizeof(path), "/proc/%d/statm", (int)pid);
	if ((f = fopen(path, "r")) == NULL)
		return 0;
	ok = fscanf(f, "%lu %lu", &size, &res) == 2;
	fclose(f);
	return ok ? (uint64_t)res * (uint64_t)(sysconf(_SC_PAGESIZE) / 1024) :
	    0;
}
