/*
 * kv - an in-memory key/value table shared by every worker.
 *
 *   kv.set [key, value]  -> true          (error 1 when the table is full)
 *   kv.get [key]         -> value, or nil when the key is absent
 *   kv.del [key]         -> true if the key existed, else false
 *
 * Keys are strings; values are any msgpack object, stored as packed bytes.
 * The YAML `config: { capacity: N }` bounds the number of keys (default
 * 100000). It shows what a stateful plugin needs: state made in init and
 * freed in fini, and a lock, because process_transaction runs on many
 * workers at once (a rwlock: gets do not exclude each other).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <demux/plugin.h>

#define KV_E_FULL	1
#define KV_DEFAULT_CAP	100000u

typedef struct kv_entry {
	struct kv_entry	*next;
	uint64_t	 hash;
	size_t		 klen, vlen;
	char		*val;		/* packed msgpack */
	char		 key[];
} kv_entry;

typedef struct kv_table {
	pthread_rwlock_t lock;
	kv_entry	**buckets;
	size_t		 nbuckets;	/* power of two */
	size_t		 count;		/* protected by lock */
	size_t		 capacity;
	const demux_host *host;
} kv_table;

enum { KV_SET, KV_GET, KV_DEL };
static const char *const methods[] = { "set", "get", "del", NULL };

static uint64_t
kv_hash(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ull;

	while (n--)
		h = (h ^ (unsigned char)*s++) * 1099511628211ull;
	return h;
}

/* `capacity` from the plugin's config: map (the only key it knows). */
static int
kv_config(const demux_host *host, size_t *cap, char *err, size_t errlen)
{
	uint64_t v;

	if (demux_config_keys(host, "capacity", err, errlen) != 0 ||
	    demux_config_uint(host, "capacity", KV_DEFAULT_CAP, &v, err,
	    errlen) != 0)
		return -1;
	if (v == 0 || v > (1u << 30)) {
		snprintf(err, errlen, "capacity must be an integer from 1 to "
		    "%u", 1u << 30);
		return -1;
	}
	*cap = (size_t)v;
	return 0;
}

static int
kv_init(const demux_host *host, void **state, char *err, size_t errlen)
{
	kv_table *t;
	size_t cap;

	if (kv_config(host, &cap, err, errlen) != 0)
		return -1;
	t = calloc(1, sizeof(*t));
	if (t == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	for (t->nbuckets = 64; t->nbuckets < cap && t->nbuckets < (1u << 20);
	    t->nbuckets *= 2)
		;
	t->buckets = calloc(t->nbuckets, sizeof(*t->buckets));
	if (t->buckets == NULL) {
		free(t);
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	pthread_rwlock_init(&t->lock, NULL);
	t->capacity = cap;
	t->host = host;
	host->log(host, DEMUX_LOG_DEBUG, "table ready, capacity %zu", cap);
	*state = t;
	return 0;
}

static void
kv_fini(void *state)
{
	kv_table *t = state;
	kv_entry *e, *next;
	size_t i;

	for (i = 0; i < t->nbuckets; i++)
		for (e = t->buckets[i]; e != NULL; e = next) {
			next = e->next;
			free(e->val);
			free(e);
		}
	t->host->log(t->host, DEMUX_LOG_DEBUG, "fini: %zu keys freed", t->count);
	pthread_rwlock_destroy(&t->lock);
	free(t->buckets);
	free(t);
}

/* Find the link that points to key's entry (or to NULL). Lock held. */
static kv_entry **
kv_find(kv_table *t, const char *k, size_t kl, uint64_t h)
{
	kv_entry **pp;

	for (pp = &t->buckets[h & (t->nbuckets - 1)]; *pp != NULL;
	    pp = &(*pp)->next)
		if ((*pp)->hash == h && (*pp)->klen == kl &&
		    memcmp((*pp)->key, k, kl) == 0)
			break;
	return pp;
}

static void
kv_set(kv_table *t, const char *k, size_t kl, const msgpack_object *v,
    demux_call *call)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	kv_entry **pp, *e;
	uint64_t h = kv_hash(k, kl);

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	if (msgpack_pack_object(&pk, *v) != 0) {
		msgpack_sbuffer_destroy(&sb);
		demux_error(call, DEMUX_E_INTERNAL, "kv.set: out of memory");
		return;
	}
	pthread_rwlock_wrlock(&t->lock);
	pp = kv_find(t, k, kl, h);
	if (*pp != NULL) {
		free((*pp)->val);
		(*pp)->vlen = sb.size;
		(*pp)->val = msgpack_sbuffer_release(&sb);
		pthread_rwlock_unlock(&t->lock);
		demux_reply_bool(call, 1);
		return;
	}
	if (t->count >= t->capacity) {
		pthread_rwlock_unlock(&t->lock);
		msgpack_sbuffer_destroy(&sb);
		demux_error(call, KV_E_FULL, "kv.set: table full (capacity %zu)",
		    t->capacity);
		return;
	}
	e = malloc(sizeof(*e) + kl);
	if (e == NULL) {
		pthread_rwlock_unlock(&t->lock);
		msgpack_sbuffer_destroy(&sb);
		demux_error(call, DEMUX_E_INTERNAL, "kv.set: out of memory");
		return;
	}
	e->hash = h;
	e->klen = kl;
	memcpy(e->key, k, kl);
	e->vlen = sb.size;
	e->val = msgpack_sbuffer_release(&sb);
	e->next = NULL;
	*pp = e;
	t->count++;
	pthread_rwlock_unlock(&t->lock);
	demux_reply_bool(call, 1);
}

static void
kv_process(void *state, const demux_request *req, demux_call *call)
{
	kv_table *t = state;
	const msgpack_object *v;
	msgpack_packer *pk;
	kv_entry **pp, *e;
	const char *k;
	size_t kl;

	/* -32602 naming the parameter when they do not match */
	if (req->method_index == KV_SET ?
	    demux_params(call, "key:s value:o", &k, &kl, &v) != 0 :
	    demux_params(call, "key:s", &k, &kl) != 0)
		return;
	switch (req->method_index) {
	case KV_SET:
		kv_set(t, k, kl, v, call);
		return;
	case KV_GET:
		pk = demux_result(call);
		pthread_rwlock_rdlock(&t->lock);
		e = *kv_find(t, k, kl, kv_hash(k, kl));
		if (e != NULL)
			pk->callback(pk->data, e->val, e->vlen);
		else
			msgpack_pack_nil(pk);
		pthread_rwlock_unlock(&t->lock);
		return;
	case KV_DEL:
		pthread_rwlock_wrlock(&t->lock);
		pp = kv_find(t, k, kl, kv_hash(k, kl));
		e = *pp;
		if (e != NULL) {
			*pp = e->next;
			t->count--;
		}
		pthread_rwlock_unlock(&t->lock);
		if (e != NULL) {
			free(e->val);
			free(e);
		}
		demux_reply_bool(call, e != NULL);
		return;
	}
}

static const demux_plugin kv_plugin = {
	DEMUX_PLUGIN_HEADER,
	.name = "kv",
	.version = "1.0.0",
	.methods = methods,
	.init = kv_init,
	.fini = kv_fini,
	.process_transaction = kv_process,
};

DEMUX_EXPORT const demux_plugin *
DEMUX_PLUGIN_ENTRY(void)
{
	return &kv_plugin;
}
