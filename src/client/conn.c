/*
 * conn.c - one libmux connection: the table of calls in flight, the writer
 * path, opening and closing; its reader thread is in conn_read.c. Every
 * byte goes through the connection's transport (common/xport.h). See
 * conn.h for the contract.
 *
 * DESIGN
 *
 * Every caller registers an mc_call under a fresh msgid in a hash table,
 * appends its request to the connection's write buffer and, if no other
 * thread is writing, becomes the writer: it swaps the buffer out and writes
 * everything queued so far, its own request and any that other callers
 * appended meanwhile, so coinciding calls share one syscall. The fds are
 * non-blocking: when the kernel buffer is full the writer leaves the rest to
 * the reader thread (want_out), so no caller ever blocks in write and every
 * caller's timeout holds.
 *
 * The reader thread polls the read fd (plus the write fd while want_out is
 * set, plus an eventfd used to wake it), frames responses with the same
 * scanner as the server, copies each result out and completes the matching
 * call. A response for an unknown msgid (its caller timed out) is dropped and
 * counted.
 *
 * Leader and followers: one thread at a time reads the transport, the
 * holder of the read token (c->rd). A sync caller that finds nobody reading
 * takes the token and reads its own answer (mc_lead): with one caller, or
 * few, a call is a write and a read on the caller's own thread and no
 * thread hands anything to another. A caller that finds the token taken
 * sleeps as a follower; the leader completes every answer it reads, and
 * when its own arrives it hands the token to a follower whose answer has
 * not (MC_LEAD in that follower's done word), or, when none is left, puts
 * it down. The token goes to the reader thread instead while async calls
 * are in flight or the application wants notifications as they come
 * (mc_keep_reader): on_done runs on the reader thread, and an async answer
 * a leader reads is passed to it (c->adone). The reader thread reads the
 * idle connection, so that an end of input or a $/drain is seen before the
 * next call is sent; a caller takes the token from it only while it sleeps
 * in poll (MC_RD_POLL). While a caller holds the token (or has put it down
 * since), the reader thread polls for the peer's close only (POLLRDHUP, not
 * POLLIN: answers do not wake it), so a server gone away is still seen at
 * once, and looks every MC_IDLE_WATCH_MS whether the token lies free; a
 * $/drain that arrives meanwhile is read by the next caller or that look
 * (the server answers a request sent after its $/drain -32012, not
 * executed, which the handle sends elsewhere). The token becomes
 * free only under mu, and a caller becomes a follower only under mu while
 * it is taken, so no follower can sleep while nobody reads.
 *
 * Sync calls: each follower sleeps on its own call's `done` word with a
 * futex, so a completion costs one FUTEX_WAKE of exactly that thread, and
 * none when the caller has not gone to sleep (MC_SLEEP, set before it
 * does). The wake is made after mu is released, but the call lives on the
 * waiter's stack, which the waiter may leave the moment it sees MC_DONE: so
 * whoever will wake it counts itself in the word (MC_WAKER) in the same
 * atomic step that sets the bit, and counts itself out after the
 * FUTEX_WAKE, and the waiter does not return while the count is not zero
 * (mc_wait's last step). A wake never touches a frame that is gone. Bits
 * are set in the word only under mu and only for a call still in the
 * table or on the followers list, neither of which its waiter can leave
 * without mu.
 *
 * Async calls: completed on the reader thread by calling on_done after the
 * lock is released (never under it: on_done may start another call). Their
 * deadlines sit in a min-heap the reader polls against. When the connection
 * breaks or closes, whoever notices fails the sync calls at once and moves
 * the async ones to a list the reader completes on its way out, so on_done
 * always runs on the reader thread.
 *
 * Sent or not: when the connection breaks, a call whose request was never
 * passed to write(2) certainly did not run, and fails with MUX_ENOTCONN
 * (safe to send elsewhere) rather than MUX_ECONN (effect unknown). Each call
 * records where its request starts in the stream (wpos); writers publish how
 * far they have passed bytes to the kernel (attempted) and then check the
 * state, while set_broken changes the state and then reads attempted, both
 * sequentially consistent: either the writer sees BROKEN and writes nothing
 * more, or the breaker sees the bytes as attempted.
 *
 * Locks: c->mu guards the table, the heap and the state (callers inserting,
 * the reader completing); c->wmu guards the write buffers (callers queueing,
 * whoever writes). Two locks, because the reader and the writers would
 * otherwise contend for one on every message. Order: wmu before mu.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>

#include "../common/buf.h"
#include "../common/msg.h"
#include "../common/wire.h"
#include "conn_impl.h"

void
mc_set_notify(mc_conn *c, mc_note_fn fn, void *arg)
{
	atomic_store_explicit(&c->note_arg, arg, memory_order_relaxed);
	atomic_store_explicit(&c->note_fn, fn, memory_order_release);
}

void
mc_wake_reader(mc_conn *c)
{
	uint64_t one = 1;

	if (write(c->wakefd, &one, sizeof(one)) < 0) {
		/* EAGAIN: the counter is already non-zero, it will wake */
	}
}

