/*
 * timer - deferred replies and notifications, by example.
 *
 *   timer.after [ms, value]  answers value after ms milliseconds
 *   timer.progress [n, ms]   sends [2, "timer.progress", [msgid, i, n]] for
 *                            i = 1..n, one every ms, then answers n
 *
 * Neither holds a worker while it waits: process_transaction defers the
 * call (demux_defer) and hands it to the plugin's one timer thread, which
 * keeps every open call in a min-heap by due time and finishes each when it
 * is due (demux_deferred_finish), from its own thread. So 10,000 open calls
 * cost 10,000 heap entries, not 10,000 workers. A call cancelled meanwhile
 * (client's $/cancelRequest, its deadline, a closed connection, the drain
 * timeout) is finished within SCAN_MS with nothing packed: the host answers
 * -32800 for a cancel, and drops the answer otherwise.
 *
 * Config: max_open (default 100000): calls open at once; past it a call is
 * answered 1 "too many open timers" at once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <demux/plugin.h>

#define TIMER_E_FULL	1
#define SCAN_MS		100	/* how often open calls are checked for
				 * cancellation */

enum { M_AFTER, M_PROGRESS };
static const char *const methods[] = { "after", "progress", NULL };

typedef struct tm_entry {
	uint64_t	 due;		/* CLOCK_MONOTONIC ns */
	demux_deferred	*d;
	demux_peer	*peer;		/* progress only */
	uint32_t	 msgid;
	int64_t		 i, n, ms;	/* progress: the next i, of n */
	size_t		 vlen;		/* after: the value's msgpack */
	char		 value[];
} tm_entry;

typedef struct tm_state {
	const demux_host *host;
	pthread_mutex_t	 mu;
	pthread_cond_t	 cv;		/* CLOCK_MONOTONIC */
	pthread_t	 th;
	int		 stop;
	tm_entry	**heap;		/* min-heap by due */
	size_t		 n, cap, max_open;
} tm_state;

static uint64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- the heap (mu held) ---- */

