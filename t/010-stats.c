/*
 * 010-stats.c - error counters under concurrent errors: a reader never sees
 * a slot without its code, never the same code twice, and the totals add
 * up once the writers stop (the audit saw code="0" and duplicate series in
 * /metrics, and an entry count read twice).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "../src/server/stats.h"
#include "tap.h"

#define WRITERS	4
#define PER	200000
#define CODES	24		/* more than DMX_ERR_SLOTS: some go to other */

static dmx_method_stats S;
static atomic_int stop;

static void *
writer(void *arg)
{
	long id = (long)arg;
	int i;

	for (i = 0; i < PER; i++)
		dmx_method_error(&S, 1 + (int64_t)((i * 7 + id) % CODES));
	return NULL;
}

int
main(void)
{
	pthread_t th[WRITERS];
	dmx_err_snap es;
	unsigned i, k, bad_zero = 0, bad_dup = 0, bad_n = 0, snaps = 0;
	long w;

	for (w = 0; w < WRITERS; w++)
		pthread_create(&th[w], NULL, writer, (void *)w);
	while (!atomic_load(&stop)) {
		dmx_method_errors(&S, &es);
		snaps++;
		if (es.n > DMX_ERR_SLOTS)
			bad_n++;
		for (i = 0; i < es.n; i++) {
			if (es.code[i] == 0)
				bad_zero++;
			for (k = 0; k < i; k++)
				if (es.code[k] == es.code[i])
					bad_dup++;
		}
		if (es.total >= (uint64_t)WRITERS * PER)
			atomic_store(&stop, 1);
	}
	for (w = 0; w < WRITERS; w++)
		pthread_join(th[w], NULL);
	check_int(bad_zero, ==, 0, "no snapshot (of %u) showed a slot without "
	    "its code", snaps);
	check_int(bad_dup, ==, 0, "no snapshot showed a code twice");
	check_int(bad_n, ==, 0, "no snapshot had more than %d codes",
	    DMX_ERR_SLOTS);
	dmx_method_errors(&S, &es);
	check_int(es.n, ==, DMX_ERR_SLOTS, "every slot is used");
	check_int(es.total, ==, (uint64_t)WRITERS * PER, "every error counted "
	    "once (%llu in slots and other)", (unsigned long long)es.total);
	ok(es.other > 0, "codes past the slots are counted as other (%llu)",
	    (unsigned long long)es.other);
	done_testing();
	return exit_status();
}
