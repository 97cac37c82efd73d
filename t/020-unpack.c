/*
 * 020-unpack.c - mux_pack and mux_unpack without a server: every letter
 * both ways, arrays, and maps read by key (present, optional, absent,
 * ignored, nested, wrongly typed).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <demux/mux.h>

#include "tap.h"

static void
test_scalars(void)
{
	char *p;
	size_t n, sl, bl;
	int64_t i = 0;
	uint64_t u = 0;
	double d = 0;
	int b = 0;
	const char *s;
	const void *bin;

	check_int(mux_pack(&p, &n, "[nbiudsSB]", 1, (int64_t)-7,
	    (uint64_t)UINT64_MAX, 2.5, "hi", "there", (size_t)5, "\0\1", (size_t)2),
	    ==, MUX_OK, "mux_pack: every letter in an array");
	ok(mux_unpack(p, n, "[nbiudsSB]", &b, &i, &u, &d, &s, &sl, &s, &sl,
	    &bin, &bl) == MUX_OK && b == 1 && i == -7 && u == UINT64_MAX &&
	    d == 2.5 && sl == 5 && memcmp(s, "there", 5) == 0 && bl == 2 &&
	    memcmp(bin, "\0\1", 2) == 0, "...and mux_unpack reads them back");
	check_int(mux_unpack(p, n, "[nbiuds]", &b, &i, &u, &d, &s, &sl), ==,
	    MUX_EINVAL, "an array read with fewer elements than it has: "
	    "EINVAL");
	free(p);
}

static void
test_maps(void)
{
	char *p;
	size_t n, sl, tl;
	int64_t calls = 0, x = 0, y = 0, missing = 99;
	const char *s, *t;
	double ms = 0;

	mux_pack(&p, &n, "{sSsisds[ii]s{ss}}", "name", "kv", (size_t)2,
	    "calls", (int64_t)12, "p99_ms", 1.25, "pair", (int64_t)3,
	    (int64_t)4, "inner", "tag", "x");
	ok(mux_unpack(p, n, "{sSsi}", "name", &s, &sl, "calls", &calls) ==
	    MUX_OK && sl == 2 && memcmp(s, "kv", 2) == 0 && calls == 12,
	    "a map read by key, other keys ignored");
	ok(mux_unpack(p, n, "{sisS}", "calls", &calls, "name", &s, &sl) ==
	    MUX_OK && calls == 12, "...in any order");
	ok(mux_unpack(p, n, "{s[ii]s{sS}sd}", "pair", &x, &y, "inner", "tag",
	    &t, &tl, "p99_ms", &ms) == MUX_OK && x == 3 && y == 4 && tl == 1 &&
	    *t == 'x' && ms == 1.25, "...nested arrays and maps");
	ok(mux_unpack(p, n, "{s?isi}", "nope", &missing, "calls", &calls) ==
	    MUX_OK && missing == 99 && calls == 12, "an optional key (s?) "
	    "absent: its pointer is left alone, the rest still read");
	ok(mux_unpack(p, n, "{s?[ii]s?{sS}si}", "no", &x, &y, "none", "tag",
	    &t, &tl, "calls", &calls) == MUX_OK && calls == 12, "...also when "
	    "it is an array or a map (their arguments are skipped)");
	check_int(mux_unpack(p, n, "{si}", "nope", &missing), ==, MUX_EINVAL,
	    "a required key absent: EINVAL");
	check_int(mux_unpack(p, n, "{si}", "name", &missing), ==, MUX_EINVAL,
	    "a key of another type: EINVAL");
	check_int(mux_unpack(p, n, "[i]", &missing), ==, MUX_EINVAL,
	    "a map read as an array: EINVAL");
	check_int(mux_unpack(p, n, "{ii}", (int64_t *)NULL, &missing), ==,
	    MUX_EINVAL, "a key format other than s: EINVAL");
	free(p);
}

int
main(void)
{
	test_scalars();
	test_maps();
	done_testing();
	return exit_status();
}
