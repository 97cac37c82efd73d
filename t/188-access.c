/*
 * 188-access.c - who may call what: identities (unix:USER from
 * SO_PEERCRED, anonymous on tcp, token:NAME after $/auth), the access:
 * rules (first match wins, deny before allow, no match refused), -32015
 * and -32016, $/methods filtered, refusals counted, revocation by SIGHUP
 * on a live connection, tokens (right, wrong, unknown, max_failures), the
 * identity a plugin sees in both isolation modes, send_traces: false,
 * unix_mode and unix_group.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

static const char *RULES =
    "access:\n"
    "  - identity: \"unix:root\"\n"
    "    allow: [ \"*\" ]\n"
    "    deny: [ \"kv.del\" ]\n"
    "  - identity: \"unix:nobody\"\n"
    "    allow: [ \"crashy.whoami\" ]\n"
    "  - identity: \"token:ci\"\n"
    "    allow: [ \"echo.echo\", \"$/stats\", \"crashy.*\", \"iso.*\" ]\n"
    "  - identity: \"*\"\n"
    "    allow: [ \"$/ping\", \"$/health\", \"$/methods\" ]\n";

static t_server S;
static char tcp_uri[64];

static void
write_conf(const char *rules, int port)
{
	char path[400];
	FILE *f;

	snprintf(path, sizeof(path), "%s/demux.yaml", S.dir);
	f = fopen(path, "w");
	fprintf(f, "listen: [ \"unix:demux.sock\", \"tcp:127.0.0.1:%d\" ]\n"
	    "unix_mode: \"0666\"\n"
	    "unix_group: daemon\n"
	    "send_traces: false\n"
	    "auth:\n  tokens:\n    - name: ci\n      secret_file: ci.token\n"
	    "  max_failures: 2\n"
	    "%s"
	    "plugins:\n"
	    "  - name: echo\n    path: %s\n"
	    "  - name: kv\n    path: %s\n"
	    "  - name: crashy\n    path: %s\n"
	    "  - name: iso\n    path: %s\n    isolation: process\n",
	    port, rules, t_build("plugins/echo.so"), t_build("plugins/kv.so"),
	    t_build("t/plugins/crashy.so"), t_build("t/plugins/crashy.so"));
	fclose(f);
}

static int
call(mux_t *m, const char *method, mux_result *r)
{
	return mux_call(m, method, NULL, 0, r, 5000);
}

static void
expect(mux_t *m, const char *method, int64_t code, const char *needle,
    const char *what)
{
	mux_result r;
	int rc = call(m, method, &r);

	if (code == 0) {
		check_int(rc, ==, MUX_OK, "%s", what);
	} else {
		check_int(rc == MUX_EREMOTE ? r.code : rc, ==, code, "%s", what);
		ok(needle == NULL || (r.message != NULL &&
		    strstr(r.message, needle) != NULL), "...%s", r.message ?
		    r.message : "(no message)");
	}
	mux_result_free(&r);
}

static char *
whoami(mux_t *m, const char *plugin)
{
	static char buf[128];
	char meth[64];
	mux_result r;
	const char *s;
	size_t n;

	snprintf(meth, sizeof(meth), "%s.whoami", plugin);
	buf[0] = '\0';
	if (call(m, meth, &r) == MUX_OK &&
	    mux_unpack(r.data, r.len, "s", &s, &n) == MUX_OK)
		snprintf(buf, sizeof(buf), "%.*s", (int)n, s);
	mux_result_free(&r);
	return buf;
}

/* Run `muxcall -c URI METHOD` as pw; its output (both streams) into out. */
static void
as_nobody(const struct passwd *pw, const char *method, char *out, size_t n)
{
	int pfd[2], st;
	ssize_t k;
	size_t len = 0;
	pid_t pid;

	out[0] = '\0';
	if (pipe(pfd) != 0)
		return;
	pid = fork();
	if (pid == 0) {
		dup2(pfd[1], 1);
		dup2(pfd[1], 2);
		close(pfd[0]);
		if (setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0)
			_exit(3);
		execl(t_build("muxcall"), "muxcall", "-c", S.uri, method,
		    (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	while (len + 1 < n && (k = read(pfd[0], out + len, n - 1 - len)) > 0)
		len += (size_t)k;
	out[len] = '\0';
	close(pfd[0]);
	waitpid(pid, &st, 0);
}

static int
auth(mux_t *m, const char *name, const char *secret, mux_result *r)
{
	return mux_callf(m, "$/auth", r, 5000, "ss", name, secret);
}

int
main(void)
{
	char err[MUX_ERRLEN], path[400];
	mux_t *u, *t, *t2;
	mux_result r;
	struct stat st;
	int port, rc;
	FILE *f;

	t_watchdog(120);
	if (geteuid() != 0)
		skip_all("the unix: identities here need root (and nobody)");
	port = t_free_port();
	snprintf(tcp_uri, sizeof(tcp_uri), "tcp:127.0.0.1:%d", port);
	/* a first start writes the folder; the real configuration follows */
	if (t_server_start(&S, "plugins: []\n", NULL) != 0)
		bail_out("demuxd");
	S.keep = 1;
	t_server_stop(&S);
	snprintf(path, sizeof(path), "%s/ci.token", S.dir);
	f = fopen(path, "w");
	fprintf(f, "s3cret-token\n");
	fclose(f);
	chmod(path, 0644);
	write_conf(RULES, port);
	{
		char cmd[800], out[2048];
		size_t n;
		FILE *p;

		snprintf(cmd, sizeof(cmd), "%s --check -c %s/demux.yaml 2>&1",
		    t_build("demuxd"), S.dir);
		p = popen(cmd, "r");
		n = fread(out, 1, sizeof(out) - 1, p);
		out[n] = '\0';
		rc = pclose(p);
		check_int(WEXITSTATUS(rc), ==, 2, "a group-readable secret_file "
		    "is a configuration error");
		ok(strstr(out, "ci.token") && strstr(out, "chmod 600"),
		    "...naming the file and the fix: %s", out);
	}
	chmod(path, 0600);
	if (t_server_restart(&S) != 0)
		bail_out("demuxd with access rules");

	check_int(stat(S.uri + 5, &st), ==, 0, "the unix socket exists");
	check_int(st.st_mode & 0777, ==, 0666, "...with unix_mode 0666");
	{
		const struct group *gr = getgrnam("daemon");

		ok(gr != NULL && st.st_gid == gr->gr_gid, "...and unix_group "
		    "daemon (gid %ld)", (long)st.st_gid);
	}

	u = mux_connect(S.uri, err, sizeof(err));
	t = mux_connect(tcp_uri, err, sizeof(err));
	if (u == NULL || t == NULL)
		bail_out("connect: %s", err);

	/* unix:root: everything but kv.del */
	check_str(whoami(u, "crashy"), "unix:root", "a unix peer is "
	    "unix:USER (SO_PEERCRED), and the plugin sees it");
	check_str(whoami(u, "iso"), "unix:root", "...in a process-mode plugin "
	    "too");
	expect(u, "echo.echo", 0, NULL, "unix:root may call echo.echo");
	expect(u, "kv.del", -32016, "permission denied: unix:root may not "
	    "call kv.del", "deny is checked before allow");

	/* anonymous (tcp): $/ping, $/health, $/methods only */
	expect(t, "$/ping", 0, NULL, "anonymous may call $/ping");
	expect(t, "echo.echo", -32015, "unauthenticated: echo.echo needs "
	    "authentication", "anonymous may not call echo.echo: -32015");
	expect(t, "no.such", -32015, NULL, "a method that does not exist is "
	    "refused the same way (nothing learnt)");
	check_int(call(t, "$/methods", &r), ==, MUX_OK, "$/methods answers");
	check_int(t_has_str(r.data, r.len, "$/ping"), ==, 1, "...listing "
	    "$/ping");
	check_int(t_has_str(r.data, r.len, "echo.echo"), ==, 0, "...and not "
	    "what anonymous may not call");
	mux_result_free(&r);

	/* tokens */
	check_int(auth(t, "ci", "wrong", &r), ==, MUX_EREMOTE, "$/auth with "
	    "a wrong secret is refused");
	check_int(r.code, ==, -32015, "...-32015");
	check_str(r.message, "authentication failed", "...'authentication "
	    "failed'");
	mux_result_free(&r);
	t2 = mux_connect(tcp_uri, err, sizeof(err));
	check_int(auth(t2, "nobody-knows", "s3cret-token", &r), ==,
	    MUX_EREMOTE, "an unknown name is refused");
	check_str(r.message, "authentication failed", "...with the same "
	    "message");
	mux_result_free(&r);
	check_int(auth(t2, "ci", "s3cret-tokeN", &r), ==, MUX_EREMOTE,
	    "a second failure on one connection (max_failures 2)");
	mux_result_free(&r);
	rc = call(t2, "$/ping", &r);
	ok(rc == MUX_ECONN || rc == MUX_ENOTCONN || rc == MUX_ECLOSED,
	    "...closes it (%s)", mux_strerror(rc));
	mux_result_free(&r);
	mux_free(t2);

	check_int(auth(t, "ci", "s3cret-token", &r), ==, MUX_OK, "$/auth "
	    "with the right secret");
	mux_result_free(&r);
	check_str(whoami(t, "crashy"), "token:ci", "the identity is now "
	    "token:ci");
	check_str(whoami(t, "iso"), "token:ci", "...in a process-mode plugin "
	    "too");
	expect(t, "echo.echo", 0, NULL, "token:ci may call echo.echo");
	expect(t, "kv.get", -32016, "permission denied: token:ci may not call "
	    "kv.get", "...and not kv.get: -32016");
	ok(t_stat_path(S.uri, "access/refused/anonymous") >= 2, "$/stats "
	    "counts refusals by identity (anonymous: %ld)",
	    t_stat_path(S.uri, "access/refused/anonymous"));

	/* send_traces: false */
	check_int(call(u, "crashy.fail", &r), ==, MUX_EREMOTE, "a handler "
	    "error");
	ok(r.trace == NULL, "...carries no trace with send_traces: false");
	mux_result_free(&r);

	/* unix:nobody, from a process running as nobody (muxcall, exec'd:
	 * no fork of this threaded test goes on running libmux) */
	{
		struct passwd *pw = getpwnam("nobody");
		char out[2][512];
		int k;

		if (pw == NULL || chmod(S.dir, 0711) != 0) {
			ok(1, "# SKIP no user nobody");
		} else {
			static const char *const meth[2] = { "crashy.whoami",
			    "echo.echo" };

			for (k = 0; k < 2; k++)
				as_nobody(pw, meth[k], out[k], sizeof(out[k]));
			ok(strstr(out[0], "unix:nobody") != NULL, "a client "
			    "running as nobody is unix:nobody: %s", out[0]);
			ok(strstr(out[1], "-32016") != NULL && strstr(out[1],
			    "unix:nobody may not call echo.echo") != NULL,
			    "...and its rule applies: %s", out[1]);
		}
	}

	/* libmux sends $/auth itself: auth_name, auth_secret */
	{
		mux_options o;
		mux_t *a;
		char tok[450], cmd[1200], out[512];
		size_t n;
		FILE *p;

		mux_options_init(&o);
		o.auth_name = "ci";
		o.auth_secret = "s3cret-token";
		a = mux_open(tcp_uri, &o, err, sizeof(err));
		ok(a != NULL, "mux_open with auth_name/auth_secret (%s)",
		    a ? "ok" : err);
		if (a != NULL) {
			check_str(whoami(a, "crashy"), "token:ci", "...its calls "
			    "come from token:ci");
			mux_free(a);
		}
		o.auth_secret = "wrong";
		o.reconnect = 0;
		a = mux_open(tcp_uri, &o, err, sizeof(err));
		ok(a == NULL && strstr(err, "authentication failed") != NULL,
		    "a refused $/auth: mux_open says so: %s", a ? "" : err);
		mux_free(a);
		o.reconnect = 1;
		a = mux_open(tcp_uri, &o, err, sizeof(err));
		if (a != NULL) {
			mux_endpoint_info ei;

			rc = call(a, "echo.echo", &r);
			check_int(rc == MUX_EREMOTE ? r.code : rc, ==, -32015,
			    "with reconnects on, the calls fail with the "
			    "server's answer (%s)", r.message ? r.message : "");
			mux_result_free(&r);
			mux_endpoint(a, 0, &ei);
			check_int(ei.connects, ==, 0, "...and the endpoint is "
			    "not reconnected in a loop");
			mux_free(a);
		}
		snprintf(tok, sizeof(tok), "ci:%s/ci.token", S.dir);
		snprintf(cmd, sizeof(cmd), "%s -c %s --token %s crashy.whoami "
		    "2>&1", t_build("muxcall"), tcp_uri, tok);
		p = popen(cmd, "r");
		n = fread(out, 1, sizeof(out) - 1, p);
		out[n] = '\0';
		pclose(p);
		ok(strstr(out, "token:ci") != NULL, "muxcall --token NAME:FILE: "
		    "%s", out);
	}

	/* revocation: SIGHUP with token:ci's echo.echo gone */
	write_conf("access:\n"
	    "  - identity: \"unix:root\"\n    allow: [ \"*\" ]\n"
	    "  - identity: \"token:ci\"\n    allow: [ \"crashy.*\" ]\n", port);
	kill(S.pid, SIGHUP);
	{
		double t0 = t_now_ms();

		while (t_stat(S.uri, "server", "reloads") < 1 &&
		    t_now_ms() - t0 < 10000)
			sched_yield();
	}
	expect(t, "echo.echo", -32016, "token:ci may not call echo.echo",
	    "after a reload the live connection's next call follows the new "
	    "rules");
	rc = mux_callf(u, "kv.del", &r, 5000, "s", "nokey");
	check_int(rc, ==, MUX_OK, "...and unix:root may now call kv.del (no "
	    "deny any more)");
	mux_result_free(&r);

	mux_free(u);
	mux_free(t);
	check_int(t_server_stop(&S), ==, 0, "demuxd stops cleanly");
	done_testing();
	return exit_status();
}
