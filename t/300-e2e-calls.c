/*
 * 300-e2e-calls.c - libmux against a real demuxd over one connection:
 * results, built-ins, errors of every kind (the host's and the handlers'),
 * notifications, and a plugin's state across calls.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "e2e.h"

/* ---- basics ---- */

static void
test_basics(void)
{
	static const char *const methods[] = { "kv.del", "sleep.sleep",
	    "faulty.big", NULL };
	static const char *const plugins[] = { "version", "1.0.0", "kv",
	    NULL };
	mux_result r;
	const char *s, *two;
	size_t sl, tl;
	int64_t i, a;
	int rc, b;

	rc = mux_call(M, "$/ping", NULL, 0, &r, 5000);
	check_int(rc, ==, MUX_OK, "$/ping answers");
	s = NULL;
	sl = 0;
	if (rc == MUX_OK)
		mux_unpack(r.data, r.len, "s", &s, &sl);
	check_int(sl, ==, 4, "...a 4-byte string");
	ok(s != NULL && sl == 4 && memcmp(s, "pong", 4) == 0,
	    "...\"pong\"");
	mux_result_free(&r);

	rc = mux_callf(M, "echo.echo", &r, 5000, "is[b{si}]", (int64_t)-7,
	    "two", 1, "k", (int64_t)3);
	check_int(rc, ==, MUX_OK, "echo.echo answers");
	a = 0;
	tl = 0;
	b = 0;
	check_int(rc == MUX_OK ? mux_unpack(r.data, r.len, "[is[b*]]", &a,
	    &two, &tl, &b) : -1, ==, MUX_OK, "...[int, str, [bool, ...]]");
	check_int(a, ==, -7, "...its int unchanged");
	ok(tl == 3 && memcmp(two, "two", 3) == 0, "...its string unchanged");
	check_int(b, ==, 1, "...its bool unchanged");
	mux_result_free(&r);

	rc = mux_call(M, "$/methods", NULL, 0, &r, 5000);
	check_int(rc, ==, MUX_OK, "$/methods answers");
	check_has_strs("$/methods", &r, methods);
	mux_result_free(&r);
	rc = mux_call(M, "$/plugins", NULL, 0, &r, 5000);
	check_int(rc, ==, MUX_OK, "$/plugins answers");
	check_has_strs("$/plugins", &r, plugins);
	mux_result_free(&r);

	rc = mux_callf(M, "sleep.sleep", &r, 5000, "i", (int64_t)5);
	i = 0;
	check_int(rc, ==, MUX_OK, "sleep.sleep [5] answers");
	check_int(rc == MUX_OK ? mux_unpack(r.data, r.len, "i", &i) : -1, ==,
	    MUX_OK, "...an integer");
	check_int(i, ==, 5, "...5");
	mux_result_free(&r);
}

/* ---- errors ---- */

static void
test_errors(void)
{
	mux_result r;
	int rc;

	rc = mux_call(M, "nosuch.method", NULL, 0, &r, 5000);
	expect_remote("unknown method", rc, &r, -32601, "nosuch.method");
	rc = mux_call(M, "$/nosuch", NULL, 0, &r, 5000);
	expect_remote("unknown built-in", rc, &r, -32601, NULL);
	rc = mux_callf(M, "sleep.sleep", &r, 5000, "s", "soon");
	expect_remote("bad params", rc, &r, -32602, "integer");
	rc = mux_callf(M, "kv.set", &r, 5000, "i", (int64_t)1);
	expect_remote("kv.set with a bad key", rc, &r, -32602, NULL);

	rc = mux_callf(M, "sleep.sleep", &r, 5000, "i", (int64_t)-5);
	ok(r.trace != NULL && strstr(r.trace, "sleep.so") != NULL,
	    "handler error carries the worker's backtrace as trace");
	expect_remote("a handler's own error", rc, &r, 1, "-5");

	rc = mux_call(M, "faulty.two", NULL, 0, &r, 5000);
	expect_remote("a handler packing two objects", rc, &r, -32603,
	    "exactly one");
	rc = mux_call(M, "faulty.reserved", NULL, 0, &r, 5000);
	expect_remote("a handler using a reserved code", rc, &r, -32603,
	    "-32000");
	rc = mux_call(M, "faulty.trace", NULL, 0, &r, 5000);
	check_str(r.trace, "line 1\nline 2", "a handler's own trace travels "
	    "as the third element");
	check_str(r.message, "with trace 7", "...with its message");
	expect_remote("a handler's error with a trace", rc, &r, 7, NULL);
	rc = mux_call(M, "faulty.late", NULL, 0, &r, 5000);
	expect_remote("a handler that packs then errors", rc, &r, 3,
	    "changed my mind");
	rc = mux_call(M, "faulty.none", NULL, 0, &r, 5000);
	check_int(rc, ==, MUX_OK, "a handler that answers nothing succeeds");
	check_int(rc == MUX_OK ? mux_unpack(r.data, r.len, "n") : -1, ==,
	    MUX_OK, "...with nil");
	mux_result_free(&r);

	/* a libmux caller cannot corrupt the stream */
	rc = mux_call(M, "echo.echo", "\x01", 1, &r, 5000);
	check_int(rc, ==, MUX_EINVAL, "params that are not an array are "
	    "refused locally");
	mux_result_free(&r);
	rc = mux_call(M, "echo.echo", "\x92\x01", 2, &r, 5000);
	check_int(rc, ==, MUX_EINVAL, "truncated params are refused locally");
	mux_result_free(&r);
	rc = mux_call(M, "$/ping", NULL, 0, &r, 5000);
	check_int(rc, ==, MUX_OK, "the connection still works after all of "
	    "that");
	mux_result_free(&r);
}

