/*
 * e2e.h - what the 30x end-to-end tests share: one demuxd with the example
 * and test plugins, the connection most checks use, and checks on answers
 * that decode them (never a raw byte match).
 */
#ifndef T_E2E_H
#define T_E2E_H

#include <errno.h>
#include <stdio.h>
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

/*
 * With T_TLS set, M is a tls: connection with a client certificate
 * (client_auth require, the default with a ca) instead of the unix socket:
 * the same tests then prove the TLS transport. t/certs.py makes the
 * certificates. Fills yaml (CONF with the tls: listener), o and uri.
 */
static char e2e_certs[] = "/tmp/demux-certs.XXXXXX";

static inline void
e2e_tls_setup(char *yaml, size_t n, mux_options *o, char *uri, size_t un)
{
	char *dir = e2e_certs;
	static char ca[300], crt[300], key[300];
	char cmd[300];
	int port = t_free_port();

	if (mkdtemp(dir) == NULL)
		bail_out("mkdtemp: %s", strerror(errno));
	snprintf(cmd, sizeof(cmd), "/usr/bin/python3 t/certs.py %s", dir);
	if (system(cmd) != 0)
		bail_out("%s failed", cmd);
	snprintf(yaml, n, "listen: [ \"unix:demux.sock\", "
	    "\"tls:127.0.0.1:%d\" ]\ntls:\n  cert: %s/server.crt\n"
	    "  key: %s/server.key\n  ca: %s/ca.crt\n%s", port, dir, dir, dir,
	    CONF);
	snprintf(uri, un, "tls:127.0.0.1:%d", port);
	snprintf(ca, sizeof(ca), "%s/ca.crt", dir);
	snprintf(crt, sizeof(crt), "%s/client.crt", dir);
	snprintf(key, sizeof(key), "%s/client.key", dir);
	mux_options_init(o);
	o->reconnect = 0;		/* as mux_connect */
	o->health_interval_ms = 0;
	o->tls_ca = ca;
	o->tls_cert = crt;
	o->tls_key = key;
}

/* Start demuxd on CONF, connect M, run the tests, stop it. */
static inline int
e2e_main(void (*tests)(t_server *s))
{
	static char yaml[4096];
	char uri[64], err[MUX_ERRLEN];
	mux_options o;
	t_server s;
	int st, tls = getenv("T_TLS") != NULL;

	t_watchdog(240);
	if (tls)
		e2e_tls_setup(yaml, sizeof(yaml), &o, uri, sizeof(uri));
	if (t_server_start(&s, tls ? yaml : CONF, NULL) != 0)
		bail_out("cannot start demuxd");
	setenv("T_URI", s.uri, 1);
	if (tls) {
		if ((M = mux_open(uri, &o, err, sizeof(err))) == NULL)
			bail_out("connect %s: %s", uri, err);
		diag("M is %s, with a client certificate", uri);
	} else {
		M = connect_or_bail(s.uri);
	}
	tests(&s);
	mux_free(M);
	st = t_server_stop(&s);
	if (tls) {
		char cmd[300];

		snprintf(cmd, sizeof(cmd), "rm -rf %s", e2e_certs);
		if (system(cmd) != 0)
			diag("%s failed", cmd);
	}
	check_int(st, ==, 0, "demuxd stops cleanly on SIGTERM%s",
	    getenv("DEMUX_VALGRIND") ? " (and valgrind found no leak)" : "");
	done_testing();
	return exit_status();
}

#endif
