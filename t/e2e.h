/*
 * e2e.h - what the 30x end-to-end tests share: one demuxd with the example
 * and test plugins, the connection most checks use, and checks on answers
 * that decode them (never a raw byte match).
 */
#ifndef T_E2E_H
#define T_E2E_H

#include <stdlib.h>
#include <string.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

static const char *CONF =
    "workers: 100\n"
    "plugins:\n"
    "  - name: echo\n"
    "    path: @B@/plugins/echo.so\n"
    "  - name: sleep\n"
    "    path: @B@/plugins/sleep.so\n"
    "  - name: kv\n"
    "    path: @B@/plugins/kv.so\n"
    "    config: { capacity: 3 }\n"
    "  - name: faulty\n"
    "    path: @B@/t/plugins/faulty.so\n";

static mux_t *M;	/* the one connection most checks share */

static inline mux_t *
connect_or_bail(const char *uri)
{
	char err[MUX_ERRLEN];
	mux_t *m = mux_connect(uri, err, sizeof(err));

	if (m == NULL)
		bail_out("connect %s: %s", uri, err);
	return m;
}

/* An error answer: its code and (if needle) a word of its message. */
static inline void
expect_remote(const char *what, int rc, mux_result *r, int64_t code,
    const char *needle)
{
	check_int(rc, ==, MUX_EREMOTE, "%s: an error answer", what);
	check_int(r->code, ==, code, "%s: code %lld", what, (long long)code);
	ok(r->message != NULL && (needle == NULL ||
	    strstr(r->message, needle) != NULL), "%s: message '%s' says '%s'",
	    what, r->message ? r->message : "(none)", needle ? needle : "");
	mux_result_free(r);
}

/* The answer r decodes and holds each of the strings (NULL-terminated). */
static inline void
check_has_strs(const char *what, const mux_result *r, const char *const *s)
{
	for (; *s != NULL; s++)
		check_int(t_has_str(r->data, r->len, *s), ==, 1, "%s: holds "
		    "\"%s\"", what, *s);
}

/* Start demuxd on CONF, connect M, run the tests, stop it. */
static inline int
e2e_main(void (*tests)(t_server *s))
{
	t_server s;
	int st;

	t_watchdog(240);
	if (t_server_start(&s, CONF, NULL) != 0)
		bail_out("cannot start demuxd");
	setenv("T_URI", s.uri, 1);
	M = connect_or_bail(s.uri);
	tests(&s);
	mux_free(M);
	st = t_server_stop(&s);
	check_int(st, ==, 0, "demuxd stops cleanly on SIGTERM%s",
	    getenv("DEMUX_VALGRIND") ? " (and valgrind found no leak)" : "");
	done_testing();
	return exit_status();
}

#endif