void
mc_wake_leader(mc_conn *c)
{
	uint64_t one = 1;

	if (atomic_load(&c->rd) == MC_RD_CALLER &&
	    write(c->lwake, &one, sizeof(one)) < 0) {
		/* EAGAIN: the counter is already non-zero, it will wake */
	}
}

void
mc_keep_reader(mc_conn *c, int on)
{
	atomic_store(&c->keep_reader, on != 0);
	if (on)
		mc_wake_reader(c);
}

/* The call this thread is reading for, if it leads: completing it needs no
 * wake-up. */
static __thread mc_call *mc_self;

static void
futex_wake_one(_Atomic uint32_t *w)
{
	syscall(SYS_futex, w, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* Sleep until MC_DONE or MC_LEAD is set in *w, at most *rel (NULL: no
 * limit); MC_SLEEP tells whoever sets them that a FUTEX_WAKE is needed.
 * Spurious returns are fine: callers loop. */
static void
futex_sleep(_Atomic uint32_t *w, const struct timespec *rel)
{
	uint32_t v = atomic_fetch_or(w, MC_SLEEP) | MC_SLEEP;

	if (v == MC_SLEEP)
		syscall(SYS_futex, w, FUTEX_WAIT_PRIVATE, v, rel, NULL, 0);
}

/* Set bit in a sync call's word (mu held). Returns the word to pass to
 * mc_futex_wake once mu is released, or NULL if its caller is not asleep
 * (it will see the bit before it sleeps). */
static _Atomic uint32_t *
signal_call(mc_call *p, uint32_t bit)
{
	uint32_t old = atomic_load_explicit(&p->done, memory_order_relaxed);
	uint32_t new;

	do {
		new = old | bit;
		if (old & MC_SLEEP)
			new += MC_WAKER;
	} while (!atomic_compare_exchange_weak_explicit(&p->done, &old, new,
	    memory_order_release, memory_order_relaxed));
	return (old & MC_SLEEP) ? &p->done : NULL;
}

/* The caller's last step before it returns: wait for every waker counted
 * in its word to be done with it. The window is one FUTEX_WAKE. */
static void
wakers_gone(mc_call *p)
{
	unsigned spins = 0;

	while (atomic_load_explicit(&p->done, memory_order_acquire) >=
	    MC_WAKER) {
		if (++spins > 64)
			sched_yield();
	}
}

/* ---- the deadline heap of async calls (mu held) ---- */

static void
heap_set(mc_conn *c, size_t i, mc_call *x)
{
	c->heap[i] = x;
	x->heap_idx = i;
}

static void
heap_up(mc_conn *c, size_t i)
{
	mc_call *x = c->heap[i];

	while (i > 0 && c->heap[(i - 1) / 2]->deadline_ns > x->deadline_ns) {
		heap_set(c, i, c->heap[(i - 1) / 2]);
		i = (i - 1) / 2;
	}
	heap_set(c, i, x);
}

static void
heap_down(mc_conn *c, size_t i)
{
	mc_call *x = c->heap[i];
	size_t k;

	for (;;) {
		k = 2 * i + 1;
		if (k >= c->nheap)
			break;
		if (k + 1 < c->nheap &&
		    c->heap[k + 1]->deadline_ns < c->heap[k]->deadline_ns)
			k++;
		if (c->heap[k]->deadline_ns >= x->deadline_ns)
			break;
		heap_set(c, i, c->heap[k]);
		i = k;
	}
	heap_set(c, i, x);
}

static void
heap_changed(mc_conn *c)
{
	atomic_store_explicit(&c->next_dl, c->nheap ?
	    c->heap[0]->deadline_ns : 0, memory_order_relaxed);
}

static int
heap_push(mc_conn *c, mc_call *x)
{
	if (c->nheap == c->heapcap) {
		size_t n = c->heapcap ? c->heapcap * 2 : 64;
		mc_call **h = realloc(c->heap, n * sizeof(*h));

		if (h == NULL)
			return -1;
		c->heap = h;
		c->heapcap = n;
	}
	c->heap[c->nheap++] = x;
	heap_up(c, c->nheap - 1);
	heap_changed(c);
	return 0;
}

static void
heap_del(mc_conn *c, mc_call *x)
{
	size_t i = x->heap_idx;

	if (x->deadline_ns == 0 || i >= c->nheap || c->heap[i] != x)
		return;
	c->nheap--;
	if (i < c->nheap) {
		heap_set(c, i, c->heap[c->nheap]);
		if (i > 0 && c->heap[(i - 1) / 2]->deadline_ns >
		    c->heap[i]->deadline_ns)
			heap_up(c, i);
		else
			heap_down(c, i);
	}
	heap_changed(c);
}

/* ---- the table of calls in flight (mu held) ---- */

static int
table_grow(mc_conn *c)
{
	size_t n = c->nbuckets ? c->nbuckets * 2 : 64, i;
	mc_call **b = calloc(n, sizeof(*b)), *p, *next;

	if (b == NULL)
		return -1;
	for (i = 0; i < c->nbuckets; i++)
		for (p = c->buckets[i]; p != NULL; p = next) {
			next = p->next;
			p->next = b[p->msgid & (n - 1)];
			b[p->msgid & (n - 1)] = p;
		}
	free(c->buckets);
	c->buckets = b;
	c->nbuckets = n;
	return 0;
}

mc_call **
mc_table_find(mc_conn *c, uint32_t id)
{
	mc_call **pp;

	if (c->nbuckets == 0)
		return NULL;
	for (pp = &c->buckets[id & (c->nbuckets - 1)]; *pp != NULL;
	    pp = &(*pp)->next)
		if ((*pp)->msgid == id)
			return pp;
	return NULL;
}

/* Give p a msgid no call in flight uses and insert it. */
static int
table_insert(mc_conn *c, mc_call *p)
{
	if (c->npending >= c->nbuckets && table_grow(c) != 0)
		return -1;
	if (p->on_done != NULL && p->deadline_ns != 0) {
		if (heap_push(c, p) != 0)
			return -1;
		/* the earliest deadline now: the reader may be asleep in a
		 * poll timed for a later one (or none) */
		if (p->heap_idx == 0)
			mc_wake_reader(c);
	}
	do
		p->msgid = c->next_id++;
	while (mc_table_find(c, p->msgid) != NULL);
	p->next = c->buckets[p->msgid & (c->nbuckets - 1)];
	c->buckets[p->msgid & (c->nbuckets - 1)] = p;
	if (p->on_insert != NULL)
		p->on_insert(p);
	atomic_store_explicit(&c->npending, c->npending + 1,
	    memory_order_relaxed);
	if (p->on_done != NULL && atomic_fetch_add(&c->nasync, 1) == 0) {
		int rd = atomic_load(&c->rd);

		/* async answers are the reader thread's to read: a caller
		 * may hold the token, or it may lie free while the reader
		 * sleeps until its next idle look */
		if (rd == MC_RD_CALLER || rd == MC_RD_FREE)
			mc_wake_reader(c);
	}
	return 0;
}

/*
 * After $/drain, once nothing is in flight (mu held): half-close, so that
 * the server, which keeps a drained connection open for requests still on
 * their way, sees that no more will come and closes at once. Nothing new is
 * sent after $/drain (mc_start refuses under mu), so none can be lost.
 */
void
mc_drain_done(mc_conn *c)
{
	if (atomic_load(&c->draining) && c->npending == 0 && c->xp->is_sock &&
	    !c->wr_shut) {
		dmx_xport_shutdown(c->xp, SHUT_WR);
		c->wr_shut = 1;
	}
}

/* Unlink *pp from the table (and the heap); returns it. */
mc_call *
mc_table_remove(mc_conn *c, mc_call **pp)
{
	mc_call *p = *pp;

	*pp = p->next;
	p->next = NULL;
	if (p->on_done != NULL) {
		heap_del(c, p);
		atomic_fetch_sub(&c->nasync, 1);
	}
	atomic_store_explicit(&c->npending, c->npending - 1,
	    memory_order_relaxed);
	mc_drain_done(c);
	return p;
}

/* ---- the followers: sync callers asleep while another reads (mu) ---- */

static void
follower_link(mc_conn *c, mc_call *p)
{
	p->fprev = NULL;
	p->fnext = c->followers;
	if (c->followers != NULL)
		c->followers->fprev = p;
	c->followers = p;
	p->following = 1;
}

static void
follower_unlink(mc_conn *c, mc_call *p)
{
	if (p->fprev != NULL)
		p->fprev->fnext = p->fnext;
	else
		c->followers = p->fnext;
	if (p->fnext != NULL)
		p->fnext->fprev = p->fprev;
	p->fnext = p->fprev = NULL;
	p->following = 0;
}

/* Finish a call that is out of the table (mu held): a sync caller is woken
 * now; an async one is pushed on *list for on_done once mu is released. */
void
mc_finish(mc_conn *c, mc_call *p, int rc, mc_call **list)
{
	p->rc = rc;
	if (p->on_done != NULL) {
		p->next = *list;
		*list = p;
		return;
	}
	mc_futex_wake(mc_finish_sync(c, p));
}

_Atomic uint32_t *
mc_finish_sync(mc_conn *c, mc_call *p)
{
	if (p->following)
		follower_unlink(c, p);
	if (p == mc_self) {
		atomic_fetch_or_explicit(&p->done, MC_DONE,
		    memory_order_release);
		return NULL;
	}
	return signal_call(p, MC_DONE);
}

void
mc_futex_wake(_Atomic uint32_t *w)
{
	if (w != NULL) {
		futex_wake_one(w);
		atomic_fetch_sub_explicit(w, MC_WAKER, memory_order_release);
	}
}

/* Run on_done for every call on a list (no lock held). */
void
mc_run_done(mc_call *list)
{
	mc_call *p, *next;

	for (p = list; p != NULL; p = next) {
		next = p->next;
		p->next = NULL;
		p->on_done(p);
	}
}

/* Fail every call in flight (mu held); async ones go to c->dead, which the
 * reader completes as it stops. For a broken connection (MUX_ECONN), calls
 * whose request never reached write(2) fail MUX_ENOTCONN instead. */
/* A failed call's message: the connection's cause, and what it means for
 * this call, from the code alone (c->why never says it, so that a call
 * that was not sent is never told its effect is unknown). */
static void
set_message(mux_result *res, int rc, const char *why)
{
	char msg[MUX_ERRLEN + 64];

	if (rc == MUX_ECONN)
		snprintf(msg, sizeof(msg), "%s; the effect of calls in flight "
		    "is unknown", why);
	else if (rc == MUX_ENOTCONN)
		snprintf(msg, sizeof(msg), "%s; the call was not sent, it was "
		    "not executed", why);
	else
		snprintf(msg, sizeof(msg), "%s", why);
	res->message = strdup(msg);
}

static void
fail_all(mc_conn *c, int rc, const char *why)
{
	uint64_t attempted = atomic_load(&c->attempted);
	mc_call *p, *next;
	size_t i;
	int r;

	for (i = 0; i < c->nbuckets; i++) {
		for (p = c->buckets[i]; p != NULL; p = next) {
			next = p->next;
			r = rc;
			if (rc == MUX_ECONN && atomic_load_explicit(&p->wpos,
			    memory_order_relaxed) >= attempted)
				r = MUX_ENOTCONN;
			if (p->res->message == NULL)
				set_message(p->res, r, why);
			mc_finish(c, p, r, &c->dead);
		}
		c->buckets[i] = NULL;
	}
	c->nheap = 0;
	heap_changed(c);
	atomic_store(&c->npending, 0);
	atomic_store(&c->nasync, 0);
	/* queued requests are dropped by the next writer, which checks the
	 * state */
}

/* The connection is unusable (mu held). */
void
mc_set_broken(mc_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

void
mc_set_broken(mc_conn *c, const char *fmt, ...)
{
	va_list ap;

	if (c->state != MC_OPEN)
		return;
	va_start(ap, fmt);
	vsnprintf(c->why, sizeof(c->why), fmt, ap);
	va_end(ap);
	atomic_store(&c->state, MC_BROKEN);
	fail_all(c, MUX_ECONN, c->why);
	mc_wake_reader(c);
	mc_wake_leader(c);
}

/* ---- writing ---- */

/* One buffer through the transport (which keeps SIGPIPE from a pipe to a
 * dead child away from the application: guard_sigpipe). */
static ssize_t
raw_write(mc_conn *c, const void *p, size_t n)
{
	struct iovec iov = { (void *)p, n };

	return dmx_xport_writev(c->xp, &iov, 1);
}

/*
 * Write queued requests until none are left or the fd is full. Called with wmu
 * held and writing == 0; drops wmu around each syscall. On EAGAIN the rest is
 * left to the reader thread (want_out).
 */
void
mc_flush_locked(mc_conn *c)
{
	dmx_buf tmp;
	ssize_t n;

	c->writing = 1;
	while (atomic_load(&c->state) == MC_OPEN) {
		if (c->wcur_off == c->wcur.len) {
			c->wcur.len = 0;
			c->wcur_off = 0;
			if (c->wbuf.len == 0)
				break;
			c->wcur_start = c->queued - c->wbuf.len;
			tmp = c->wcur;
			c->wcur = c->wbuf;
			c->wbuf = tmp;
		}
		/* publish, then check: see "Sent or not" above */
		atomic_store(&c->attempted, c->wcur_start + c->wcur.len);
		if (atomic_load(&c->state) != MC_OPEN)
			break;
		pthread_mutex_unlock(&c->wmu);
		do
			n = raw_write(c, c->wcur.data + c->wcur_off,
			    c->wcur.len - c->wcur_off);
		while (n < 0 && errno == EINTR);
		pthread_mutex_lock(&c->wmu);
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			if (!c->want_out) {
				c->want_out = 1;
				mc_wake_reader(c);
			}
			break;
		}
		if (n < 0) {
			int e = errno;

			/* the kernel took none of these bytes */
			atomic_store(&c->attempted, c->wcur_start + c->wcur_off);
			pthread_mutex_lock(&c->mu);
			mc_set_broken(c, "connection lost (write: %s)",
			    strerror(e));
			pthread_mutex_unlock(&c->mu);
			break;
		}
		c->wcur_off += (size_t)n;
	}
	if (atomic_load(&c->state) != MC_OPEN) {
		c->wcur.len = c->wcur_off = 0;
		c->wbuf.len = 0;
	}
	c->writing = 0;
}

/* Params at least this large, on a connection with nothing queued and
 * nobody writing, are written from the caller's buffer: no copy. */
#define DIRECT_MIN	(4u << 10)

/*
 * Write one request with writev from the caller's params, without copying
 * them into the write buffer (wmu held, nobody writing, nothing queued).
 * The header is packed into wcur, which is idle. What the kernel does not
 * take at once is copied into wcur and left to the usual path, so the
 * caller's buffer is never referenced after this returns.
 */
static void
write_direct(mc_conn *c, mc_call *call, int type, const char *method,
    size_t mlen, const void *params, size_t len)
{
	msgpack_packer pk;
	struct iovec iov[2];
	uint64_t pos = c->queued;
	size_t hlen, total, n;
	ssize_t w;
	int e;

	c->writing = 1;
	c->wcur.len = c->wcur_off = 0;
	c->wcur_start = pos;
	msgpack_packer_init(&pk, &c->wcur, dmx_buf_pack_write);
	if (type == DMX_MSG_REQUEST)
		dmx_msg_request_head(&pk, call->msgid, method, mlen);
	else
		dmx_msg_notify_head(&pk, method, mlen);
	hlen = c->wcur.len;
	total = hlen + len;
	if (call != NULL) {
		atomic_store_explicit(&call->wpos, pos, memory_order_relaxed);
		call->wlen = total;
	}
	c->queued += total;
	/* publish, then check: see "Sent or not" above */
	atomic_store(&c->attempted, pos + total);
	if (atomic_load(&c->state) != MC_OPEN) {
		c->wcur.len = 0;
		c->writing = 0;
		return;
	}
	iov[0].iov_base = c->wcur.data;
	iov[0].iov_len = hlen;
	iov[1].iov_base = (void *)params;
	iov[1].iov_len = len;
	pthread_mutex_unlock(&c->wmu);
	do
		w = dmx_xport_writev(c->xp, iov, 2);
	while (w < 0 && errno == EINTR);
	e = errno;
	pthread_mutex_lock(&c->wmu);
	if (w < 0 && e != EAGAIN && e != EWOULDBLOCK) {
		atomic_store(&c->attempted, pos);	/* none taken */
		c->wcur.len = 0;
		c->writing = 0;
		pthread_mutex_lock(&c->mu);
		mc_set_broken(c, "connection lost (write: %s)", strerror(e));
		pthread_mutex_unlock(&c->mu);
		return;
	}
	n = w < 0 ? 0 : (size_t)w;
	if (n < total) {
		/* the rest, copied: the caller's buffer is its own again */
		if (n >= hlen) {
			c->wcur.len = 0;
			c->wcur_start = pos + n;
			dmx_buf_append(&c->wcur, (const char *)params +
			    (n - hlen), total - n);
		} else {
			dmx_buf_append(&c->wcur, params, len);
			c->wcur_off = n;
		}
	} else {
		c->wcur.len = 0;
	}
	/* go on as the writer: the rest, and what others queued meanwhile */
	c->writing = 0;
	if (c->wcur_off < c->wcur.len || c->wbuf.len > 0)
		mc_flush_locked(c);
}

/* Queue one message (header + params) and write if nobody else is. wmu
 * held. */
static int
queue_msg(mc_conn *c, int type, mc_call *call, const char *method,
    const void *params, size_t len)
{
	msgpack_packer pk;
	size_t mlen = strlen(method), before = c->wbuf.len;

	/* not for an async call: its params live in the call, which its
	 * completion frees on another thread, ordered after this write only
	 * through the server (safe, but no happens-before a race detector
	 * can see); and they are a copy libmux made already */
	if (len >= DIRECT_MIN && mlen <= UINT32_MAX && !c->writing &&
	    (call == NULL || call->on_done == NULL) &&
	    !c->want_out && c->wbuf.len == 0 && c->wcur_off == c->wcur.len &&
	    dmx_buf_reserve(&c->wcur, 16 + mlen + len) == 0) {
		write_direct(c, call, type, method, mlen, params, len);
		return MUX_OK;
	}

	/* reserve everything first: the packer ignores a failing sink */
	if (mlen > UINT32_MAX || dmx_buf_reserve(&c->wbuf, 16 + mlen + len) != 0)
		return MUX_ENOMEM;
	if (call != NULL)
		atomic_store_explicit(&call->wpos, c->queued,
		    memory_order_relaxed);
	msgpack_packer_init(&pk, &c->wbuf, dmx_buf_pack_write);
	if (type == DMX_MSG_REQUEST)
		dmx_msg_request_head(&pk, call->msgid, method, mlen);
	else
		dmx_msg_notify_head(&pk, method, mlen);
	if (len == 0)
		msgpack_pack_array(&pk, 0);
	else
		dmx_buf_append(&c->wbuf, params, len);
	c->queued += c->wbuf.len - before;
	if (call != NULL)
		call->wlen = c->wbuf.len - before;
	if (!c->writing && !c->want_out)
		mc_flush_locked(c);
	return MUX_OK;
}

/*
 * A call timed out (it is out of the table). If its request still waits in
 * wbuf, no byte of it reached the kernel: take it out, so that a server that
 * does not read cannot make timed-out requests pile up here, and shift the
 * stream positions of the requests queued after it. Otherwise the server
 * may be running it: ask it to stop.
 */
void
mc_withdraw_or_cancel(mc_conn *c, mc_call *p)
{
	uint64_t pos = atomic_load_explicit(&p->wpos, memory_order_relaxed),
	    start, off;
	mc_call *q;
	size_t i;
	int withdrawn = 0;

	pthread_mutex_lock(&c->wmu);
	start = c->queued - c->wbuf.len;	/* stream position of wbuf[0] */
	if (pos != UINT64_MAX && pos >= start && pos - start + p->wlen <=
	    c->wbuf.len && atomic_load(&c->state) == MC_OPEN) {
		off = pos - start;
		memmove(c->wbuf.data + off, c->wbuf.data + off + p->wlen,
		    c->wbuf.len - off - p->wlen);
		c->wbuf.len -= p->wlen;
		c->queued -= p->wlen;
		dmx_buf_shrink(&c->wbuf, 64u << 10);
		pthread_mutex_lock(&c->mu);
		for (i = 0; i < c->nbuckets; i++)
			for (q = c->buckets[i]; q != NULL; q = q->next) {
				uint64_t w = atomic_load_explicit(&q->wpos,
				    memory_order_relaxed);

				if (w != UINT64_MAX && w > pos)
					atomic_store_explicit(&q->wpos,
					    w - p->wlen, memory_order_relaxed);
			}
		pthread_mutex_unlock(&c->mu);
		withdrawn = 1;
	}
	pthread_mutex_unlock(&c->wmu);
	if (!withdrawn)
		mc_cancel(c, p->msgid);	/* stop the work on the server */
}

/* ---- calls ---- */

int
mc_start(mc_conn *c, mc_call *call, const char *method, const void *params,
    size_t len)
{
	mc_call **pp;
	int rc, st;

	call->rc = MUX_OK;
	call->next = NULL;
	call->fnext = call->fprev = NULL;
	call->following = 0;
	atomic_store_explicit(&call->done, 0, memory_order_relaxed);
	atomic_store_explicit(&call->wpos, UINT64_MAX, memory_order_relaxed);
	pthread_mutex_lock(&c->mu);
	st = atomic_load(&c->state);
	if (st != MC_OPEN) {
		pthread_mutex_unlock(&c->mu);
		return st == MC_CLOSED ? MUX_ECLOSED : MUX_ENOTCONN;
	}
	if (atomic_load(&c->draining)) {
		pthread_mutex_unlock(&c->mu);
		return MUX_EDRAINING;
	}
	if (table_insert(c, call) != 0) {
		pthread_mutex_unlock(&c->mu);
		return MUX_ENOMEM;
	}
	pthread_mutex_unlock(&c->mu);

	pthread_mutex_lock(&c->wmu);
	rc = queue_msg(c, DMX_MSG_REQUEST, call, method, params, len);
	pthread_mutex_unlock(&c->wmu);
	if (rc == MUX_OK)
		return MUX_OK;
	/* nothing was queued: withdraw the call, unless a failure of the
	 * connection completed it meanwhile (then that is its answer) */
	pthread_mutex_lock(&c->mu);
	pp = mc_table_find(c, call->msgid);
	if (pp != NULL && *pp == call)
		mc_table_remove(c, pp);
	else
		rc = MUX_OK;
	pthread_mutex_unlock(&c->mu);
	return rc;
}

/* Pass the read token on as its holder stops reading (mu held): to a
 * follower whose answer has not come (returns its futex word, to wake once
 * mu is released), else down, waking the reader thread if it has work
 * now. */
static _Atomic uint32_t *
lead_handoff(mc_conn *c)
{
	mc_call *f = c->followers;

	if (atomic_load(&c->state) == MC_OPEN && f != NULL &&
	    atomic_load(&c->nasync) == 0 && !atomic_load(&c->keep_reader)) {
		follower_unlink(c, f);
		return signal_call(f, MC_LEAD);
	}
	atomic_store(&c->rd, MC_RD_FREE);
	if (f != NULL || atomic_load(&c->adone) != NULL || atomic_load(&c->nasync) != 0 ||
	    atomic_load(&c->keep_reader) || atomic_load(&c->state) != MC_OPEN)
		mc_wake_reader(c);
	return NULL;
}

/* Take the read token if nobody holds it or the reader thread only sleeps
 * in poll with it, and no async call or notification wants the reader. */
static int
try_lead(mc_conn *c)
{
	int e;

	if (atomic_load_explicit(&c->nasync, memory_order_relaxed) != 0 ||
	    atomic_load_explicit(&c->keep_reader, memory_order_relaxed))
		return 0;
	e = MC_RD_FREE;
	if (atomic_compare_exchange_strong(&c->rd, &e, MC_RD_CALLER))
		return 1;
	e = MC_RD_POLL;
	return atomic_compare_exchange_strong(&c->rd, &e, MC_RD_CALLER);
}

int
mc_time_left(const struct timespec *dl, struct timespec *rel)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	rel->tv_sec = dl->tv_sec - now.tv_sec;
	rel->tv_nsec = dl->tv_nsec - now.tv_nsec;
	if (rel->tv_nsec < 0) {
		rel->tv_sec--;
		rel->tv_nsec += 1000000000L;
	}
	return rel->tv_sec < 0 ? -1 : 0;
}

/* Sleep as a follower until p is done, handed the token or *dl passes.
 * Returns 1 on the deadline. */
static int
follow(mc_conn *c, mc_call *p, const struct timespec *dl)
{
	struct timespec rel;

	pthread_mutex_lock(&c->mu);
	if ((atomic_load_explicit(&p->done, memory_order_acquire) &
	    (MC_DONE | MC_LEAD)) != 0 ||
	    (atomic_load(&c->rd) == MC_RD_FREE &&
	    atomic_load(&c->nasync) == 0 && !atomic_load(&c->keep_reader))) {
		/* done, or the token was put down meanwhile and this caller
		 * may take it (else the reader thread, woken, takes it): look
		 * again */
		pthread_mutex_unlock(&c->mu);
		return 0;
	}
	follower_link(c, p);
	pthread_mutex_unlock(&c->mu);
	for (;;) {
		if ((atomic_load_explicit(&p->done, memory_order_acquire) &
		    (MC_DONE | MC_LEAD)) != 0)
			return 0;
		if (dl == NULL) {
			futex_sleep(&p->done, NULL);
			continue;
		}
		if (mc_time_left(dl, &rel) != 0)
			return 1;
		futex_sleep(&p->done, &rel);
	}
}

int
mc_wait(mc_conn *c, mc_call *p, const struct timespec *dl)
{
	mc_call **pp;
	uint32_t w;
	int lead = 0, timed_out = 0, late;

	for (;;) {
		w = atomic_load_explicit(&p->done, memory_order_acquire);
		if (w & MC_LEAD) {
			atomic_fetch_and(&p->done, ~MC_LEAD);
			lead = 1;
		}
		if (w & MC_DONE)
			break;
		if (!lead)
			lead = try_lead(c);
		if (lead) {
			mc_self = p;
			late = mc_lead(c, p, dl);
			mc_self = NULL;
		} else {
			late = follow(c, p, dl);
		}
		if (!late)
			continue;
		/* timed out: unless it was completed meanwhile, take the call
		 * out of the table so that nobody will */
		pthread_mutex_lock(&c->mu);
		if (!(atomic_load_explicit(&p->done, memory_order_acquire) &
		    MC_DONE)) {
			pp = mc_table_find(c, p->msgid);
			if (pp != NULL && *pp == p)
				mc_table_remove(c, pp);
			if (p->following)
				follower_unlink(c, p);
			p->res->message = strdup(mux_strerror(MUX_ETIMEDOUT));
			p->rc = MUX_ETIMEDOUT;
			atomic_fetch_or_explicit(&p->done, MC_DONE,
			    memory_order_relaxed);
			timed_out = 1;
		}
		pthread_mutex_unlock(&c->mu);
	}
	if (lead || (atomic_load(&p->done) & MC_LEAD)) {
		/* MC_LEAD is set only under mu, and only on a call still on
		 * the followers list, which it is no more: reading it here is
		 * final */
		_Atomic uint32_t *w2;

		pthread_mutex_lock(&c->mu);
		w2 = lead_handoff(c);
		pthread_mutex_unlock(&c->mu);
		mc_futex_wake(w2);
	}
	if (timed_out)
		mc_withdraw_or_cancel(c, p);
	wakers_gone(p);
	return p->rc;
}

int
mc_notify(mc_conn *c, const char *method, const void *params, size_t len)
{
	int rc, st = atomic_load(&c->state);

	if (st != MC_OPEN)
		return st == MC_CLOSED ? MUX_ECLOSED : MUX_ENOTCONN;
	if (atomic_load(&c->draining))
		return MUX_EDRAINING;
	pthread_mutex_lock(&c->wmu);
	rc = queue_msg(c, DMX_MSG_NOTIFY, NULL, method, params, len);
	pthread_mutex_unlock(&c->wmu);
	return rc;
}

void
mc_cancel(mc_conn *c, uint32_t msgid)
{
	msgpack_packer pk;
	size_t before;

	if (atomic_load(&c->state) != MC_OPEN)
		return;
	pthread_mutex_lock(&c->wmu);
	before = c->wbuf.len;
	if (dmx_buf_reserve(&c->wbuf, 32) == 0) {
		msgpack_packer_init(&pk, &c->wbuf, dmx_buf_pack_write);
		dmx_msg_cancel(&pk, msgid);
		c->queued += c->wbuf.len - before;
		if (!c->writing && !c->want_out)
			mc_flush_locked(c);
	}
	pthread_mutex_unlock(&c->wmu);
}

/* ---- opening and closing ---- */

static uint32_t
random_u32(void)
{
	uint32_t v;
	struct timespec ts;

	if (getrandom(&v, sizeof(v), GRND_NONBLOCK) == (ssize_t)sizeof(v))
		return v;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint32_t)ts.tv_nsec ^ (uint32_t)getpid() << 16;
}

