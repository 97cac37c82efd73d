/*
 * host.c - plugin-host mode (`demuxd --plugin-host`): the child side of
 * isolation: process (proc.c).
 *
 * demuxd starts itself with fork+exec; the child has descriptors 0 (null),
 * 1 and 2 (a pipe to demuxd's log), 3 (its socket to demuxd) and 4 (the
 * .so as it was when configured), nothing else. Its first message is
 * [2, "$/host", [{...}]]: which plugin, its config, how many workers, and
 * the user to run as. It then becomes an ordinary demuxd serving that one
 * plugin on that one connection, as --stdio does: the same framing, codec,
 * pools, cancellation and host table as in thread mode. When demuxd shuts
 * the socket it answers what it has, runs the plugin's fini and exits 0.
 *
 * A fatal signal in plugin code prints the signal and a backtrace to
 * stderr (demuxd logs them, tagged) and then kills the child with that
 * signal, so demuxd sees what it was.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../common/buf.h"
#include "../common/text.h"
#include "../common/wire.h"
#include "config.h"
#include "fatal.h"
#include "log.h"
#include "proc.h"
#include "server.h"

#define HELLO_MAX	(256u << 20)	/* the host message, config included */

/* Read exactly one frame from fd (blocking), leaving what follows it in
 * the socket for the server: peek, measure, then take that much. */
