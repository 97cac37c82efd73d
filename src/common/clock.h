/*
 * clock.h - the one clock both sides use for deadlines, timeouts and
 * latencies: CLOCK_MONOTONIC in nanoseconds (never steps with the wall
 * clock; through the vDSO, no system call).
 */
#ifndef DMX_CLOCK_H
#define DMX_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t
dmx_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#endif