static int
set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* Reap a spawned child: it exits once it has seen EOF on its stdin and
 * answered what it had accepted. Give it time, then insist. */
static void
reap(pid_t pid)
{
	static const int sigs[] = { 0, SIGTERM, SIGKILL };
	struct pollfd pfd;
	int fd, i, st;

	fd = (int)syscall(SYS_pidfd_open, pid, 0);
	for (i = 0; fd >= 0 && i < 3; i++) {
		if (sigs[i] != 0)
			kill(pid, sigs[i]);
		pfd.fd = fd;
		pfd.events = POLLIN;
		if (poll(&pfd, 1, 5000) > 0)
			break;
	}
	if (fd >= 0)
		close(fd);
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
}

static void
close_fds(int rfd, int wfd)
{
	if (wfd != rfd)
		close(wfd);
	close(rfd);
}

mc_conn *
mc_open(int rfd, int wfd, pid_t child, size_t max_frame, mc_event_fn on_stop,
    void *arg, char *err, size_t errlen)
{
	struct stat st;
	dmx_xport *x;

	if (set_nonblock(rfd) != 0 || set_nonblock(wfd) != 0) {
		snprintf(err, errlen, "fcntl: %s", strerror(errno));
		close_fds(rfd, wfd);
		if (child > 0)
			reap(child);
		return NULL;
	}
	x = dmx_xport_plain(rfd, wfd, fstat(wfd, &st) == 0 &&
	    S_ISSOCK(st.st_mode));
	if (x == NULL) {
		snprintf(err, errlen, "out of memory");
		close_fds(rfd, wfd);
		if (child > 0)
			reap(child);
		return NULL;
	}
	return mc_open_xport(x, child, max_frame, on_stop, arg, err, errlen);
}

