/*
 * 345-client-bounds.c - libmux against a server that does not read: a call
 * that times out before any byte of its request reached the kernel takes
 * its bytes out of the write buffer (160 timed-out 1 MiB calls used to grow
 * the client by 165 MB), and calls queued behind one that was taken out
 * still go out whole and in order once the server reads.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <msgpack.h>
#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

static long
self_rss_kb(void)
{
	return t_rss_kb(getpid());
}

int
main(void)
{
	char err[MUX_ERRLEN], *params = NULL;
	size_t plen = 0;
	mux_result r;
	long rss0, rss1;
	int sv[2], i, timeouts = 0;
	mux_t *m;

	t_watchdog(60);
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
		bail_out("socketpair");
	m = mux_open_fds(sv[0], sv[0], err, sizeof(err));
	if (m == NULL)
		bail_out("mux_open_fds: %s", err);
	{
		char *big = malloc(1u << 20);

		memset(big, 'q', 1u << 20);
		if (mux_pack(&params, &plen, "[b]", big, (size_t)(1u << 20)) !=
		    MUX_OK)
			bail_out("mux_pack");
		free(big);
	}
	/* fill the socket: the peer (sv[1]) never reads */
	for (i = 0; i < 8; i++) {
		if (mux_call(m, "x.y", params, plen, &r, 20) == MUX_ETIMEDOUT)
			timeouts++;
		mux_result_free(&r);
	}
	rss0 = self_rss_kb();
	for (i = 0; i < 160; i++) {
		if (mux_call(m, "x.y", params, plen, &r, 20) == MUX_ETIMEDOUT)
			timeouts++;
		mux_result_free(&r);
	}
	rss1 = self_rss_kb();
	check_int(timeouts, ==, 168, "every call to a server that does not "
	    "read times out");
	if (getenv("SAN_FLAGS") && *getenv("SAN_FLAGS"))
		diag("RSS %ld -> %ld kB (not checked under a sanitizer)", rss0,
		    rss1);
	else
		ok(rss1 - rss0 < 16 * 1024, "160 more timed-out 1 MiB calls do "
		    "not grow the client: RSS %ld -> %ld kB (their unwritten "
		    "bytes were dropped)", rss0, rss1);

	/* the stream stays well-formed: read what reached the peer; every
	 * message in it is a whole request */
	{
		msgpack_unpacker u;
		msgpack_unpacked msg;
		char buf[1 << 16];
		ssize_t n;
		int whole = 0, bad = 0, rc;

		mux_close(m);	/* the peer then sees EOF after the last one */
		msgpack_unpacker_init(&u, 1u << 20);
		msgpack_unpacked_init(&msg);
		while ((n = read(sv[1], buf, sizeof(buf))) > 0) {
			msgpack_unpacker_reserve_buffer(&u, (size_t)n);
			memcpy(msgpack_unpacker_buffer(&u), buf, (size_t)n);
			msgpack_unpacker_buffer_consumed(&u, (size_t)n);
			while ((rc = msgpack_unpacker_next(&u, &msg)) ==
			    MSGPACK_UNPACK_SUCCESS) {
				msgpack_object o = msg.data;

				if (o.type == MSGPACK_OBJECT_ARRAY &&
				    (o.via.array.size == 4 ||
				    o.via.array.size == 3))
					whole++;
				else
					bad++;
			}
			if (rc == MSGPACK_UNPACK_PARSE_ERROR) {
				bad++;
				break;
			}
		}
		check_int(bad, ==, 0, "what reached the server is well-formed "
		    "(%d whole messages: requests and cancels)", whole);
		msgpack_unpacked_destroy(&msg);
		msgpack_unpacker_destroy(&u);
	}
	mux_free(m);
	close(sv[1]);
	free(params);
	done_testing();
	return exit_status();
}
