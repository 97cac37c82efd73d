/*
 * bench.h - what the load clients share: clocks, CPU time of this process
 * and of the server (from /proc, as the peers' harness measures it), sorting.
 */
#ifndef BENCH_H
#define BENCH_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "../src/common/clock.h"

/* the clock demuxd and libmux use */
#define now_ns dmx_now_ns

/* CPU (user + system) of this process, in microseconds. */
static inline double
self_cpu_us(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
	    (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* CPU of process pid (all threads) from /proc, in microseconds; -1 if
 * unknown. Resolution: one clock tick. */
static inline double
proc_cpu_us(int pid)
{
	char path[64], buf[1024], *p;
	unsigned long long ut, st;
	size_t n;
	FILE *f;
	int field = 3;

	if (pid <= 0)
		return -1;
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	if ((f = fopen(path, "r")) == NULL)
		return -1;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	if ((p = strrchr(buf, ')')) == NULL)	/* comm may hold spaces */
		return -1;
	for (p += 2; *p && field < 14; p++)
		if (*p == ' ')
			field++;
	if (sscanf(p, "%llu %llu", &ut, &st) != 2)
		return -1;
	return (double)(ut + st) * 1e6 / (double)sysconf(_SC_CLK_TCK);
}

static inline int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

#endif
