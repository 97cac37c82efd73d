/*
 * 355-health.c - $/health "draining" takes an endpoint out of the rotation
 * and "serving" brings it back, without the $/drain notice: a small fake
 * server (this file) answers $/health as the test says, beside a real
 * demuxd. The handle probes every 50 ms.
 */
#include <msgpack.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <demux/mux.h>

#include "helper.h"
#include "tap.h"

static atomic_int fake_draining, fake_stop;
static atomic_long fake_calls;		/* requests other than $/health */
static int lfd;

/* Answer every request on one connection: $/health with the state the test
 * set, anything else with its params. */
static void
serve(int fd)
{
	msgpack_unpacker u;
	msgpack_unpacked m;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	struct pollfd p = { fd, POLLIN, 0 };
	ssize_t n;

	msgpack_unpacker_init(&u, 1 << 16);
	msgpack_unpacked_init(&m);
	msgpack_sbuffer_init(&sb);
	while (!atomic_load(&fake_stop)) {
		if (poll(&p, 1, 50) <= 0)
			continue;
		msgpack_unpacker_reserve_buffer(&u, 1 << 16);
		n = read(fd, msgpack_unpacker_buffer(&u), 1 << 16);
		if (n <= 0)
			break;
		msgpack_unpacker_buffer_consumed(&u, (size_t)n);
		while (msgpack_unpacker_next(&u, &m) == MSGPACK_UNPACK_SUCCESS) {
			msgpack_object *a = m.data.via.array.ptr;
			int health;

			if (m.data.type != MSGPACK_OBJECT_ARRAY ||
			    m.data.via.array.size != 4 || a[0].via.u64 != 0)
				continue;
			health = a[2].via.str.size == 8 &&
			    memcmp(a[2].via.str.ptr, "$/health", 8) == 0;
			if (!health)
				atomic_fetch_add(&fake_calls, 1);
			msgpack_sbuffer_clear(&sb);
			msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
			msgpack_pack_array(&pk, 4);
			msgpack_pack_uint8(&pk, 1);
			msgpack_pack_object(&pk, a[1]);
			msgpack_pack_nil(&pk);
			if (health) {
				const char *st = atomic_load(&fake_draining) ?
				    "draining" : "serving";

				msgpack_pack_str(&pk, strlen(st));
				msgpack_pack_str_body(&pk, st, strlen(st));
			} else {
				msgpack_pack_object(&pk, a[3]);
			}
			if (write(fd, sb.data, sb.size) != (ssize_t)sb.size)
				break;
		}
	}
	msgpack_sbuffer_destroy(&sb);
	msgpack_unpacked_destroy(&m);
	msgpack_unpacker_destroy(&u);
	close(fd);
}

static void *
fake_main(void *arg)
{
	int fd;

	(void)arg;
	fd = accept(lfd, NULL, NULL);
	if (fd >= 0)
		serve(fd);
	return NULL;
}

/* Wait (polling the handle's own view: a measurement of when the probe
 * landed) until endpoint 0's draining flag is `want`. */
static double
until_draining(mux_t *m, int want)
{
	mux_endpoint_info info;
	double t0 = t_now_ms();

	do {
		mux_endpoint(m, 0, &info);
		if (info.draining == want)
			break;
		t_run_for(2);
	} while (t_now_ms() - t0 < 5000);
	return info.draining == want ? t_now_ms() - t0 : -1;
}

static int
calls(mux_t *m, int n)
{
	mux_result r;
	int i, bad = 0;

	for (i = 0; i < n; i++) {
		bad += mux_call(m, "echo.echo", "\x91\x01", 2, &r, 5000) !=
		    MUX_OK;
		mux_result_free(&r);
	}
	return bad;
}

int
main(void)
{
	char err[MUX_ERRLEN], list[700];
	struct sockaddr_un sa;
	pthread_t th;
	mux_options o;
	t_server s;
	mux_t *m;
	long before;
	double t;

	t_watchdog(60);
	if (t_server_start(&s, "workers: 2\nplugins:\n"
	    "  - name: echo\n    path: @B@/plugins/echo.so\n", NULL) != 0)
		bail_out("cannot start demuxd");
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%.96s/fake.sock", s.dir);
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
	    listen(lfd, 4) != 0)
		bail_out("fake server: %s", sa.sun_path);
	pthread_create(&th, NULL, fake_main, NULL);

	snprintf(list, sizeof(list), "unix:%s,%s", sa.sun_path, s.uri);
	mux_options_init(&o);
	o.health_interval_ms = 50;
	m = mux_open(list, &o, err, sizeof(err));
	if (m == NULL)
		bail_out("mux_open: %s", err);

	check_int(calls(m, 200), ==, 0, "200 calls over both endpoints");
	ok(atomic_load(&fake_calls) > 20, "the fake server took its share "
	    "(%ld)", atomic_load(&fake_calls));

	atomic_store(&fake_draining, 1);
	t = until_draining(m, 1);
	ok(t >= 0, "$/health said \"draining\": endpoint out after %.0f ms", t);
	before = atomic_load(&fake_calls);
	check_int(calls(m, 200), ==, 0, "200 more calls, all answered");
	check_int(atomic_load(&fake_calls) - before, ==, 0,
	    "none went to the draining endpoint");

	atomic_store(&fake_draining, 0);
	t = until_draining(m, 0);
	ok(t >= 0, "\"serving\" again: endpoint back after %.0f ms", t);
	before = atomic_load(&fake_calls);
	check_int(calls(m, 200), ==, 0, "200 more calls");
	ok(atomic_load(&fake_calls) - before > 20, "the load came back (%ld)",
	    atomic_load(&fake_calls) - before);

	mux_free(m);
	atomic_store(&fake_stop, 1);
	pthread_join(th, NULL);
	close(lfd);
	unlink(sa.sun_path);
	check_int(t_server_stop(&s), ==, 0, "demuxd exits 0");
	done_testing();
	return 0;
}
