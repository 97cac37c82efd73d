/*
 * mux_crash.c - what one crash of a process-mode plugin costs its callers.
 *
 *   mux_crash BUILD/demuxd BUILD/t/plugins/crashy.so [N]
 *
 * Starts demuxd with crashy in a child process (respawn_min_ms 1, so the
 * figure is the cost of a respawn, not of the backoff the operator picks)
 * and N times (default 30): calls crashy.segv, whose handler dereferences
 * NULL at once, and times its -32014 answer (from the call: the crash and
 * its detection, plus one round trip); then calls crashy.echo until one
 * is answered and times that from the -32014 (the respawn: spawn, exec,
 * load, init, the first call). Prints the medians and the worst as
 * RESULT-style lines for report.py.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <demux/mux.h>

static pid_t server = -1;

static double
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int
cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

int
main(int argc, char **argv)
{
	char conf[256], sock[128], uri[160], err[MUX_ERRLEN];
	double t0, t1, answer[256], respawn[256];
	int n = argc > 3 ? atoi(argv[3]) : 30, i, tries, bad = 0;
	mux_result r;
	mux_t *m = NULL;
	FILE *f;

	if (argc < 3 || n < 1 || n > 256) {
		fprintf(stderr, "usage: mux_crash DEMUXD CRASHY.so [N]\n");
		return 2;
	}
	snprintf(sock, sizeof(sock), "/tmp/demux-crash-%d.sock", (int)getpid());
	snprintf(conf, sizeof(conf), "/tmp/demux-crash-%d.yaml", (int)getpid());
	snprintf(uri, sizeof(uri), "unix:%s", sock);
	if ((f = fopen(conf, "w")) == NULL)
		return 2;
	fprintf(f, "listen: [ \"%s\" ]\nlog_level: error\nplugins:\n"
	    "  - name: crashy\n    path: %s\n    isolation: process\n"
	    "    workers: 4\n    respawn_min_ms: 1\n    respawn_max_ms: 1\n",
	    uri, argv[2]);
	fclose(f);
	server = fork();
	if (server == 0) {
		execl(argv[1], "demuxd", "-q", "-c", conf, (char *)NULL);
		_exit(127);
	}
	/* connected once it listens (mux_connect has no retry of its own) */
	for (tries = 0; tries < 500 && m == NULL; tries++) {
		m = mux_connect(uri, err, sizeof(err));
		if (m == NULL)
			usleep(10000);
	}
	if (m == NULL) {
		fprintf(stderr, "mux_crash: %s\n", err);
		kill(server, SIGKILL);
		return 1;
	}
	for (i = 0; i < n; i++) {
		t0 = now_us();
		if (mux_call(m, "crashy.segv", NULL, 0, &r, 10000) !=
		    MUX_EREMOTE || r.code != -32014)
			bad++;
		t1 = now_us();
		mux_result_free(&r);
		answer[i] = t1 - t0;
		for (tries = 0; tries < 100000; tries++) {
			int rc = mux_call(m, "crashy.echo", NULL, 0, &r, 10000);

			mux_result_free(&r);
			if (rc == MUX_OK)
				break;
		}
		respawn[i] = now_us() - t1;
	}
	mux_free(m);
	kill(server, SIGTERM);
	waitpid(server, NULL, 0);
	unlink(conf);
	qsort(answer, (size_t)n, sizeof(double), cmp);
	qsort(respawn, (size_t)n, sizeof(double), cmp);
	printf("RESULT crash n=%d bad=%d answer_p50_us=%.0f answer_max_us=%.0f "
	    "respawn_p50_us=%.0f respawn_max_us=%.0f\n", n, bad,
	    answer[n / 2], answer[n - 1], respawn[n / 2], respawn[n - 1]);
	return bad ? 1 : 0;
}
