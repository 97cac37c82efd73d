/*
 * tls_handshake.c - full TLS handshakes per second against any TLS server
 * (demuxd's tls: listener, Redis's tls-port): T threads each connect, run a
 * full handshake (no session resumption; the server certificate verified
 * against -c CA), and close, for -d seconds after -w of warm-up. Prints the
 * peers' RESULT line: txps is handshakes per second, srv_cpu_us_tx the
 * server's CPU per handshake.
 *
 *	tls_handshake -u tls:127.0.0.1:47112 -c ca.crt [-T 2] [-d 5] [-w 1]
 *	    [-P server-pid] [-F server-pid-file] [-L label]
 *
 * -F names a file holding the server's pid, for a server started by a
 * wrapper (bench/redis_tls.sh): it wins over -P, the wrapper's pid.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "bench.h"

static SSL_CTX *ctx;
static struct sockaddr_in addr;
static atomic_int running = 1, measuring;
static atomic_ulong done, failed;

/* One full handshake; 0 if it completed and verified. */
static int
handshake(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0), rc = -1, one = 1;
	SSL *ssl = NULL;

	if (fd < 0)
		return -1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0 &&
	    (ssl = SSL_new(ctx)) != NULL && SSL_set_fd(ssl, fd) == 1 &&
	    SSL_connect(ssl) == 1 && SSL_get_verify_result(ssl) == X509_V_OK)
		rc = 0;
	if (rc == 0)
		SSL_shutdown(ssl);	/* close_notify; no wait for the peer's */
	SSL_free(ssl);
	close(fd);
	return rc;
}

static void *
client(void *arg)
{
	(void)arg;
	while (atomic_load(&running)) {
		int rc = handshake();

		if (!atomic_load(&measuring))
			continue;
		atomic_fetch_add(rc == 0 ? &done : &failed, 1);
	}
	return NULL;
}

int
main(int argc, char **argv)
{
	const char *uri = NULL, *ca = NULL, *label = "tls,handshakes";
	const char *pidfile = NULL;
	int threads = 2, pid = -1, opt, i;
	double dur = 5, warm = 1, t0, t1, c0, c1, s0, s1, secs;
	char host[64];
	unsigned long n;
	double per;
	unsigned port;
	pthread_t th[64];

	FILE *pf;

	while ((opt = getopt(argc, argv, "u:c:T:d:w:P:F:L:")) != -1) {
		switch (opt) {
		case 'u': uri = optarg; break;
		case 'c': ca = optarg; break;
		case 'T': threads = atoi(optarg); break;
		case 'd': dur = atof(optarg); break;
		case 'w': warm = atof(optarg); break;
		case 'P': pid = atoi(optarg); break;
		case 'L': label = optarg; break;
		case 'F': pidfile = optarg; break;
		default: goto usage;
		}
	}
	if (pidfile != NULL) {
		if ((pf = fopen(pidfile, "r")) == NULL ||
		    fscanf(pf, "%d", &pid) != 1) {
			perror(pidfile);
			return 1;
		}
		fclose(pf);
	}
	if (uri == NULL || ca == NULL || threads < 1 || threads > 64 ||
	    sscanf(uri, "tls:%63[^:]:%u", host, &port) != 2)
		goto usage;
	memset(&addr, 0, sizeof(addr));
	addr.sin_family = AF_INET;
	addr.sin_port = htons((uint16_t)port);
	if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
		goto usage;
	if ((ctx = SSL_CTX_new(TLS_client_method())) == NULL ||
	    SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
		ERR_print_errors_fp(stderr);
		return 1;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	/* every handshake full: no session to resume */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	if (handshake() != 0) {
		fprintf(stderr, "tls_handshake: %s: the first handshake "
		    "failed\n", uri);
		ERR_print_errors_fp(stderr);
		return 1;
	}
	for (i = 0; i < threads; i++)
		pthread_create(&th[i], NULL, client, NULL);
	usleep((useconds_t)(warm * 1e6));
	c0 = self_cpu_us();
	s0 = proc_cpu_us(pid);
	t0 = (double)now_ns();
	atomic_store(&measuring, 1);
	usleep((useconds_t)(dur * 1e6));
	atomic_store(&measuring, 0);
	t1 = (double)now_ns();
	c1 = self_cpu_us();
	s1 = proc_cpu_us(pid);
	atomic_store(&running, 0);
	for (i = 0; i < threads; i++)
		pthread_join(th[i], NULL);
	secs = (t1 - t0) / 1e9;
	n = atomic_load(&done);
	per = n ? (double)n : 1.0;
	printf("RESULT peer=%.*s label=%s T=%d size=0 ncalls=0 tx=%lu "
	    "errors=%lu secs=%.3f txps=%.0f MBps=0 p50_us=0 p99_us=0 "
	    "max_us=0 cli_cpu_us_tx=%.2f srv_cpu_us_tx=%.2f wall_ms=%.1f\n",
	    (int)strcspn(label, ","), label, label, threads, n,
	    atomic_load(&failed), secs, (double)n / secs, (c1 - c0) / per,
	    s0 >= 0 && s1 >= 0 ? (s1 - s0) / per : -1.0, secs * 1000);
	SSL_CTX_free(ctx);
	return 0;
usage:
	fprintf(stderr, "usage: tls_handshake -u tls:IPV4:PORT -c CA.crt [-T "
	    "threads] [-d secs] [-w secs] [-P server-pid] [-F pid-file] "
	    "[-L label]\n");
	return 2;
}