mc_conn *
mc_open_xport(dmx_xport *x, pid_t child, size_t max_frame,
    mc_event_fn on_stop, void *arg, char *err, size_t errlen)
{
	pthread_mutexattr_t ma;
	pthread_attr_t ta;
	pthread_t th;
	mc_conn *c;
	int rc;

	c = calloc(1, sizeof(*c));
	if (c == NULL) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	c->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	c->lwake = c->wakefd < 0 ? -1 : eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (c->lwake < 0) {
		snprintf(err, errlen, "eventfd: %s", strerror(errno));
		if (c->wakefd >= 0)
			close(c->wakefd);
		goto fail;
	}
	c->xp = x;
	c->xp->guard_sigpipe = 1;
	c->child = child;
	c->max_frame = max_frame;
	c->on_stop = on_stop;
	c->arg = arg;
	c->refs = 2;		/* the caller's and the reader's */
	c->next_id = random_u32();
	/* callers hold the locks briefly and often: spin a little before
	 * sleeping */
	pthread_mutexattr_init(&ma);
	pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
	pthread_mutex_init(&c->mu, &ma);
	pthread_mutex_init(&c->wmu, &ma);
	pthread_mutexattr_destroy(&ma);
	pthread_attr_init(&ta);
	pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
	rc = pthread_create(&th, &ta, mc_reader_main, c);
	pthread_attr_destroy(&ta);
	if (rc != 0) {
		snprintf(err, errlen, "cannot start the reader thread: %s",
		    strerror(rc));
		pthread_mutex_destroy(&c->wmu);
		pthread_mutex_destroy(&c->mu);
		close(c->wakefd);
		close(c->lwake);
		dmx_xport_free(c->xp);
		free(c);
		if (child > 0)
			reap(child);
		errno = rc;
		return NULL;
	}
	return c;
fail:
	free(c);
	dmx_xport_free(x);
	if (child > 0)
		reap(child);
	return NULL;
}

