/*
 * conn_impl.h - the connection module's own header: the connection struct
 * and what its three files share. Included by conn.c, conn_in.c and
 * conn_out.c only; everyone else sees conn.h.
 *
 *   conn.c      the set, attention, release, timeouts, deadlines, drain
 *   conn_in.c   reading, framing, dispatch to the executors, cancel
 *               (I/O thread)
 *   conn_out.c  jobs, the output queue, writing, parking, host-made
 *               replies, freeing a connection after its last claim
 *
 * They are layered too: conn.c uses conn_in.c, which uses conn_out.c; none
 * calls up.
 *
 * Lock order: c->mu, then the loop's attention lock (dmx_loop_attn). No
 * executor lock is ever taken with c->mu held: parked jobs are handed back
 * after it is dropped.
 */
#ifndef DMX_CONN_IMPL_H
#define DMX_CONN_IMPL_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "../common/buf.h"
#include "../common/wire.h"
#include "budget.h"
#include "conn.h"
#include "log.h"

struct dmx_conns {
	dmx_loop	*loop;
	dmx_gen_slot	*gens;		/* read on the I/O thread only */
	dmx_server_stats *stats;
	dmx_conn	*head;		/* I/O thread */
	unsigned	 n;		/* I/O thread */
	unsigned	 next_id;	/* I/O thread */
	uint64_t	 next_check;	/* ns: the next timeout scan */
	int		 trusted;	/* plugin-host mode: the one peer is
					 * demuxd, and may say who calls ($/as) */
	dmx_budget	 budget;	/* max_memory (atomics) */
	struct dmx_inline *inl;		/* run to completion; NULL: never */
	/* the set's own reference plus one per connection not yet freed: a
	 * connection a plugin or a late job still holds after the set is
	 * closed frees it last (conn_free) */
	_Atomic unsigned refs;
};

/*
 * A field's guard is named where it is declared. "I/O thread" fields are
 * touched only there; "mu" fields under c->mu by any thread. Two change
 * guard with the connection's phase: `released` is written under mu by
 * the I/O thread, after which only jobs and timers (under mu) reach the
 * connection; `xp` is read by the reader (I/O thread) and by whoever holds
 * `writing`, and freed only by the last claim.
 */
struct dmx_conn {
	dmx_io		 io;		/* loop registration (I/O thread) */
	dmx_conns	*cs;		/* set once */
	dmx_xport	*xp;		/* see above */
	unsigned	 id;		/* set once */

	/* I/O thread only */
	dmx_buf		 rbuf;		/* a partial frame between reads */
	dmx_scan	 scan;
	int		 rd_closed;	/* reading stopped for good */
	int		 discard;	/* after a fatal frame: drain input */
	size_t		 discarded;	/* bytes thrown away since */
	int		 wr_shut;	/* shutdown(SHUT_WR) done */
	int		 rbuf_pending;	/* rbuf holds frames not yet parsed */
	unsigned	 invalid;	/* $/error notices sent */
	dmx_conn	*prev, *next;	/* cs->head */
	uint64_t	 last_active;	/* ns: last read */
	uint64_t	 frame_since;	/* ns: a partial frame began; 0: none */
	int		 frame_ended;	/* a frame ended since rbuf_account */
	size_t		 rbuf_counted;	/* rbuf.cap counted in cs->budget */
	int		 mem_paused;	/* reading paused: server memory bound */
	int		 draining;	/* $/drain sent */
	uint64_t	 drain_idle_since; /* ns, draining and idle */
	int		 abandoned;	/* drain timed out */
	/* who calls (access.h) */
	const char	*identity;	/* the current one, in idents */
	const char *_Atomic ident_now;	/* the same, for other threads */
	struct conn_ident *idents;	/* every identity it had: a job may
					 * still point to one; freed with c */
	char		 peer[96];	/* its address, for the log */
	uint8_t		 err_string;	/* set once: errors as "CODE: message"
					 * (its listener's error_format) */
	uint64_t	 next_deadline;	/* I/O thread: plugin-host mode, the
					 * next request's ($/deadline) */
	unsigned	 auth_failures;	/* $/auth refused */
	uint8_t		*acl;		/* per route: 0 not known, 1 allowed,
					 * 2 refused; for acl_gen, identity */
	size_t		 nacl;
	const void	*acl_gen;

