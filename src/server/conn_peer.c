/*
 * conn_peer.c - connections that plugins hold: the claims behind
 * demux_peer, and notifications a plugin sends on its own (plugin ABI 1.5).
 * Any thread; see conn_impl.h for who guards what.
 *
 * A notification travels like a host-made reply: a job with no route,
 * queued on the output queue and written by whoever writes next. Unsent
 * output is bounded by max_output, so a client that never reads costs at
 * most that much: a notification that would pass it is dropped and
 * counted, never queued. Notifications queued back to back share one job
 * (appended to the queue's tail while no writer holds pointers into the
 * queue), so that a slow subscriber's backlog costs bytes, not a job each.
 *
 * The thread that queues a notification does not write it: it asks the
 * I/O thread (attention), which writes whatever has gathered by then in
 * one writev. A publisher notifying 100 subscribers 32 times thus costs
 * about 100 writes per loop pass, not 3,200 syscalls on its own thread,
 * as Redis writes its clients' buffers once per event-loop iteration.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "../common/msg.h"
#include "conn_impl.h"

int
dmx_conn_peer_hold(dmx_conn *c)
{
	if (c->cs->trusted)
		return -1;	/* plugin-host mode: the peer is demuxd */
	pthread_mutex_lock(&c->mu);
	c->peers++;
	pthread_mutex_unlock(&c->mu);
	return 0;
}

void
dmx_conn_peer_drop(dmx_conn *c)
{
	int last;

	pthread_mutex_lock(&c->mu);
	c->peers--;
	last = conn_unclaimed_locked(c);
	pthread_mutex_unlock(&c->mu);
	if (last)
		conn_free(c);
}

int
dmx_conn_gone(dmx_conn *c)
{
	int gone;

	pthread_mutex_lock(&c->mu);
	gone = c->broken || c->released;
	pthread_mutex_unlock(&c->mu);
	return gone;
}

uint64_t
dmx_conn_id(const dmx_conn *c)
{
	return c->id;
}

const char *
dmx_conn_identity(dmx_conn *c)
{
	return atomic_load_explicit(&c->ident_now, memory_order_acquire);
}

/* params: exactly one msgpack array */
static int
is_array(const char *p, size_t len)
{
	uint8_t b;

	if (len == 0)
		return 0;
	b = (uint8_t)p[0];
	if (!((b & 0xf0) == 0x90 || b == 0xdc || b == 0xdd))
		return 0;
	return dmx_wire_one_object(p, len) == len;
}

/* Have the I/O thread write the queue soon (c->mu held). */
static void
flush_soon_locked(dmx_conn *c)
{
	if (c->oq_bytes >= c->out_limit)
		atomic_store_explicit(&c->out_full, 1, memory_order_relaxed);
	if (!c->flush_asked && !c->writing && !c->want_out) {
		c->flush_asked = 1;
		conn_attn_locked(c);
	}
}

/* [2, method, params] at the end of b, whose room the caller reserved */
static void
pack_note(dmx_buf *b, const char *method, size_t mlen, const char *params,
    size_t len)
{
	msgpack_packer pk;

	msgpack_packer_init(&pk, b, dmx_buf_pack_write);
	dmx_msg_notify_head(&pk, method, mlen);
	(void)dmx_buf_append(b, params, len);
}

int
dmx_conn_notify(dmx_conn *c, const char *method, const char *params,
    size_t len)
{
	size_t mlen = method != NULL ? strlen(method) : 0, need;
	dmx_job *j, *t;

	if (mlen == 0 || (mlen >= 2 && method[0] == '$' && method[1] == '/') ||
	    params == NULL || !is_array(params, len))
		return DEMUX_EINVAL;
	/* [2, "method", is at most 1 + 1 + 5 + mlen bytes */
	need = 7 + mlen + len;

	pthread_mutex_lock(&c->mu);
	if (c->broken || c->released) {
		pthread_mutex_unlock(&c->mu);
		return DEMUX_EGONE;
	}
	if (c->oq_bytes + need > c->out_limit) {
		c->notes_dropped++;
		pthread_mutex_unlock(&c->mu);
		atomic_fetch_add_explicit(&c->cs->stats->notes_dropped, 1,
		    memory_order_relaxed);
		return DEMUX_EFULL;
	}
	t = c->oq_tail;
	if (t != NULL && t->notice && !c->writing &&
	    dmx_buf_reserve(&t->out, need) == 0) {
		/* append to queued notifications that nobody is writing */
		size_t was = t->out.len;

		pack_note(&t->out, method, mlen, params, len);
		c->oq_bytes += t->out.len - was;
		flush_soon_locked(c);
		pthread_mutex_unlock(&c->mu);
		atomic_fetch_add_explicit(&c->cs->stats->notes, 1,
		    memory_order_relaxed);
		return 0;
	}
	pthread_mutex_unlock(&c->mu);

	j = conn_job(c);
	if (j == NULL)
		return DEMUX_EFULL;
	if (dmx_buf_reserve(&j->out, need) != 0) {
		conn_send(j);		/* empty: recycled */
		return DEMUX_EFULL;
	}
	pack_note(&j->out, method, mlen, params, len);
	j->notice = 1;
	pthread_mutex_lock(&c->mu);
	if (c->broken) {
		int last = conn_job_recycle_locked(c, j);

		pthread_mutex_unlock(&c->mu);
		if (last)
			conn_free(c);
		return DEMUX_EGONE;
	}
	j->next = NULL;
	if (c->oq_tail)
		c->oq_tail->next = j;
	else
		c->oq_head = j;
	c->oq_tail = j;
	c->oq_bytes += j->out.len;
	c->oq_n++;
	flush_soon_locked(c);
	pthread_mutex_unlock(&c->mu);
	atomic_fetch_add_explicit(&c->cs->stats->notes, 1,
	    memory_order_relaxed);
	return 0;
}
