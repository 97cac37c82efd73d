/*
 * helper.c - see helper.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <msgpack.h>
#include <demux/mux.h>

#include "helper.h"

#define MAX_SERVERS 16

static pid_t servers[MAX_SERVERS];
static char  server_dirs[MAX_SERVERS][256];

static void
forget_server(pid_t pid)
{
	int i;

	for (i = 0; i < MAX_SERVERS; i++)
		if (servers[i] == pid)
			servers[i] = 0;
}

static void
kill_all(void)
{
	int i, st;

	for (i = 0; i < MAX_SERVERS; i++)
		if (servers[i] > 0) {
			kill(servers[i], SIGKILL);
			waitpid(servers[i], &st, 0);
			servers[i] = 0;
		}
}

static void
on_alarm(int sig)
{
	static const char msg[] = "Bail out! watchdog: the test hung; "
	    "servers killed\n";
	int i;

	(void)sig;
	for (i = 0; i < MAX_SERVERS; i++)
		if (servers[i] > 0)
			kill(servers[i], SIGKILL);
	if (write(STDOUT_FILENO, msg, sizeof(msg) - 1) < 0)
		_exit(1);
	_exit(1);
}

void
t_watchdog(unsigned seconds)
{
	const char *v = getenv("DEMUX_VALGRIND");

	if (v != NULL && *v == '1')
		seconds *= 20;	/* valgrind is slow */
	signal(SIGALRM, on_alarm);
	alarm(seconds);
	atexit(kill_all);
}

size_t
t_bin_params(char *p, size_t n, unsigned seed)
{
	size_t i;

	p[0] = (char)0x91;
	p[1] = (char)0xc6;
	p[2] = (char)(n >> 24);
	p[3] = (char)(n >> 16);
	p[4] = (char)(n >> 8);
	p[5] = (char)n;
	for (i = 0; i < n; i++)
		p[6 + i] = (char)(i * 131 + seed);
	return n + 6;
}

double
t_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

const char *
t_build(const char *rel)
{
	static char bufs[8][PATH_MAX + 64];
	static int next;
	static char root[PATH_MAX];
	char *out = bufs[next++ % 8];
	const char *b = getenv("BUILD");

	if (root[0] == '\0' && realpath(b && *b ? b : "build", root) == NULL)
		snprintf(root, sizeof(root), "%s", b && *b ? b : "build");
	snprintf(out, PATH_MAX + 64, "%s/%s", root, rel);
	return out;
}

/* Copy yaml to fp, replacing @B@ with the build folder. */
static void
write_conf(FILE *fp, const char *yaml)
{
	const char *p, *root = t_build("");
	size_t rl = strlen(root) - 1;	/* without the trailing slash */

	for (p = yaml; *p; p++) {
		if (strncmp(p, "@B@", 3) == 0) {
			fwrite(root, 1, rl, fp);
			p += 2;
		} else {
			fputc(*p, fp);
		}
	}
}

/* Forward what demuxd logs at warn or error level to our stderr, as TAP
 * comments, until it exits.  Plain read(2), not a FILE: this thread is
 * detached and may still be running when the test's main thread exits, and
 * an fclose() here racing exit()'s walk over the open FILEs is a real
 * use-after-free (valgrind reports it in the client tests). */
