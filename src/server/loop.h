/*
 * loop.h - the I/O thread's event loop: descriptors, the attention list,
 * the jobs' deadlines and a wake-up any thread may send.
 *
 * Everything the loop drives is a dmx_io embedded in its owner (a
 * listener, a connection, the signal descriptor). The loop knows no owner's
 * fields: it calls on_ready with the epoll events of a watched descriptor,
 * and on_attn when another thread asked for attention. Connections use it;
 * the server runs it.
 *
 * Attention is how workers hand state changes to the I/O thread without
 * taking its work: dmx_loop_attn() may be called from any thread (also with
 * the owner's lock held: lock order owner, then the loop's attn lock), costs
 * one eventfd write when the list was empty, and calls on_attn once per
 * request however many arrived before the I/O thread got to it. A request
 * made while on_attn runs is served again on the next pass.
 *
 * Threads: everything but dmx_loop_attn and dmx_loop_wake is for the I/O
 * thread only.
 */
#ifndef DMX_LOOP_H
#define DMX_LOOP_H

#include <stdint.h>

#include "../common/buf.h"
#include "job.h"

typedef struct dmx_loop dmx_loop;
typedef struct dmx_io dmx_io;

struct dmx_io {
	/* set by the owner before the first dmx_loop_watch */
	void	       (*on_ready)(dmx_io *io, uint32_t events);
	void	       (*on_attn)(dmx_io *io);	/* NULL if never asked */
	int		 rfd, wfd;	/* the same descriptor but for stdio */
	uint32_t	 events;	/* registered now (I/O thread) */
	/* the attention list (the loop's attn lock) */
	int		 attn;
	dmx_io		*attn_next;
};

/* A deadline fired: `seq` is the job's seq when it was set (a job reused
 * since has another). */
typedef void (*dmx_loop_expire_fn)(dmx_job *j, uint64_t seq,
    unsigned timeout_ms);

/* Returns NULL with a reason in err. */
dmx_loop *dmx_loop_new(dmx_loop_expire_fn expire, char *err, size_t errlen);
/* Every deadline still set fires first (each holds a claim on its owner). */
void dmx_loop_free(dmx_loop *l);

/* Make io's registration match `events` (EPOLLIN and/or EPOLLOUT, on rfd and
 * wfd respectively); 0 removes it, so that a hang-up is not reported again
 * and again while its owner does not read. Returns -1 with errno. */
int  dmx_loop_watch(dmx_loop *l, dmx_io *io, uint32_t events);
/* Ask for io->on_attn on the I/O thread. Any thread. */
void dmx_loop_attn(dmx_loop *l, dmx_io *io);
/* io goes away: forget a pending attention request. (I/O thread) */
void dmx_loop_attn_cancel(dmx_loop *l, dmx_io *io);
/* Make the current or next dmx_loop_poll return. Any thread. */
void dmx_loop_wake(dmx_loop *l);

/* A job's deadline at `at` (ns); j->route->timeout_ms is what it reports.
 * Returns 1 if a new entry points to the job (its owner gains a claim, let
 * go in the expire callback), 0 if the job's stale entry was reused, -1
 * without memory (the deadline is lost, not the job). */
int  dmx_loop_deadline_add(dmx_loop *l, dmx_job *j, uint64_t at);
/* Remove a job's deadline; 1 if it had one (its claim goes with it). */
int  dmx_loop_deadline_del(dmx_loop *l, dmx_job *j);
/* Fire every deadline due; ms until the next (>= 1), or -1 for none. */
int  dmx_loop_deadlines(dmx_loop *l);

/* Serve every attention request made so far. */
void dmx_loop_attend(dmx_loop *l);
/* Wait up to timeout_ms (-1: no limit) and dispatch every event, then the
 * attention list. Owners are only freed from on_attn (or after poll), so an
 * event later in the same batch never reaches a freed one. Returns 1 if
 * dmx_loop_wake was called, 0 otherwise, -1 on an epoll error. */
int  dmx_loop_poll(dmx_loop *l, int timeout_ms);

/* A large buffer for reads that leave nothing behind (one reader at a time:
 * the I/O thread). */
dmx_buf *dmx_loop_scratch(dmx_loop *l);

#endif
