/*
 * stats.h - live figures for $/stats: per method, per pool, per server.
 *
 * Everything is updated with relaxed atomics by whichever thread sees the
 * event (the I/O thread on dispatch, workers on completion), so recording
 * costs a few uncontended atomic adds and never a lock. A reader ($/stats)
 * sees each counter exactly, and a consistent-enough picture overall.
 *
 * Latency is kept in a log-linear histogram in the spirit of HdrHistogram:
 * 8 sub-buckets per power of two of nanoseconds, so any percentile is known
 * within 12.5 % whatever the range (1 ns to 2^63 ns), in 4 KiB per method.
 */
#ifndef DMX_STATS_H
#define DMX_STATS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "../common/clock.h"

#define DMX_HIST_SUB	8			/* sub-buckets per octave */
#define DMX_HIST_N	(64 * DMX_HIST_SUB)

typedef struct dmx_hist {
	_Atomic uint64_t count[DMX_HIST_N];
	_Atomic uint64_t max_ns;
} dmx_hist;

void	 dmx_hist_record(dmx_hist *h, uint64_t ns);
/* The value at quantile q (0 < q <= 1), in ns: the upper edge of the
 * bucket it falls in (0 if empty). */
uint64_t dmx_hist_quantile(const dmx_hist *h, double q);
/* Samples recorded, and their sum estimated from bucket midpoints (within
 * 6.25 %): recording keeps one atomic add, Prometheus' _sum is derived. */
uint64_t dmx_hist_count(const dmx_hist *h);
/* The non-empty buckets, in order: each one's upper edge (ns) and count,
 * at most max of them; returns how many. */
unsigned dmx_hist_buckets(const dmx_hist *h, uint64_t *top_ns,
    uint64_t *count, unsigned max);
double	 dmx_hist_sum_ns(const dmx_hist *h);

#define DMX_ERR_SLOTS 16

/*
 * Per method. Only two counters change per request on the hot path: the
 * I/O thread's `dispatched` (a single writer: a plain store) and the
 * answerer's `calls` plus one histogram bucket; in flight is their
 * difference. Fewer shared read-modify-writes per request is what keeps
 * the statistics from costing throughput (W4 measured it).
 */
typedef struct dmx_method_stats {
	_Atomic uint64_t dispatched;	/* routed (I/O thread only) */
	_Atomic uint64_t calls;		/* answered (or notifications run) */
	/* errors by code: the first DMX_ERR_SLOTS distinct codes get a slot,
	 * the rest are counted in errors_other. A slot is claimed by storing
	 * its code (0: free; no error has code 0) with one compare-and-swap,
	 * so a reader never sees a slot without its code, and no code ever
	 * holds two slots. */
	_Atomic int64_t	 err_code[DMX_ERR_SLOTS];
	_Atomic uint64_t err_count[DMX_ERR_SLOTS];
	_Atomic uint64_t errors_other;
	dmx_hist	 latency;	/* dispatch to answer */
} dmx_method_stats;

void dmx_method_error(dmx_method_stats *s, int64_t code);

/* A snapshot of the errors by code, for $/stats and /metrics: fills up to
 * DMX_ERR_SLOTS codes and counts, *other with the errors of codes past them,
 * and returns how many codes. Each counter is read once. */
typedef struct dmx_err_snap {
	unsigned n;
	int64_t	 code[DMX_ERR_SLOTS];
	uint64_t count[DMX_ERR_SLOTS];
	uint64_t other;
	uint64_t total;		/* all of them */
} dmx_err_snap;
void dmx_method_errors(dmx_method_stats *s, dmx_err_snap *out);

/* Calls refused by the access rules, per identity: the first
 * DMX_REFUSAL_SLOTS identities get a slot, the rest count in `other`.
 * Refusals are rare: a mutex, not atomics. */
#define DMX_REFUSAL_SLOTS 32
typedef struct dmx_refusals {
	pthread_mutex_t	 mu;
	unsigned	 n;
	struct {
		char	 identity[96];
		uint64_t count;
	} slot[DMX_REFUSAL_SLOTS];
	uint64_t	 other;
} dmx_refusals;

void dmx_refusal_count(dmx_refusals *r, const char *identity);
/* A copy for $/stats and /metrics. */
void dmx_refusals_get(dmx_refusals *r, dmx_refusals *out);

/* Resident memory of process pid (getpid(): demuxd's own) in KiB, from
 * /proc; 0 if unknown. */
uint64_t dmx_rss_kb(pid_t pid);

/* Per server. */
typedef struct dmx_server_stats {
	uint64_t	 started_ns;	/* CLOCK_MONOTONIC at start */
	_Atomic int	 draining;	/* a graceful stop has begun */
	_Atomic uint64_t connections;	/* open now */
	_Atomic uint64_t accepted;	/* since start */
	_Atomic uint64_t bytes_in;
	_Atomic uint64_t bytes_out;
	_Atomic uint64_t requests;	/* frames dispatched */
	_Atomic uint64_t reloads;
	_Atomic uint64_t reload_failures;	/* SIGHUPs that changed nothing */
	_Atomic uint64_t notes;		/* plugins' notifications queued */
	_Atomic uint64_t notes_dropped;	/* ... dropped: over max_output */
	_Atomic uint64_t inline_runs;	/* requests run inline (inline.h) */
	_Atomic uint64_t inline_takeovers; /* stalls the standby ended */
	dmx_refusals	 refusals;	/* initialised by the server */
} dmx_server_stats;


#endif
