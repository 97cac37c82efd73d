/*
 * bug.h - assertions for broken invariants, kept in release builds.
 *
 * DMX_BUG_ON(cond) is for what can only be true through a bug in demux
 * itself (a reference count going below zero, a state no path can reach),
 * never for bad input, a failing syscall or a misbehaving peer: those get
 * an error. The check is one predictable branch, cheap enough to keep
 * everywhere; when it fires, the process says where and aborts, because
 * going on with a broken invariant turns a clear crash into corruption.
 */
#ifndef DMX_BUG_H
#define DMX_BUG_H

#include <stdio.h>
#include <stdlib.h>

static inline _Noreturn void
dmx_bug(const char *file, int line, const char *what)
{
	fprintf(stderr, "BUG at %s:%d: %s\n", file, line, what);
	fflush(stderr);
	abort();
}

#define DMX_BUG_ON(cond) do {						\
	if (__builtin_expect(!!(cond), 0))				\
		dmx_bug(__FILE__, __LINE__, #cond);			\
} while (0)

#endif
