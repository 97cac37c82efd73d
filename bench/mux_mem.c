/*
 * mux_mem.c - demuxd's memory: RSS with 10,000 idle connections, and the
 * overhead per request with 4096 requests in flight on one connection.
 *
 *   mux_mem BUILD/demuxd bench/server.sh
 *
 * Each figure comes from demuxd's VmRSS (/proc/PID/status) before and after,
 * on a fresh server started by server.sh (its READY line is the signal). The
 * "after" point is certain, not timed: a $/ping sent last on the same
 * connection is answered only once every request before it has been read
 * and dispatched. Prints RESULT-style lines for report.py.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define NCONN	10000
#define NREQ	4096
#define PAYLOAD	64

static pid_t server = -1;

static void
stop_server(void)
{
	if (server > 0) {
		kill(server, SIGTERM);
		waitpid(server, NULL, 0);
		server = -1;
	}
}

static long
rss_kb(pid_t pid)
{
	char path[64], line[256];
	long kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	if ((f = fopen(path, "r")) == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL)
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

/* Start server.sh WORKLOAD URI with WORKERS=w; wait for READY. */
static void
start_server(const char *script, const char *sock, const char *workers)
{
	char uri[128], line[4096];
	int pfd[2];
	FILE *fp;

	snprintf(uri, sizeof(uri), "unix:%s", sock);
	if (pipe(pfd) != 0)
		exit(2);
	server = fork();
	if (server == 0) {
		dup2(pfd[1], 2);
		close(pfd[0]);
		setenv("WORKERS", workers, 1);
		execl("/bin/sh", "sh", script, "MEM", uri, (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	fp = fdopen(pfd[0], "r");
	while (fgets(line, sizeof(line), fp) != NULL)
		if (strstr(line, "READY"))
			return;
	fprintf(stderr, "mux_mem: server did not start\n");
	exit(2);
}

static int
dial(const char *sock)
{
	struct sockaddr_un sa;
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);

	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		perror("connect");
		exit(2);
	}
	return fd;
}

/* [0, id, "$/ping", []] and wait for its answer (9 bytes). */
static void
ping(int fd, uint32_t id)
{
	unsigned char req[16] = { 0x94, 0x00, 0xce }, resp[64];
	size_t got = 0;
	ssize_t n = 0;

	req[3] = (unsigned char)(id >> 24);
	req[4] = (unsigned char)(id >> 16);
	req[5] = (unsigned char)(id >> 8);
	req[6] = (unsigned char)id;
	memcpy(req + 7, "\xa6$/ping\x90", 8);
	if (write(fd, req, 15) != 15) {
		perror("write");
		exit(2);
	}
	/* the answer ends with "pong"; nothing else is pending here */
	while ((got < 5 || memcmp(resp + got - 5, "\xa4pong", 5) != 0) &&
	    got < sizeof(resp) &&
	    (n = read(fd, resp + got, sizeof(resp) - got)) > 0)
		got += (size_t)n;
	if (got < 5 || memcmp(resp + got - 5, "\xa4pong", 5) != 0) {
		fprintf(stderr, "mux_mem: no pong for ping %u (%zu bytes: %s)\n",
		    id, got, n < 0 ? strerror(errno) : "EOF");
		exit(2);
	}
}

int
main(int argc, char **argv)
{
	struct rlimit rl;
	static int fds[NCONN];
	char sock[64];
	long before, after;
	int i, fd;
	size_t off;
	unsigned char *buf;

	if (argc != 3) {
		fprintf(stderr, "usage: mux_mem DEMUXD SERVER_SH\n");
		return 2;
	}
	(void)argv[1];
	atexit(stop_server);
	getrlimit(RLIMIT_NOFILE, &rl);
	rl.rlim_cur = rl.rlim_max;
	setrlimit(RLIMIT_NOFILE, &rl);
	if (rl.rlim_cur < NCONN + 64) {
		fprintf(stderr, "mux_mem: RLIMIT_NOFILE %lu is too low\n",
		    (unsigned long)rl.rlim_cur);
		return 2;
	}
	snprintf(sock, sizeof(sock), "/tmp/demux-mem-%d.sock", (int)getpid());

	/* 1. idle connections */
	start_server(argv[2], sock, "4");
	fd = dial(sock);
	ping(fd, 1);			/* warm: first touches done */
	close(fd);
	before = rss_kb(server);
	for (i = 0; i < NCONN; i++) {
		fds[i] = dial(sock);
		ping(fds[i], (uint32_t)i);
	}
	after = rss_kb(server);
	printf("RESULT mem=idle conns=%d rss_before_kb=%ld rss_after_kb=%ld "
	    "bytes_per_conn=%.0f\n", NCONN, before, after,
	    (after - before) * 1024.0 / NCONN);
	for (i = 0; i < NCONN; i++)
		close(fds[i]);
	stop_server();

	/* 2. 4096 in flight on one connection: one worker, held by a 3 s sleep,
	 * with 4096 echo requests of 64 bytes queued behind it */
	start_server(argv[2], sock, "1");
	fd = dial(sock);
	ping(fd, 1);
	buf = malloc((NREQ + 2) * 128);
	off = 0;
	/* a warm-up burst so that first-touch costs are not counted */
	for (i = 0; i < 64; i++) {
		static const unsigned char hdr[] = { 0x94, 0x00, 0xcd, 0, 0,
		    0xa9, 'e', 'c', 'h', 'o', '.', 'e', 'c', 'h', 'o', 0x91,
		    0xc4, PAYLOAD };

		memcpy(buf + off, hdr, sizeof(hdr));
		buf[off + 3] = (unsigned char)(i >> 8);
		buf[off + 4] = (unsigned char)i;
		off += sizeof(hdr);
		memset(buf + off, 'x', PAYLOAD);
		off += PAYLOAD;
	}
	if (write(fd, buf, off) != (ssize_t)off)
		return 2;
	{
		/* read the 64 answers: each [1, id, nil, [bin64]] */
		size_t want = 64 * (1 + 1 + 1 + 1 + 1 + 2 + PAYLOAD), got = 0;
		ssize_t n;

		while (got < want && (n = read(fd, buf, (NREQ + 2) * 128)) > 0)
			got += (size_t)n;
	}
	before = rss_kb(server);
	off = 0;
	{
		/* [0, 65535, "sleep.sleep", [3000]] */
		static const char sl[] =
		    "\x94\x00\xcd\xff\xff\xabsleep.sleep\x91\xcd\x0b\xb8";

		memcpy(buf, sl, sizeof(sl) - 1);
		off = sizeof(sl) - 1;
	}
	for (i = 0; i < NREQ - 1; i++) {
		static const unsigned char hdr[] = { 0x94, 0x00, 0xcd, 0, 0,
		    0xa9, 'e', 'c', 'h', 'o', '.', 'e', 'c', 'h', 'o', 0x91,
		    0xc4, PAYLOAD };

		memcpy(buf + off, hdr, sizeof(hdr));
		buf[off + 3] = (unsigned char)((i + 1000) >> 8);
		buf[off + 4] = (unsigned char)(i + 1000);
		off += sizeof(hdr);
		memset(buf + off, 'y', PAYLOAD);
		off += PAYLOAD;
	}
	if (write(fd, buf, off) != (ssize_t)off)
		return 2;
	/* the ping is answered by the I/O thread once all 4096 are read and
	 * queued; the sleep holds the only worker, so they are all in flight */
	ping(fd, 0xfffffff0u);
	after = rss_kb(server);
	printf("RESULT mem=inflight requests=%d payload=%d rss_before_kb=%ld "
	    "rss_after_kb=%ld bytes_per_request=%.0f overhead_per_request=%.0f"
	    "\n", NREQ, PAYLOAD, before, after,
	    (after - before) * 1024.0 / NREQ,
	    (after - before) * 1024.0 / NREQ - PAYLOAD);
	close(fd);
	stop_server();
	free(buf);
	unlink(sock);
	return 0;
}