void
mc_ref(mc_conn *c)
{
	atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void
mc_close(mc_conn *c)
{
	pthread_mutex_lock(&c->mu);
	if (c->state == MC_OPEN)
		fail_all(c, MUX_ECLOSED, "the handle was closed (mux_close)");
	atomic_store(&c->state, MC_CLOSED);
	pthread_mutex_unlock(&c->mu);
	mc_wake_reader(c);
	mc_wake_leader(c);
	dmx_xport_shutdown(c->xp, SHUT_RDWR);
}

void
mc_abort(mc_conn *c, const char *why)
{
	pthread_mutex_lock(&c->mu);
	mc_set_broken(c, "%s", why);
	pthread_mutex_unlock(&c->mu);
	dmx_xport_shutdown(c->xp, SHUT_RDWR);
}

void
mc_unref(mc_conn *c)
{
	if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
		return;
	/* the reader's reference was among them: it has stopped */
	dmx_xport_free(c->xp);
	close(c->wakefd);
	close(c->lwake);
	if (c->child > 0)
		reap(c->child);
	free(c->buckets);
	free(c->heap);
	dmx_buf_release(&c->wbuf);
	dmx_buf_release(&c->wcur);
	dmx_buf_release(&c->rb);
	pthread_mutex_destroy(&c->wmu);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

int
mc_is_open(mc_conn *c)
{
	return atomic_load(&c->state) == MC_OPEN;
}

int
mc_is_draining(mc_conn *c)
{
	return atomic_load(&c->draining);
}

unsigned
mc_inflight(mc_conn *c)
{
	return atomic_load_explicit(&c->npending, memory_order_relaxed);
}

uint64_t
mc_late(mc_conn *c)
{
	return atomic_load_explicit(&c->late, memory_order_relaxed);
}

void
mc_set_in_place(mc_conn *c, int on)
{
	atomic_store(&c->in_place, on != 0);
}

void
mc_set_max_frame(mc_conn *c, size_t bytes)
{
	atomic_store(&c->max_frame, bytes);
}

void
mc_why(mc_conn *c, char *buf, size_t n)
{
	pthread_mutex_lock(&c->mu);
	snprintf(buf, n, "%s", c->state == MC_OPEN ? "" : c->why);
	pthread_mutex_unlock(&c->mu);
}
