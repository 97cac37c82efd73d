/*
 * fanout.c - W5: one publisher, S subscriber connections, small messages;
 * delivered messages per second, for demuxd's pubsub plugin or Redis
 * PUBLISH/SUBSCRIBE, driven the same way over raw sockets so that only the
 * servers differ.
 *
 *   fanout -m demux|redis -u unix:PATH|tcp:HOST:PORT [-S 100] [-s 64]
 *          [-k 32] [-d SECONDS] [-w WARM]
 *
 * The publisher keeps k publishes in flight (pipelined, as redis-benchmark
 * -P does); one reader thread takes every subscriber's bytes with epoll.
 * Each message is the same size on the wire (one topic, one payload), so
 * delivered = bytes read / that size. Prints one line:
 *   RESULT peer=... subscribers=S size=s msgs_per_s=N publishes_per_s=P
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>

static int redis;
static const char *uri;
static int nsub = 100, size = 64, inflight = 32;
static double dur = 5, warm = 1;
static _Atomic uint64_t rbytes;
static _Atomic int stop;

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int
dial(void)
{
	int fd;

	if (strncmp(uri, "unix:", 5) == 0) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };

		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		strncpy(sa.sun_path, uri + 5, sizeof(sa.sun_path) - 1);
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
			return -1;
		return fd;
	} else {
		char host[256], *port;
		struct addrinfo *ai;

		snprintf(host, sizeof(host), "%s", uri + 4);
		port = strrchr(host, ':');
		if (port == NULL)
			return -1;
		*port++ = '\0';
		if (getaddrinfo(host, port, NULL, &ai) != 0)
			return -1;
		fd = socket(ai->ai_family, SOCK_STREAM, 0);
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0)
			fd = -1;
		freeaddrinfo(ai);
		return fd;
	}
}

static void
put(int fd, const void *p, size_t n)
{
	const char *c = p;

	while (n > 0) {
		ssize_t w = write(fd, c, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			perror("write");
			exit(1);
		}
		c += w;
		n -= (size_t)w;
	}
}

/* ---- the two protocols ---- */

static msgpack_sbuffer req;

static void
demux_req(uint32_t id, const char *method, const char *topic,
    const char *payload)
{
	msgpack_packer pk;

	msgpack_sbuffer_clear(&req);
	msgpack_packer_init(&pk, &req, msgpack_sbuffer_write);
	msgpack_pack_array(&pk, 4);
	msgpack_pack_int(&pk, 0);
	msgpack_pack_uint32(&pk, id);
	msgpack_pack_str_with_body(&pk, method, strlen(method));
	msgpack_pack_array(&pk, payload ? 2 : 1);
	msgpack_pack_str_with_body(&pk, topic, strlen(topic));
	if (payload)
		msgpack_pack_str_with_body(&pk, payload, strlen(payload));
}

/* one message as a subscriber receives it */
static size_t
msg_size(const char *payload)
{
	if (redis)
		return (size_t)snprintf(NULL, 0, "*3\r\n$7\r\nmessage\r\n$4\r\n"
		    "news\r\n$%zu\r\n%s\r\n", strlen(payload), payload);
	{
		msgpack_sbuffer sb;
		msgpack_packer pk;
		size_t n;

		msgpack_sbuffer_init(&sb);
		msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
		msgpack_pack_array(&pk, 3);
		msgpack_pack_int(&pk, 2);
		msgpack_pack_str_with_body(&pk, "pubsub.message", 14);
		msgpack_pack_array(&pk, 2);
		msgpack_pack_str_with_body(&pk, "news", 4);
		msgpack_pack_str_with_body(&pk, payload, strlen(payload));
		n = sb.size;
		msgpack_sbuffer_destroy(&sb);
		return n;
	}
}

/* Read one reply on the publisher's socket into *count (the subscribers
 * it reached); counts replies in `got`. */
typedef struct rd {
	int fd;
	char buf[1 << 16];
	size_t len, off;
	msgpack_unpacker up;
} rd;

static int
replies(rd *r, int want, int64_t *last)
{
	int got = 0;

	while (got < want) {
		if (redis) {
			char *nl;

			while (r->off < r->len && got < want &&
			    (nl = memchr(r->buf + r->off, '\n',
			    r->len - r->off)) != NULL) {
				*last = atoll(r->buf + r->off + 1);
				r->off = (size_t)(nl + 1 - r->buf);
				got++;
			}
			if (got == want)
				break;
			memmove(r->buf, r->buf + r->off, r->len - r->off);
			r->len -= r->off;
			r->off = 0;
			ssize_t n = read(r->fd, r->buf + r->len,
			    sizeof(r->buf) - r->len);
			if (n <= 0)
				return -1;
			r->len += (size_t)n;
		} else {
			msgpack_unpacked u;

			msgpack_unpacked_init(&u);
			while (got < want && msgpack_unpacker_next(&r->up, &u) ==
			    MSGPACK_UNPACK_SUCCESS) {
				msgpack_object *o = u.data.via.array.ptr;

				if (u.data.type == MSGPACK_OBJECT_ARRAY &&
				    u.data.via.array.size == 4)
					*last = o[3].type ==
					    MSGPACK_OBJECT_POSITIVE_INTEGER ?
					    (int64_t)o[3].via.u64 : -1;
				got++;
			}
			msgpack_unpacked_destroy(&u);
			if (got == want)
				break;
			msgpack_unpacker_reserve_buffer(&r->up, 1 << 16);
			ssize_t n = read(r->fd, msgpack_unpacker_buffer(&r->up),
			    msgpack_unpacker_buffer_capacity(&r->up));
			if (n <= 0)
				return -1;
			msgpack_unpacker_buffer_consumed(&r->up, (size_t)n);
		}
	}
	return 0;
}