static int
read_hello(int fd, dmx_buf *b)
{
	dmx_scan sc = DMX_SCAN_INIT;
	size_t want = 4096, flen;
	ssize_t n;
	int rc;

	for (;;) {
		if (dmx_buf_reserve(b, want) != 0)
			return -1;
		n = recv(fd, b->data, b->cap, MSG_PEEK);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		sc = (dmx_scan)DMX_SCAN_INIT;
		rc = dmx_scan_frame(&sc, (uint8_t *)b->data, (size_t)n,
		    HELLO_MAX, &flen);
		if (rc == DMX_SCAN_FRAME)
			break;
		if (rc != DMX_SCAN_MORE)
			return -1;
		if ((size_t)n == b->cap) {
			want = b->cap * 2;
		} else {
			struct pollfd p = { fd, POLLIN, 0 };

			/* more is on its way: wait for it, then peek again */
			(void)poll(&p, 1, 100);
		}
	}
	b->len = 0;
	while (b->len < flen) {
		n = recv(fd, b->data + b->len, flen - b->len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		b->len += (size_t)n;
	}
	return 0;
}

static char *
str_of(dmx_rd *r)
{
	const char *s;
	uint32_t n;

	if (dmx_rd_is_nil(r)) {
		dmx_rd_nil(r);
		return NULL;
	}
	return dmx_rd_str(r, &s, &n) == 0 ? dmx_strndup(s, n) : NULL;
}

/* The host message into cfg (one plugin, no listener). */
static int
parse_hello(const dmx_buf *b, dmx_config *cfg, char **user, char **group,
    int *log_level)
{
	dmx_conf_plugin *p;
	const char *m, *k;
	uint32_t n, ml, kl, i;
	uint64_t type, u;
	int64_t v;
	dmx_rd r;

	dmx_rd_init(&r, b->data, b->len);
	if (dmx_rd_array(&r, &n) != 0 || n != 3 || dmx_rd_uint(&r, &type) != 0 ||
	    type != DMX_MSG_NOTIFY || dmx_rd_str(&r, &m, &ml) != 0 ||
	    ml != 6 || memcmp(m, "$/host", 6) != 0 ||
	    dmx_rd_array(&r, &n) != 0 || n != 1 || dmx_rd_map(&r, &n) != 0)
		return -1;
	cfg->plugins = calloc(1, sizeof(*cfg->plugins));
	if (cfg->plugins == NULL)
		return -1;
	cfg->nplugins = 1;
	p = &cfg->plugins[0];
	for (i = 0; i < n; i++) {
		if (dmx_rd_str(&r, &k, &kl) != 0)
			return -1;
#define KEY(s) (kl == sizeof(s) - 1 && memcmp(k, s, kl) == 0)
		if (KEY("name")) {
			p->name = str_of(&r);
		} else if (KEY("path")) {
			p->path = str_of(&r);
		} else if (KEY("open")) {
			p->open = str_of(&r);
		} else if (KEY("file")) {
			cfg->file = str_of(&r);
		} else if (KEY("user")) {
			*user = str_of(&r);
		} else if (KEY("group")) {
			*group = str_of(&r);
		} else if (KEY("config")) {
			const uint8_t *start = r.p;

			if (dmx_rd_is_nil(&r)) {
				dmx_rd_nil(&r);
				continue;
			}
			if (dmx_rd_skip(&r) != 0)
				return -1;
			p->config_len = (size_t)(r.p - start);
			p->config = malloc(p->config_len);
			if (p->config == NULL)
				return -1;
			memcpy(p->config, start, p->config_len);
		} else if (KEY("max_frame")) {
			if (dmx_rd_uint(&r, &u) != 0)
				return -1;
			cfg->max_frame = (size_t)u;
		} else if (KEY("queue")) {
			if (dmx_rd_uint(&r, &u) != 0)
				return -1;
			cfg->queue = (unsigned)u;
		} else {
			if (dmx_rd_int(&r, &v) != 0)
				return -1;
			if (KEY("workers"))
				cfg->workers = (int)v;
			else if (KEY("max_threads"))
				cfg->max_threads = (int)v;
			else if (KEY("log_level"))
				*log_level = (int)v;
			else if (KEY("line"))
				p->line = (int)v;
			else if (KEY("send_traces"))
				cfg->send_traces = v != 0;
		}
#undef KEY
	}
	if (p->path == NULL)
		return -1;
	p->processes = 1;
	return 0;
}

/* As root, become user (and group; its own group by default). */
static int
become(const char *user, const char *group, char *err, size_t errlen)
{
	struct passwd *pw = NULL;
	struct group *gr = NULL;
	gid_t gid;

	if (user == NULL && group == NULL)
		return 0;
	if (geteuid() != 0) {
		snprintf(err, errlen, "user/group: demuxd is not running as "
		    "root, so it cannot change the children's user");
		return -1;
	}
	if (user != NULL && (pw = getpwnam(user)) == NULL) {
		snprintf(err, errlen, "user: no such user '%s'", user);
		return -1;
	}
	if (group != NULL && (gr = getgrnam(group)) == NULL) {
		snprintf(err, errlen, "group: no such group '%s'", group);
		return -1;
	}
	gid = gr ? gr->gr_gid : pw ? pw->pw_gid : getgid();
	if (setgroups(0, NULL) != 0 || setgid(gid) != 0 ||
	    (pw != NULL && setuid(pw->pw_uid) != 0)) {
		snprintf(err, errlen, "cannot become %s/%s: %s",
		    user ? user : "-", group ? group : "-", strerror(errno));
		return -1;
	}
	return 0;
}

int
dmx_plugin_host_main(int fd)
{
	char err[1024], *user = NULL, *group = NULL;
	dmx_buf hello = DMX_BUF_INIT;
	dmx_server *srv;
	dmx_config *cfg;
	int level = DEMUX_LOG_INFO, rc = 0;

	dmx_fatal_install("demuxd: plugin host", "; this child ends, demuxd "
	    "answers its calls -32014 and starts another");
	/* demuxd gone (even killed): so are we */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() == 1)
		return 1;
	cfg = calloc(1, sizeof(*cfg));
	if (cfg == NULL || read_hello(fd, &hello) != 0) {
		fprintf(stderr, "demuxd: plugin host: no host message on "
		    "descriptor %d\n", fd);
		return 2;
	}
	dmx_config_defaults(cfg);
	/* demuxd bounds the connection; here nothing should stop first */
	cfg->max_inflight = 1u << 24;
	cfg->max_output = (size_t)1 << 40;
	cfg->max_inflight_bytes = (size_t)1 << 40;
	cfg->max_memory = (size_t)1 << 44;
	cfg->frame_timeout_ms = 0;
	cfg->idle_timeout_ms = 0;
	if (parse_hello(&hello, cfg, &user, &group, &level) != 0) {
		fprintf(stderr, "demuxd: plugin host: a malformed host "
		    "message\n");
		dmx_buf_release(&hello);
		return 2;
	}
	dmx_buf_release(&hello);
	dmx_log_set_level(level);
	if (become(user, group, err, sizeof(err)) != 0) {
		fprintf(stderr, "demuxd: %s:%d: plugin '%s': %s\n",
		    cfg->file ? cfg->file : "", cfg->plugins[0].line,
		    cfg->plugins[0].name ? cfg->plugins[0].name : "", err);
		free(user);
		free(group);
		return 2;
	}
	free(user);
	free(group);
	srv = dmx_server_new(cfg, err, sizeof(err));
	if (srv == NULL) {
		fprintf(stderr, "demuxd: %s\n", err);
		return 2;
	}
	if (dmx_server_add_fd(srv, fd, err, sizeof(err)) != 0) {
		fprintf(stderr, "demuxd: plugin host: %s\n", err);
		rc = 2;
	} else if (dmx_server_run(srv) != 0) {
		rc = 1;
	}
	dmx_server_free(srv);
	return rc;
}
