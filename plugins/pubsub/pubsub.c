/*
 * pubsub - publish/subscribe over notifications, by example.
 *
 *   pubsub.subscribe [topic]          -> true
 *   pubsub.unsubscribe [topic]        -> true (false: was not subscribed)
 *   pubsub.publish [topic, message]   -> how many subscribers it was
 *                                        queued for
 *
 * Each subscriber gets [2, "pubsub.message", [topic, message]] on the
 * connection it subscribed from. A subscription belongs to its connection
 * (demux_peer) and ends when it closes: at the next publish on its topic,
 * or within a second (a sweeper thread), whichever is first. A subscriber
 * that does not read loses messages once its unsent output passes
 * max_output (demux_peer_notify says DEMUX_EFULL; demuxd counts them in
 * $/stats server.notifications_dropped); it never grows the server.
 *
 * Locks: one rwlock over the topics; publish holds it shared while it
 * queues (demux_peer_notify only appends to an output queue).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <demux/plugin.h>

enum { M_SUBSCRIBE, M_UNSUBSCRIBE, M_PUBLISH };
static const char *const methods[] = { "subscribe", "unsubscribe",
    "publish", NULL };

#define NBUCKETS 1024

typedef struct ps_sub {
	demux_peer	*peer;
	uint64_t	 conn;		/* demux_peer_id */
} ps_sub;

typedef struct ps_topic {
	struct ps_topic	*next;		/* bucket chain */
	ps_sub		*subs;
	size_t		 nsubs, cap;
	size_t		 len;
	char		 name[];
} ps_topic;

typedef struct ps_state {
	pthread_rwlock_t lock;
	ps_topic	*bucket[NBUCKETS];
	pthread_mutex_t	 smu;		/* the sweeper's sleep */
	pthread_cond_t	 scv;
	int		 stop;
	pthread_t	 sweeper;
} ps_state;

static size_t
hash(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603u;	/* FNV-1a */

	while (n-- > 0)
		h = (h ^ (uint8_t)*s++) * 1099511628211u;
	return (size_t)(h % NBUCKETS);
}

/* lock held */
static ps_topic **
find(ps_state *s, const char *name, size_t len)
{
	ps_topic **pp;

	for (pp = &s->bucket[hash(name, len)]; *pp != NULL;
	    pp = &(*pp)->next)
		if ((*pp)->len == len && memcmp((*pp)->name, name, len) == 0)
			break;
	return pp;
}

/* Drop subscription i of t (write lock held); frees t when it was the
 * last (pp: where t hangs). */
static void
drop_sub(ps_topic **pp, size_t i)
{
	ps_topic *t = *pp;

	demux_peer_release(t->subs[i].peer);
	t->subs[i] = t->subs[--t->nsubs];
	if (t->nsubs == 0) {
		*pp = t->next;
		free(t->subs);
		free(t);
	}
}

/* Every subscription whose connection has closed (write lock held). */
static void
sweep_locked(ps_state *s)
{
	ps_topic **pp;
	size_t b, i;

	for (b = 0; b < NBUCKETS; b++)
		for (pp = &s->bucket[b]; *pp != NULL;) {
			ps_topic *t = *pp;

			for (i = t->nsubs; i-- > 0;)
				if (demux_peer_closed(t->subs[i].peer)) {
					drop_sub(pp, i);
					if (*pp != t)
						break;	/* t is gone */
				}
			if (*pp == t)
				pp = &t->next;
		}
}

static void *
sweeper_main(void *arg)
{
	ps_state *s = arg;
	struct timespec ts;

	pthread_mutex_lock(&s->smu);
	while (!s->stop) {
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += 1;
		pthread_cond_timedwait(&s->scv, &s->smu, &ts);
		if (s->stop)
			break;
		pthread_mutex_unlock(&s->smu);
		pthread_rwlock_wrlock(&s->lock);
		sweep_locked(s);
		pthread_rwlock_unlock(&s->lock);
		pthread_mutex_lock(&s->smu);
	}
	pthread_mutex_unlock(&s->smu);
	return NULL;
}

static int
ps_init(const demux_host *h, void **state, char *err, size_t errlen)
{
	ps_state *s;
	pthread_condattr_t ca;

	if (!DEMUX_HOST_HAS(h, call_peer)) {
		snprintf(err, errlen, "needs a demuxd with plugin ABI 1.5 "
		    "(notifications to clients)");
		return -1;
	}
	if (demux_config_keys(h, "", err, errlen) != 0)
		return -1;
	s = calloc(1, sizeof(*s));
	if (s == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	pthread_rwlock_init(&s->lock, NULL);
	pthread_mutex_init(&s->smu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->scv, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&s->sweeper, NULL, sweeper_main, s) != 0) {
		snprintf(err, errlen, "cannot start the sweeper thread");
		pthread_cond_destroy(&s->scv);
		pthread_mutex_destroy(&s->smu);
		pthread_rwlock_destroy(&s->lock);
		free(s);
		return -1;
	}
	*state = s;
	return 0;
}