static void *
reader_main(void *arg)
{
	int ep = *(int *)arg;
	struct epoll_event ev[128];
	char buf[1 << 16];
	int i, n;

	while (!atomic_load(&stop)) {
		n = epoll_wait(ep, ev, 128, 100);
		for (i = 0; i < n; i++) {
			ssize_t r;

			while ((r = recv(ev[i].data.fd, buf, sizeof(buf),
			    MSG_DONTWAIT)) > 0)
				atomic_fetch_add_explicit(&rbytes, (uint64_t)r,
				    memory_order_relaxed);
		}
	}
	return NULL;
}

int
main(int argc, char **argv)
{
	char *payload, sub[256];

	int ch, i, *fds, ep, pub;
	size_t per;
	uint32_t id = 1;
	double t0, tw, t1;
	uint64_t b0, pubs = 0;
	int64_t last = -1;
	pthread_t th;
	rd *r;

	while ((ch = getopt(argc, argv, "m:u:S:s:k:d:w:")) != -1)
		switch (ch) {
		case 'm': redis = strcmp(optarg, "redis") == 0; break;
		case 'u': uri = optarg; break;
		case 'S': nsub = atoi(optarg); break;
		case 's': size = atoi(optarg); break;
		case 'k': inflight = atoi(optarg); break;
		case 'd': dur = atof(optarg); break;
		case 'w': warm = atof(optarg); break;
		default: return 2;
		}
	if (uri == NULL || nsub < 1 || size < 1 || inflight < 1)
		return 2;
	payload = malloc((size_t)size + 1);
	memset(payload, 'x', (size_t)size);
	payload[size] = '\0';
	per = msg_size(payload);
	msgpack_sbuffer_init(&req);

	fds = calloc((size_t)nsub, sizeof(*fds));
	ep = epoll_create1(0);
	for (i = 0; i < nsub; i++) {
		if ((fds[i] = dial()) < 0) {
			fprintf(stderr, "fanout: cannot connect to %s\n", uri);
			return 1;
		}
		if (redis) {
			snprintf(sub, sizeof(sub), "*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\n"
			    "news\r\n");
			put(fds[i], sub, strlen(sub));
		} else {
			demux_req(id++, "pubsub.subscribe", "news", NULL);
			put(fds[i], req.data, req.size);
		}
	}
	r = calloc(1, sizeof(*r));
	r->fd = pub = dial();
	msgpack_unpacker_init(&r->up, 1 << 16);
	/* until a publish reaches every subscriber (their subscribe may
	 * still be on its way) */
	for (last = -1; last != nsub;) {
		if (redis) {
			char *one = NULL;
			int n = asprintf(&one, "*3\r\n$7\r\nPUBLISH\r\n$4\r\n"
			    "news\r\n$%d\r\n%s\r\n", size, payload);

			put(pub, one, (size_t)n);
			free(one);
		} else {
			demux_req(id++, "pubsub.publish", "news", payload);
			put(pub, req.data, req.size);
		}
		if (replies(r, 1, &last) != 0)
			return 1;
		if (last != nsub)
			usleep(1000);
	}
	/* everything the subscribers got so far (confirmations, the probe) is
	 * not counted: from here on, only messages */
	for (i = 0; i < nsub; i++) {
		struct epoll_event e = { .events = EPOLLIN, .data.fd = fds[i] };

		epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &e);
	}
	pthread_create(&th, NULL, reader_main, &ep);

	/* build one batch of `inflight` publishes */
	{
		msgpack_sbuffer batch;
		char *rb = NULL;
		size_t rbl = 0;

		msgpack_sbuffer_init(&batch);
		if (redis) {
			rbl = (size_t)asprintf(&rb, "*3\r\n$7\r\nPUBLISH\r\n$4\r\n"
			    "news\r\n$%d\r\n%s\r\n", size, payload);
		}
		t0 = now_s();
		tw = t0 + warm;
		t1 = tw + dur;
		b0 = 0;
		int counting = 0;
		for (;;) {
			double t = now_s();

			if (!counting && t >= tw) {
				counting = 1;
				b0 = atomic_load(&rbytes);
				pubs = 0;
				tw = t;
			}
			if (t >= t1)
				break;
			msgpack_sbuffer_clear(&batch);
			for (i = 0; i < inflight; i++) {
				if (redis) {
					msgpack_sbuffer_write(&batch, rb, rbl);
				} else {
					demux_req(id++, "pubsub.publish", "news",
					    payload);
					msgpack_sbuffer_write(&batch, req.data,
					    req.size);
				}
			}
			put(pub, batch.data, batch.size);
			if (replies(r, inflight, &last) != 0) {
				fprintf(stderr, "fanout: publisher lost\n");
				return 1;
			}
			pubs += (uint64_t)inflight;
		}
		t1 = now_s();
		free(rb);
		msgpack_sbuffer_destroy(&batch);
	}
	{
		uint64_t got = (atomic_load(&rbytes) - b0) / per;

		atomic_store(&stop, 1);
		pthread_join(th, NULL);
		printf("RESULT peer=%s subscribers=%d size=%d msgs_per_s=%.0f "
		    "publishes_per_s=%.0f\n", redis ? "redis" : "demux", nsub,
		    size, got / (t1 - tw), pubs / (t1 - tw));
	}
	return 0;
}
