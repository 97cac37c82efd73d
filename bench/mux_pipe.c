/*
 * mux_pipe.c - W4, server capacity: ONE client thread keeps K MessagePack-RPC
 * requests (echo.echo [bin]) in flight on one connection, writing them in
 * batches of B with one write each and reading answers in big chunks, like
 * the peers' raw pipelined client. Prints the peers' RESULT line; latency is
 * the time a request spends inside the window.
 *
 *   -u URI -k K [1024] -b B [64] -s bytes [64] -d sec [5] -w sec [1]
 *   -P pid -L label
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>

#include "bench.h"





int
main(int argc, char **argv)
{
	const char *uri = NULL, *label = "-";
	int k = 1024, b = 64, pid = 0, c, fd;
	size_t size = 64;
	double dur = 5, warm = 1;
	struct sockaddr_un sa;
	msgpack_sbuffer req;
	msgpack_packer pk;
	msgpack_unpacker up;
	msgpack_unpacked res;
	uint64_t *sent_at, *lat = NULL, t0, start = 0, end, tx = 0, errs = 0;
	size_t nlat = 0, caplat = 0, i;
	char *payload;
	int inflight = 0, measuring = 0;
	uint32_t next = 0;
	double c0 = 0, s0 = 0, c1, s1, secs;

	while ((c = getopt(argc, argv, "u:k:b:s:d:w:P:L:T:")) != -1) {
		switch (c) {
		case 'u': uri = optarg; break;
		case 'k': k = atoi(optarg); break;
		case 'b': b = atoi(optarg); break;
		case 's': size = (size_t)atol(optarg); break;
		case 'd': dur = atof(optarg); break;
		case 'w': warm = atof(optarg); break;
		case 'P': pid = atoi(optarg); break;
		case 'L': label = optarg; break;
		case 'T': break;
		default:
			fprintf(stderr, "usage: mux_pipe -u unix:PATH [-k K] "
			    "[-b B] [-s bytes] [-d s] [-w s] [-P pid] [-L l]\n");
			return 2;
		}
	}
	if (uri == NULL || strncmp(uri, "unix:", 5) != 0 || k < 1 || b < 1) {
		fprintf(stderr, "mux_pipe: -u unix:PATH is required\n");
		return 2;
	}
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", uri + 5);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		perror(uri);
		return 2;
	}
	payload = malloc(size ? size : 1);
	memset(payload, 'p', size);
	sent_at = calloc((size_t)k, sizeof(*sent_at));
	msgpack_sbuffer_init(&req);
	msgpack_packer_init(&pk, &req, msgpack_sbuffer_write);
	msgpack_unpacker_init(&up, 1 << 20);
	msgpack_unpacked_init(&res);

	t0 = now_ns();
	for (;;) {
		uint64_t now = now_ns();

		if (!measuring && now - t0 >= (uint64_t)(warm * 1e9)) {
			measuring = 1;
			start = now;
			c0 = self_cpu_us();
			s0 = proc_cpu_us(pid);
		}
		if (measuring && now - start >= (uint64_t)(dur * 1e9))
			break;
		/* fill the window in batches of b, one write per batch */
		while (inflight + b <= k) {
			req.size = 0;
			for (c = 0; c < b; c++) {
				sent_at[next % (uint32_t)k] = now;
				msgpack_pack_array(&pk, 4);
				msgpack_pack_uint8(&pk, 0);
				msgpack_pack_uint32(&pk, next++);
				msgpack_pack_str_with_body(&pk, "echo.echo", 9);
				msgpack_pack_array(&pk, 1);
				msgpack_pack_bin_with_body(&pk, payload, size);
			}
			if (write(fd, req.data, req.size) != (ssize_t)req.size) {
				perror("write");
				return 2;
			}
			inflight += b;
		}
		/* read what has arrived */
		msgpack_unpacker_reserve_buffer(&up, 1 << 20);
		{
			ssize_t n = read(fd, msgpack_unpacker_buffer(&up),
			    msgpack_unpacker_buffer_capacity(&up));

			if (n <= 0) {
				fprintf(stderr, "mux_pipe: read: %s\n",
				    n ? strerror(errno) : "EOF");
				return 2;
			}
			msgpack_unpacker_buffer_consumed(&up, (size_t)n);
		}
		now = now_ns();
		while (msgpack_unpacker_next(&up, &res) ==
		    MSGPACK_UNPACK_SUCCESS) {
			msgpack_object *o = &res.data;
			uint32_t id;

			inflight--;
			if (o->type != MSGPACK_OBJECT_ARRAY ||
			    o->via.array.size != 4 ||
			    o->via.array.ptr[2].type != MSGPACK_OBJECT_NIL) {
				errs++;
				continue;
			}
			id = (uint32_t)o->via.array.ptr[1].via.u64;
			if (measuring) {
				tx++;
				if (nlat == caplat) {
					caplat = caplat ? caplat * 2 : 1 << 16;
					lat = realloc(lat, caplat * sizeof(*lat));
				}
				lat[nlat++] = now - sent_at[id % (uint32_t)k];
			}
		}
	}
	end = now_ns();
	c1 = self_cpu_us();
	s1 = proc_cpu_us(pid);
	secs = (double)(end - start) / 1e9;
	qsort(lat, nlat, sizeof(*lat), cmp_u64);
	i = nlat;
	printf("RESULT peer=demux label=%s T=%d size=%zu ncalls=0 tx=%llu "
	    "errors=%llu secs=%.3f txps=%.0f MBps=%.1f p50_us=%.1f "
	    "p99_us=%.1f max_us=%.1f cli_cpu_us_tx=%.2f srv_cpu_us_tx=%.2f "
	    "wall_ms=%.1f\n", label, k, size, (unsigned long long)tx,
	    (unsigned long long)errs, secs, tx / secs, tx / secs * size / 1e6,
	    i ? lat[(i * 50 + 99) / 100 - 1] / 1e3 : 0,
	    i ? lat[(i * 99 + 99) / 100 - 1] / 1e3 : 0,
	    i ? lat[i - 1] / 1e3 : 0, tx ? (c1 - c0) / tx : 0,
	    tx && s0 >= 0 ? (s1 - s0) / tx : -1, secs * 1e3);
	return errs ? 1 : 0;
}