static void
heap_push(tm_state *s, tm_entry *e)
{
	size_t i = s->n++;

	while (i > 0 && s->heap[(i - 1) / 2]->due > e->due) {
		s->heap[i] = s->heap[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	s->heap[i] = e;
}

static tm_entry *
heap_pop(tm_state *s)
{
	tm_entry *top = s->heap[0], *last = s->heap[--s->n];
	size_t i = 0, c;

	while ((c = 2 * i + 1) < s->n) {
		if (c + 1 < s->n && s->heap[c + 1]->due < s->heap[c]->due)
			c++;
		if (s->heap[c]->due >= last->due)
			break;
		s->heap[i] = s->heap[c];
		i = c;
	}
	if (s->n > 0)
		s->heap[i] = last;
	return top;
}

static void
sift_down(tm_state *s, size_t i)
{
	tm_entry *x = s->heap[i];
	size_t c;

	while ((c = 2 * i + 1) < s->n) {
		if (c + 1 < s->n && s->heap[c + 1]->due < s->heap[c]->due)
			c++;
		if (s->heap[c]->due >= x->due)
			break;
		s->heap[i] = s->heap[c];
		i = c;
	}
	s->heap[i] = x;
}

/* Take the cancelled entries out (into a new array *out), and make the
 * rest a heap again: O(n). */
static size_t
take_cancelled(tm_state *s, tm_entry ***out)
{
	size_t i, k = 0, nc = 0;
	tm_entry **c = NULL;

	for (i = 0; i < s->n; i++)
		if (demux_deferred_cancelled(s->heap[i]->d))
			nc++;
	if (nc == 0 || (c = malloc(nc * sizeof(*c))) == NULL)
		return 0;
	nc = 0;
	for (i = 0; i < s->n; i++) {
		if (demux_deferred_cancelled(s->heap[i]->d))
			c[nc++] = s->heap[i];
		else
			s->heap[k++] = s->heap[i];
	}
	s->n = k;
	for (i = s->n / 2; i-- > 0;)
		sift_down(s, i);
	*out = c;
	return nc;
}

/* Room for one more entry: 0, or -1 without memory. */
static int
grow(tm_state *s)
{
	tm_entry **h;
	size_t cap;

	if (s->n < s->cap)
		return 0;
	cap = s->cap ? s->cap * 2 : 64;
	if ((h = realloc(s->heap, cap * sizeof(*h))) == NULL)
		return -1;
	s->heap = h;
	s->cap = cap;
	return 0;
}

/* ---- firing (no lock held) ---- */

static void
finish(tm_entry *e)
{
	demux_deferred_finish(e->d);
	demux_peer_release(e->peer);
	free(e);
}

/* Returns 1 if e is to be put back with a later due time. */
static int
fire(tm_entry *e)
{
	msgpack_packer *pk;

	if (demux_deferred_cancelled(e->d)) {
		finish(e);		/* the host drops whatever we say */
		return 0;
	}
	if (e->peer == NULL) {		/* after: the value as it came */
		pk = demux_deferred_result(e->d);
		pk->callback(pk->data, e->value, e->vlen);
		finish(e);
		return 0;
	}
	if (e->i <= e->n) {		/* progress: one notification */
		msgpack_sbuffer sb;
		msgpack_packer np;

		msgpack_sbuffer_init(&sb);
		msgpack_packer_init(&np, &sb, msgpack_sbuffer_write);
		msgpack_pack_array(&np, 3);
		msgpack_pack_uint32(&np, e->msgid);
		msgpack_pack_int64(&np, e->i);
		msgpack_pack_int64(&np, e->n);
		/* a client too slow to read loses one (DEMUX_EFULL): the
		 * answer still comes */
		(void)demux_peer_notify(e->peer, "timer.progress", sb.data,
		    sb.size);
		msgpack_sbuffer_destroy(&sb);
		e->i++;
	}
	if (e->i <= e->n) {
		e->due += (uint64_t)e->ms * 1000000u;
		return 1;
	}
	msgpack_pack_int64(demux_deferred_result(e->d), e->n);
	finish(e);
	return 0;
}

static void *
timer_main(void *arg)
{
	tm_state *s = arg;
	tm_entry *due[64], **gone;
	struct timespec ts;
	uint64_t now, next_scan = 0, wake;
	size_t n, k;

	pthread_mutex_lock(&s->mu);
	while (!s->stop) {
		if (s->n == 0) {
			pthread_cond_wait(&s->cv, &s->mu);
			continue;
		}
		now = now_ns();
		if (now >= next_scan) {
			next_scan = now + SCAN_MS * 1000000u;
			n = take_cancelled(s, &gone);
			if (n > 0) {
				pthread_mutex_unlock(&s->mu);
				for (k = 0; k < n; k++)
					finish(gone[k]);
				free(gone);
				pthread_mutex_lock(&s->mu);
				continue;
			}
		}
		if (s->n == 0)
			continue;
		if (s->heap[0]->due > now) {
			wake = s->heap[0]->due < next_scan ? s->heap[0]->due :
			    next_scan;
			ts.tv_sec = (time_t)(wake / 1000000000u);
			ts.tv_nsec = (long)(wake % 1000000000u);
			pthread_cond_timedwait(&s->cv, &s->mu, &ts);
			continue;
		}
		/* take a batch of due ones; finish them without the lock (the
		 * host may write to a socket) */
		for (n = 0; n < 64 && s->n > 0 && s->heap[0]->due <= now; n++)
			due[n] = heap_pop(s);
		pthread_mutex_unlock(&s->mu);
		for (k = 0; k < n; k++)
			if (!fire(due[k]))
				due[k] = NULL;
		pthread_mutex_lock(&s->mu);
		for (k = 0; k < n; k++)
			if (due[k] != NULL)
				heap_push(s, due[k]);
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

/* ---- the plugin ---- */

static int
timer_init(const demux_host *h, void **state, char *err, size_t errlen)
{
	tm_state *s;
	pthread_condattr_t ca;
	int64_t max_open;

	if (!DEMUX_HOST_HAS(h, defer)) {
		snprintf(err, errlen, "needs a demuxd with plugin ABI 1.5 "
		    "(deferred replies)");
		return -1;
	}
	if (demux_config_keys(h, "max_open", err, errlen) != 0 ||
	    demux_config_int(h, "max_open", 100000, &max_open, err,
	    errlen) != 0)
		return -1;
	if (max_open < 1) {
		snprintf(err, errlen, "max_open: must be at least 1");
		return -1;
	}
	s = calloc(1, sizeof(*s));
	if (s == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	s->host = h;
	s->max_open = (size_t)max_open;
	pthread_mutex_init(&s->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->cv, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&s->th, NULL, timer_main, s) != 0) {
		snprintf(err, errlen, "cannot start the timer thread");
		pthread_cond_destroy(&s->cv);
		pthread_mutex_destroy(&s->mu);
		free(s);
		return -1;
	}
	*state = s;
	return 0;
}

/* Every call still open is finished here: at exit, past drain_timeout_ms,
 * each reads as cancelled and its answer is dropped. */
static void
timer_fini(void *state)
{
	tm_state *s = state;

	pthread_mutex_lock(&s->mu);
	s->stop = 1;
	pthread_cond_signal(&s->cv);
	pthread_mutex_unlock(&s->mu);
	pthread_join(s->th, NULL);
	while (s->n > 0)
		finish(heap_pop(s));
	free(s->heap);
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

static void
timer_process(void *state, const demux_request *req, demux_call *call)
{
	tm_state *s = state;
	const msgpack_object *value = NULL;
	msgpack_sbuffer sb = { 0, NULL, 0 };
	tm_entry *e;
	int64_t a, ms;
	demux_deferred *d;

	if (req->method_index == M_AFTER) {
		if (demux_params(call, "ms:i(0..86400000) value:o?", &ms,
		    &value) != 0)
			return;
		a = 0;
	} else {
		if (demux_params(call, "n:i(0..1000000) ms:i(0..86400000)", &a,
		    &ms) != 0)
			return;
	}
	if (value != NULL) {
		msgpack_packer pk;

		msgpack_sbuffer_init(&sb);
		msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
		msgpack_pack_object(&pk, *value);
	}
	e = malloc(sizeof(*e) + (value != NULL ? sb.size : 1));
	if (e == NULL) {
		msgpack_sbuffer_destroy(&sb);
		demux_error(call, DEMUX_E_INTERNAL, "out of memory");
		return;
	}
	memset(e, 0, sizeof(*e));
	if (value != NULL)
		memcpy(e->value, sb.data, sb.size);
	else
		e->value[0] = (char)0xc0;	/* nil */
	e->vlen = value != NULL ? sb.size : 1;
	msgpack_sbuffer_destroy(&sb);
	e->msgid = req->msgid;
	e->n = a;
	e->i = 1;
	e->ms = ms;
	e->due = now_ns() + (uint64_t)ms * 1000000u;

	pthread_mutex_lock(&s->mu);
	if (s->n >= s->max_open || grow(s) != 0) {
		pthread_mutex_unlock(&s->mu);
		free(e);
		demux_error(call, TIMER_E_FULL, "too many open timers (max_open "
		    "%zu, or out of memory)", s->max_open);
		return;
	}
	/* deferred only once it is sure to be queued: from here the timer
	 * thread owns the answer */
	d = demux_defer(call);
	e->d = d;
	if (req->method_index == M_PROGRESS)
		e->peer = demux_call_peer(call);
	if (req->method_index == M_PROGRESS && e->peer == NULL) {
		/* no way to notify (isolation: process): just count */
		e->i = e->n + 1;
	}
	heap_push(s, e);
	if (s->heap[0] == e)
		pthread_cond_signal(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

static const demux_plugin timer_plugin = {
	DEMUX_PLUGIN_HEADER,
	.name = "timer",
	.version = "1.0.0",
	.methods = methods,
	.init = timer_init,
	.fini = timer_fini,
	.process_transaction = timer_process,
};

DEMUX_EXPORT const demux_plugin *
DEMUX_PLUGIN_ENTRY(void)
{
	return &timer_plugin;
}