	/* protected by mu */
	pthread_mutex_t	 mu;
	dmx_job		*oq_head, *oq_tail; /* responses to write */
	size_t		 oq_off;	/* bytes of oq_head already written */
	size_t		 oq_bytes;	/* queued reply bytes not yet written */
	unsigned	 oq_n;		/* jobs in the output queue */
	uint64_t	 last_write;	/* ns: output blocked, or the client last
					 * made room since (want_out) */
	size_t		 out_limit;	/* max_output when last read */
	_Atomic int	 out_full;	/* oq_bytes reached out_limit, and has
					 * not yet fallen to half: workers park
					 * this connection's jobs (a hint read
					 * without mu; set and cleared under it) */
	dmx_job		*parked, *parked_tail; /* jobs held until the client
					 * reads: replies that could not be sent
					 * are not built */
	int		 writing;	/* a thread is in flush */
	int		 flush_asked;	/* notifications wait for the I/O
					 * thread to write them (conn_peer.c) */
	int		 want_out;	/* socket full: waiting for EPOLLOUT */
	int		 broken;	/* write failed or closing: drop output */
	int		 paused;	/* reading paused for back pressure */
	unsigned	 resume_inflight; /* while paused: resume at or below */
	size_t		 resume_output;
	size_t		 resume_in_bytes;
	size_t		 in_bytes;	/* request bytes in flight (jobs) */
	int		 closing;	/* reading has stopped: close when idle */
	int		 released;	/* the I/O thread let go (see above) */
	unsigned	 inflight;	/* jobs not yet recycled: claims */
	int		 pipelined;	/* I/O: once had more requests in flight
					 * than one read brought: never inline */
	unsigned	 timers;	/* deadline entries here: claims */
	unsigned	 peers;		/* plugins' references: claims */
	uint64_t	 notes_dropped;	/* notifications over max_output */
	dmx_job		*free_jobs;
	dmx_job		*flight;	/* jobs taken and not yet recycled */
	dmx_job		**idtab;	/* requests in flight by msgid (chains
					 * through id_next): $/cancelRequest in
					 * O(1); grows with what is in flight */
	unsigned	 idmask, idcount;
};

/* An identity a connection has had (a list: see dmx_conn.idents). */
struct conn_ident {
	struct conn_ident *next;
	char		 name[];
};

/* The configuration serving now (I/O thread). */
static inline const dmx_config *
conn_cfg(const dmx_conn *c)
{
	return dmx_gen_current(c->cs->gens)->cfg;
}

/* Ask the I/O thread to attend to c (c->mu held; nothing once released). */
static inline void
conn_attn_locked(dmx_conn *c)
{
	if (!c->released)
		dmx_loop_attn(c->cs->loop, &c->io);
}

/* Make c's registration match events; warns and returns -1 on failure.
 * (I/O thread) */
static inline int
conn_watch(dmx_conn *c, uint32_t events)
{
	int rc = dmx_loop_watch(c->cs->loop, &c->io, events);

	if (rc != 0)
		dmx_warn("conn %u: epoll_ctl: %s", c->id, strerror(errno));
	return rc;
}

/* ---- conn.c ---- */
/* The I/O thread lets go; c is freed now or by its last claim. */
void	conn_release(dmx_conn *c);
/* c's caller is now `identity`: 0, or -1 without memory. */
int	conn_set_identity(dmx_conn *c, const char *identity);

/* ---- conn_in.c (I/O thread) ---- */
void	conn_on_readable(dmx_conn *c);
void	conn_stop_reading(dmx_conn *c);
/* The server's memory is below half its bound again. */
void	conn_mem_resume(dmx_conn *c);
/* $/cancelRequest [msgid]: a queued request is answered -32800 and never
 * runs; a running one is flagged for demux_cancelled(). */
void	conn_cancel(dmx_conn *c, uint32_t msgid);
/* The partial-frame buffer's size into cs->budget, and frame_since. */
void	conn_rbuf_account(dmx_conn *c);

/* No claim is left once the I/O thread let go (c->mu held). */
static inline int
conn_unclaimed_locked(const dmx_conn *c)
{
	return c->released && c->inflight == 0 && c->timers == 0 &&
	    c->peers == 0 && !c->writing;
}

/* ---- conn_out.c ---- */
/* A job from c's free list, counted in flight; NULL without memory. */
dmx_job	*conn_job(dmx_conn *c);
/* Free c: its last claim has gone. */
void	conn_free(dmx_conn *c);
/* Drop a reference to the set; the last frees it. */
void	dmx_conns_unref(dmx_conns *cs);
/* c->mu held; returns 1 if the caller must conn_free(c) after unlocking. */
int	conn_job_recycle_locked(dmx_conn *c, dmx_job *j);
int	conn_flush_locked(dmx_conn *c);
void	conn_on_writable(dmx_conn *c);
/* Parked jobs once the client has read half (c->mu held), and handing
 * them back to their executors (c->mu not held). */
dmx_job	*conn_take_unparked_locked(dmx_conn *c);
void	conn_requeue(dmx_job *list);
void	conn_send(dmx_job *j);
/* Host-made answers (I/O thread). */
void	conn_reply(dmx_conn *c, uint32_t msgid, const void *result,
	    size_t len);
void	conn_reply_error(dmx_conn *c, uint32_t msgid, int64_t code,
	    const char *fmt, ...) DEMUX_PRINTF(4, 5);
/* [2, "$/error", [code, message]] for what has no msgid to answer; after
 * too many, the connection is told so and closed. */
void	conn_notice(dmx_conn *c, int64_t code, const char *fmt, ...)
	    DEMUX_PRINTF(3, 4);
/* msgid table (c->mu held) */
void	conn_id_insert_locked(dmx_conn *c, dmx_job *j);
dmx_job	*conn_id_find_locked(dmx_conn *c, uint32_t msgid);

/* $/error notices before a connection is closed */
#define CONN_MAX_INVALID 64

#endif