static void
ps_fini(void *state)
{
	ps_state *s = state;
	size_t b;

	pthread_mutex_lock(&s->smu);
	s->stop = 1;
	pthread_cond_signal(&s->scv);
	pthread_mutex_unlock(&s->smu);
	pthread_join(s->sweeper, NULL);
	for (b = 0; b < NBUCKETS; b++)
		while (s->bucket[b] != NULL)
			drop_sub(&s->bucket[b], s->bucket[b]->nsubs - 1);
	pthread_cond_destroy(&s->scv);
	pthread_mutex_destroy(&s->smu);
	pthread_rwlock_destroy(&s->lock);
	free(s);
}

static void
subscribe(ps_state *s, demux_call *call, const char *name, size_t len)
{
	demux_peer *p = demux_call_peer(call);
	ps_topic **pp, *t;
	uint64_t id;
	size_t i;

	if (p == NULL) {
		demux_error(call, DEMUX_E_INTERNAL, "pubsub.subscribe: this "
		    "connection cannot be notified (out of memory, or "
		    "isolation: process)");
		return;
	}
	id = demux_peer_id(p);
	pthread_rwlock_wrlock(&s->lock);
	pp = find(s, name, len);
	if ((t = *pp) == NULL) {
		t = calloc(1, sizeof(*t) + len + 1);
		if (t == NULL)
			goto nomem;
		memcpy(t->name, name, len);
		t->len = len;
		*pp = t;
	}
	for (i = 0; i < t->nsubs; i++)
		if (t->subs[i].conn == id) {	/* subscribed already */
			pthread_rwlock_unlock(&s->lock);
			demux_peer_release(p);
			demux_reply_bool(call, 1);
			return;
		}
	if (t->nsubs == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 4;
		ps_sub *n = realloc(t->subs, cap * sizeof(*n));

		if (n == NULL) {
			if (t->nsubs == 0) {
				*pp = t->next;
				free(t);
			}
			goto nomem;
		}
		t->subs = n;
		t->cap = cap;
	}
	t->subs[t->nsubs].peer = p;
	t->subs[t->nsubs].conn = id;
	t->nsubs++;
	pthread_rwlock_unlock(&s->lock);
	demux_reply_bool(call, 1);
	return;
nomem:
	pthread_rwlock_unlock(&s->lock);
	demux_peer_release(p);
	demux_error(call, DEMUX_E_INTERNAL, "out of memory");
}

static void
unsubscribe(ps_state *s, demux_call *call, const char *name, size_t len)
{
	demux_peer *p = demux_call_peer(call);
	ps_topic **pp;
	uint64_t id;
	size_t i;
	int found = 0;

	if (p == NULL) {
		demux_reply_bool(call, 0);
		return;
	}
	id = demux_peer_id(p);
	demux_peer_release(p);
	pthread_rwlock_wrlock(&s->lock);
	pp = find(s, name, len);
	if (*pp != NULL)
		for (i = 0; i < (*pp)->nsubs; i++)
			if ((*pp)->subs[i].conn == id) {
				drop_sub(pp, i);
				found = 1;
				break;
			}
	pthread_rwlock_unlock(&s->lock);
	demux_reply_bool(call, found);
}

static void
publish(ps_state *s, demux_call *call, const char *name, size_t len,
    const msgpack_object *message)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	ps_topic *t;
	size_t i, queued = 0, gone = 0;

	/* [topic, message], packed once for every subscriber */
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_array(&pk, 2);
	msgpack_pack_str_with_body(&pk, name, len);
	msgpack_pack_object(&pk, *message);

	pthread_rwlock_rdlock(&s->lock);
	t = *find(s, name, len);
	for (i = 0; t != NULL && i < t->nsubs; i++) {
		int rc = demux_peer_notify(t->subs[i].peer, "pubsub.message",
		    sb.data, sb.size);

		if (rc == 0)
			queued++;
		else if (rc == DEMUX_EGONE)
			gone++;
		/* DEMUX_EFULL: a subscriber that does not read loses it */
	}
	pthread_rwlock_unlock(&s->lock);
	msgpack_sbuffer_destroy(&sb);
	if (gone > 0) {
		pthread_rwlock_wrlock(&s->lock);
		sweep_locked(s);
		pthread_rwlock_unlock(&s->lock);
	}
	demux_reply_uint(call, queued);
}

static void
ps_process(void *state, const demux_request *req, demux_call *call)
{
	ps_state *s = state;
	const msgpack_object *message;
	const char *topic;
	size_t len;

	if (req->method_index == M_PUBLISH) {
		if (demux_params(call, "topic:s message:o", &topic, &len,
		    &message) != 0)
			return;
		publish(s, call, topic, len, message);
		return;
	}
	if (demux_params(call, "topic:s", &topic, &len) != 0)
		return;
	if (req->method_index == M_SUBSCRIBE)
		subscribe(s, call, topic, len);
	else
		unsubscribe(s, call, topic, len);
}

static const demux_plugin pubsub_plugin = {
	DEMUX_PLUGIN_HEADER,
	.name = "pubsub",
	.version = "1.0.0",
	.methods = methods,
	.init = ps_init,
	.fini = ps_fini,
	.process_transaction = ps_process,
};

DEMUX_EXPORT const demux_plugin *
DEMUX_PLUGIN_ENTRY(void)
{
	return &pubsub_plugin;
}