/* ---- kv and notifications ---- */

static void
test_kv(void)
{
	mux_result r;
	int64_t v = 0;
	int rc, b = 0, i, seen = 0;
	char *p;
	size_t pl;

	rc = mux_callf(M, "kv.set", &r, 5000, "s[ii]", "a", (int64_t)1,
	    (int64_t)2);
	check_int(rc, ==, MUX_OK, "kv.set answers");
	check_int(rc == MUX_OK ? mux_unpack(r.data, r.len, "b", &b) : -1, ==,
	    MUX_OK, "...a bool");
	check_int(b, ==, 1, "...true");
	mux_result_free(&r);
	rc = mux_callf(M, "kv.get", &r, 5000, "s", "a");
	{
		int64_t x, y;

		x = y = 0;
		check_int(rc, ==, MUX_OK, "kv.get answers");
		check_int(rc == MUX_OK ? mux_unpack(r.data, r.len, "[ii]", &x,
		    &y) : -1, ==, MUX_OK, "...an array of two ints");
		check_int(x, ==, 1, "...the stored value's first");
		check_int(y, ==, 2, "...and second");
	}
	mux_result_free(&r);
	rc = mux_callf(M, "kv.get", &r, 5000, "s", "missing");
	check_int(rc, ==, MUX_OK, "kv.get of a missing key answers");
	check_int(rc == MUX_OK ? mux_unpack(r.data, r.len, "n") : -1, ==,
	    MUX_OK, "...nil");
	mux_result_free(&r);

	/* a notification is executed but never answered */
	mux_pack(&p, &pl, "[si]", "n", (int64_t)42);
	rc = mux_notify(M, "kv.set", p, pl);
	free(p);
	check_int(rc, ==, MUX_OK, "mux_notify sends");
	/* it runs on another worker: ask until it has (bounded, no sleep) */
	for (i = 0; i < 100000 && !seen; i++) {
		rc = mux_callf(M, "kv.get", &r, 5000, "s", "n");
		seen = rc == MUX_OK && mux_unpack(r.data, r.len, "i", &v) == 0 &&
		    v == 42;
		mux_result_free(&r);
	}
	ok(seen, "the notification kv.set [\"n\", 42] took effect");
	rc = mux_notify(M, "nosuch.method", NULL, 0);
	rc = mux_call(M, "$/ping", NULL, 0, &r, 5000);
	check_int(rc, ==, MUX_OK, "a notification to an unknown method gets "
	    "no answer and harms nothing");
	mux_result_free(&r);

	rc = mux_callf(M, "kv.set", &r, 5000, "si", "c", (int64_t)3);
	mux_result_free(&r);
	rc = mux_callf(M, "kv.set", &r, 5000, "si", "d", (int64_t)4);
	expect_remote("kv.set past capacity 3", rc, &r, 1, "full");
	rc = mux_callf(M, "kv.del", &r, 5000, "s", "a");
	b = 0;
	check_int(rc == MUX_OK ? mux_unpack(r.data, r.len, "b", &b) : -1, ==,
	    MUX_OK, "kv.del of a present key answers a bool");
	check_int(b, ==, 1, "...true");
	mux_result_free(&r);
	rc = mux_callf(M, "kv.del", &r, 5000, "s", "a");
	b = 1;
	check_int(rc == MUX_OK ? mux_unpack(r.data, r.len, "b", &b) : -1, ==,
	    MUX_OK, "kv.del of an absent key answers a bool");
	check_int(b, ==, 0, "...false");
	mux_result_free(&r);
	rc = mux_callf(M, "kv.set", &r, 5000, "si", "d", (int64_t)4);
	check_int(rc, ==, MUX_OK, "after a delete there is room again");
	mux_result_free(&r);
}

static void
tests(t_server *s)
{
	(void)s;
	test_basics();
	test_errors();
	test_kv();
}

int
main(void)
{
	return e2e_main(tests);
}
