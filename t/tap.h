/*
 * tap.h - a small TAP producer for demux's C tests (after git's test-lib).
 *
 *	plan(3);                  or done_testing() at the end
 *	ok(x == 1, "x is one");
 *	check_int(got, ==, 42, "answer");   prints both values on failure
 *	check_str(s, "pong", "ping answered");
 *	return exit_status();
 *
 * Every function is thread-safe; a test that made no check fails.
 */
#ifndef T_TAP_H
#define T_TAP_H

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_mutex_t tap_mu = PTHREAD_MUTEX_INITIALIZER;
static int tap_count, tap_failed, tap_planned;

static inline void
plan(int n)
{
	tap_planned = n;
	printf("1..%d\n", n);
	fflush(stdout);
}

static inline void
diag(const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&tap_mu);
	fputs("# ", stdout);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
	fflush(stdout);
	pthread_mutex_unlock(&tap_mu);
}

static inline int
tap_ok(int pass, const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&tap_mu);
	tap_count++;
	if (!pass)
		tap_failed++;
	printf("%sok %d - ", pass ? "" : "not ", tap_count);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	if (!pass)
		printf("#   failed at %s:%d\n", file, line);
	fflush(stdout);
	pthread_mutex_unlock(&tap_mu);
	return pass;
}

#define ok(cond, ...) tap_ok(!!(cond), __FILE__, __LINE__, __VA_ARGS__)

#define check_int(a, op, b, ...) do {					\
	long long a_ = (long long)(a), b_ = (long long)(b);		\
	if (!tap_ok(a_ op b_, __FILE__, __LINE__, __VA_ARGS__))		\
		diag("  %s = %lld, %s = %lld (wanted %s %s %s)", #a, a_,	\
		    #b, b_, #a, #op, #b);				\
} while (0)

#define check_str(a, b, ...) do {					\
	const char *a_ = (a), *b_ = (b);				\
	if (!tap_ok(a_ != NULL && b_ != NULL && strcmp(a_, b_) == 0,	\
	    __FILE__, __LINE__, __VA_ARGS__))				\
		diag("  got '%s', wanted '%s'", a_ ? a_ : "(null)",	\
		    b_ ? b_ : "(null)");				\
} while (0)

static inline void
skip_all(const char *why)
{
	printf("1..0 # SKIP %s\n", why);
	exit(0);
}

static inline void
bail_out(const char *fmt, ...)
{
	va_list ap;

	printf("Bail out! ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
	exit(255);
}

static inline void
done_testing(void)
{
	if (tap_planned == 0)
		printf("1..%d\n", tap_count);
	fflush(stdout);
}

static inline int
exit_status(void)
{
	if (tap_count == 0) {
		printf("not ok 1 - BUG: test made no checks\n1..1\n");
		return 1;
	}
	return tap_failed ? 1 : 0;
}

#endif