static void *
forward_log(void *arg)
{
	int fd = (int)(intptr_t)arg;
	char line[4096];
	size_t have = 0;
	ssize_t n;
	/* T_LOG_ALL=1: every line (a sanitizer's report spans many) */
	int all = getenv("T_LOG_ALL") != NULL;

	while ((n = read(fd, line + have, sizeof(line) - 1 - have)) != 0) {
		char *p, *nl;

		if (n < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		have += (size_t)n;
		line[have] = '\0';
		p = line;
		while ((nl = strchr(p, '\n')) != NULL) {
			*nl = '\0';
			if (all || strstr(p, " warn: ") ||
			    strstr(p, " error: ") ||
			    strstr(p, "==") /* valgrind */)
				fprintf(stderr, "# demuxd: %s\n", p);
			p = nl + 1;
		}
		have = (size_t)(line + have - p);
		memmove(line, p, have);
		if (have == sizeof(line) - 1)
			have = 0;	/* an overlong line: drop it */
	}
	close(fd);
	return NULL;
}

static int launch(t_server *s, char **extra);

int t_start_may_fail;

int
t_server_start(t_server *s, const char *yaml, ...)
{
	char *extra[24];
	int n = 0;
	va_list ap;
	FILE *fp;

	memset(s, 0, sizeof(*s));
	snprintf(s->dir, sizeof(s->dir), "/tmp/demux-t.XXXXXX");
	if (mkdtemp(s->dir) == NULL) {
		perror("mkdtemp");
		return -1;
	}
	snprintf(s->conf, sizeof(s->conf), "%s/demux.yaml", s->dir);
	snprintf(s->uri, sizeof(s->uri), "unix:%s/demux.sock", s->dir);
	fp = fopen(s->conf, "w");
	if (fp == NULL) {
		perror(s->conf);
		return -1;
	}
	if (strstr(yaml, "listen:") == NULL)
		fputs("listen: \"unix:demux.sock\"\n", fp);
	write_conf(fp, yaml);
	fclose(fp);
	va_start(ap, yaml);
	while ((extra[n] = va_arg(ap, char *)) != NULL && n < 22)
		n++;
	va_end(ap);
	extra[n] = NULL;
	return launch(s, extra);
}

int
t_server_restart(t_server *s)
{
	char *none[1] = { NULL };

	return launch(s, none);
}

/* Start demuxd on s->conf and wait for READY. */
static int
launch(t_server *s, char **extra)
{
	const char *vg = getenv("DEMUX_VALGRIND");
	char *argv[32], line[4096];
	int pfd[2], argc = 0, i, ready = 0;
	size_t have = 0;
	pthread_t th;
	double deadline;

	if (vg != NULL && *vg == '1') {
		argv[argc++] = "valgrind";
		argv[argc++] = "--quiet";
		argv[argc++] = "--leak-check=full";
		argv[argc++] = "--show-leak-kinds=definite,indirect";
		argv[argc++] = "--errors-for-leak-kinds=definite,indirect";
		argv[argc++] = "--error-exitcode=99";
	}
	argv[argc++] = (char *)t_build("demuxd");
	argv[argc++] = "-c";
	argv[argc++] = s->conf;
	for (i = 0; extra[i] != NULL && argc < 30; i++)
		argv[argc++] = extra[i];
	argv[argc] = NULL;

	if (pipe2(pfd, O_CLOEXEC) != 0) {
		perror("pipe");
		return -1;
	}
	s->pid = fork();
	if (s->pid < 0) {
		perror("fork");
		return -1;
	}
	if (s->pid == 0) {
		dup2(pfd[1], STDERR_FILENO);
		execvp(argv[0], argv);
		fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	close(pfd[1]);
	for (i = 0; i < MAX_SERVERS; i++)
		if (servers[i] == 0) {
			servers[i] = s->pid;
			snprintf(server_dirs[i], sizeof(server_dirs[i]), "%s",
			    s->dir);
			break;
		}

	/* wait for READY, at most 60 s */
	deadline = t_now_ms() + 60000;
	while (!ready) {
		struct pollfd p = { pfd[0], POLLIN, 0 };
		ssize_t n;
		char *nl;

		if (poll(&p, 1, (int)(deadline - t_now_ms())) <= 0)
			break;
		n = read(pfd[0], line + have, sizeof(line) - 1 - have);
		if (n <= 0)
			break;
		have += (size_t)n;
		line[have] = '\0';
		while ((nl = strchr(line, '\n')) != NULL) {
			*nl = '\0';
			if (strstr(line, "READY"))
				ready = 1;
			else if (!strstr(line, " info: ") &&
			    !strstr(line, " debug: "))
				fprintf(stderr, "# demuxd%s: %s\n",
				    t_start_may_fail ? " (expected to fail)" :
				    "", line);
			memmove(line, nl + 1, have - (size_t)(nl + 1 - line) + 1);
			have -= (size_t)(nl + 1 - line);
		}
		if (have == sizeof(line) - 1)
			have = 0;
	}
	if (!ready) {
		if (t_start_may_fail)
			fprintf(stderr, "# demuxd refused to start, as this "
			    "test expects%s%s\n", line[0] ? ": " : "", line);
		else
			fprintf(stderr, "# demuxd did not become ready: %s\n",
			    line);
		t_server_kill(s);
		close(pfd[0]);
		return -1;
	}
	if (pthread_create(&th, NULL, forward_log,
	    (void *)(intptr_t)pfd[0]) == 0)
		pthread_detach(th);
	else
		close(pfd[0]);
	return 0;
}

static void
cleanup_dir(t_server *s)
{
	char p[400];

	snprintf(p, sizeof(p), "%s/demux.yaml", s->dir);
	unlink(p);
	snprintf(p, sizeof(p), "%s/demux.sock", s->dir);
	unlink(p);
	rmdir(s->dir);
}

static int server_reap(t_server *s);

int
t_server_stop(t_server *s)
{
	if (s->pid <= 0)
		return -1;
	kill(s->pid, SIGTERM);
	return server_reap(s);
}

int
t_server_wait(t_server *s)
{
	if (s->pid <= 0)
		return -1;
	return server_reap(s);
}

static int
server_reap(t_server *s)
{
	int st = 0;

	while (waitpid(s->pid, &st, 0) < 0 && errno == EINTR)
		;
	forget_server(s->pid);
	s->pid = 0;
	if (!s->keep)
		cleanup_dir(s);
	if (WIFEXITED(st))
		return WEXITSTATUS(st);
	return 128 + WTERMSIG(st);
}

void
t_server_kill(t_server *s)
{
	if (s->pid <= 0)
		return;
	t_server_crash(s);
	cleanup_dir(s);
}

void
t_server_crash(t_server *s)
{
	int st;

	if (s->pid <= 0)
		return;
	kill(s->pid, SIGKILL);
	while (waitpid(s->pid, &st, 0) < 0 && errno == EINTR)
		;
	forget_server(s->pid);
	s->pid = 0;
}

void
t_server_cleanup(t_server *s)
{
	cleanup_dir(s);
}

void
t_track(pid_t pid)
{
	int i;

	for (i = 0; i < MAX_SERVERS; i++)
		if (servers[i] == 0) {
			servers[i] = pid;
			server_dirs[i][0] = '\0';
			return;
		}
}

void
t_untrack(pid_t pid)
{
	forget_server(pid);
}

int
t_free_port(void)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	int fd, port = -1;

	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
		port = ntohs(sa.sin_port);
	close(fd);
	return port;
}

/* The object at path ("a/b/c") in a msgpack map, or NULL. */
static const msgpack_object *
path_find(const msgpack_object *o, const char *path)
{
	const char *end = strchr(path, '/');
	size_t n = end ? (size_t)(end - path) : strlen(path);
	uint32_t i;

	if (o->type != MSGPACK_OBJECT_MAP)
		return NULL;
	for (i = 0; i < o->via.map.size; i++) {
		const msgpack_object_kv *kv = &o->via.map.ptr[i];

		if (kv->key.type != MSGPACK_OBJECT_STR ||
		    kv->key.via.str.size != n ||
		    memcmp(kv->key.via.str.ptr, path, n) != 0)
			continue;
		if (end != NULL)
			return path_find(&kv->val, end + 1);
		return &kv->val;
	}
	return NULL;
}

/* The integer at path, or -1. */
static long
path_get(const msgpack_object *o, const char *path)
{
	o = path_find(o, path);
	return o != NULL && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ?
	    (long)o->via.u64 : -1;
}

int
t_stat_str(const char *uri, const char *path, char *buf, size_t n)
{
	char err[MUX_ERRLEN];
	const msgpack_object *o;
	msgpack_unpacked u;
	mux_result r;
	int rc = -1;
	mux_t *d;

	buf[0] = '\0';
	d = mux_connect(uri, err, sizeof(err));
	if (d == NULL)
		return -1;
	if (mux_call(d, "$/stats", NULL, 0, &r, 5000) == MUX_OK) {
		msgpack_unpacked_init(&u);
		if (msgpack_unpack_next(&u, r.data, r.len, NULL) ==
		    MSGPACK_UNPACK_SUCCESS &&
		    (o = path_find(&u.data, path)) != NULL &&
		    o->type == MSGPACK_OBJECT_STR) {
			snprintf(buf, n, "%.*s", (int)o->via.str.size,
			    o->via.str.ptr);
			rc = 0;
		}
		msgpack_unpacked_destroy(&u);
	}
	mux_result_free(&r);
	mux_free(d);
	return rc;
}

static int
obj_has_str(const msgpack_object *o, const char *s)
{
	uint32_t i;

	switch (o->type) {
	case MSGPACK_OBJECT_STR:
		return o->via.str.size == strlen(s) &&
		    memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
	case MSGPACK_OBJECT_ARRAY:
		for (i = 0; i < o->via.array.size; i++)
			if (obj_has_str(&o->via.array.ptr[i], s))
				return 1;
		return 0;
	case MSGPACK_OBJECT_MAP:
		for (i = 0; i < o->via.map.size; i++)
			if (obj_has_str(&o->via.map.ptr[i].key, s) ||
			    obj_has_str(&o->via.map.ptr[i].val, s))
				return 1;
		return 0;
	default:
		return 0;
	}
}

int
t_has_str(const void *data, size_t len, const char *s)
{
	msgpack_unpacked u;
	int rc = -1;

	if (data == NULL)
		return -1;
	msgpack_unpacked_init(&u);
	if (msgpack_unpack_next(&u, data, len, NULL) ==
	    MSGPACK_UNPACK_SUCCESS)
		rc = obj_has_str(&u.data, s);
	msgpack_unpacked_destroy(&u);
	return rc;
}

long
t_stat_path(const char *uri, const char *path)
{
	char err[MUX_ERRLEN];
	msgpack_unpacked u;
	mux_result r;
	long v = -1;
	mux_t *d;

	d = mux_connect(uri, err, sizeof(err));
	if (d == NULL)
		return -1;
	if (mux_call(d, "$/stats", NULL, 0, &r, 5000) == MUX_OK) {
		msgpack_unpacked_init(&u);
		if (msgpack_unpack_next(&u, r.data, r.len, NULL) ==
		    MSGPACK_UNPACK_SUCCESS)
			v = path_get(&u.data, path);
		msgpack_unpacked_destroy(&u);
	}
	mux_result_free(&r);
	mux_free(d);
	return v;
}

long
t_rss_kb(pid_t pid)
{
	char path[64], line[256];
	long kb = -1;
	FILE *fp;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	if ((fp = fopen(path, "r")) == NULL)
		return -1;
	while (fgets(line, sizeof(line), fp) != NULL)
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
			break;
	fclose(fp);
	return kb;
}

long
t_stat(const char *uri, const char *section, const char *key)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/%s", section, key);
	return t_stat_path(uri, path);
}

long
t_requests(const char *uri)
{
	return t_stat(uri, "server", "requests");
}

void
t_run_for(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}
