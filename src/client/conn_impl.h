/*
 * conn_impl.h - the libmux connection's own header: its struct and what
 * conn.c (calls, the table, writing, opening and closing) and conn_read.c
 * (the reader thread) share. Nobody else includes it: the rest of libmux
 * sees conn.h. See conn.c for the design and the locks.
 */
#ifndef MC_CONN_IMPL_H
#define MC_CONN_IMPL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "../common/buf.h"
#include "../common/wire.h"
#include "../common/xport.h"
#include "conn.h"

#define READ_CHUNK	(256u << 10)

enum mc_state { MC_OPEN, MC_CLOSED, MC_BROKEN };

/* Who reads the transport (c->rd): one thread at a time, the holder of
 * this token. MC_RD_POLL is the reader thread asleep in poll: a caller may
 * take the token from it then, never while it reads (MC_RD_THREAD). */
enum mc_rd { MC_RD_FREE, MC_RD_POLL, MC_RD_THREAD, MC_RD_CALLER };

/* How long the reader thread, while a caller reads, waits before it looks
 * whether nobody does any more and it should watch the idle connection. */
#define MC_IDLE_WATCH_MS 10

/* mc_call.done: bits, and above them a count of wakers in flight */
#define MC_DONE	 1u		/* answered, failed or timed out */
#define MC_LEAD	 2u		/* the read token was handed to this caller */
#define MC_SLEEP 4u		/* the caller has slept on the word */
#define MC_WAKER 256u		/* one thread set DONE or LEAD and has yet
				 * to finish its FUTEX_WAKE */

struct mc_conn {
	dmx_xport	*xp;		/* owns the descriptors */
	pid_t		 child;		/* mux_spawn, else 0 */
	int		 wakefd;	/* eventfd: wake the reader */
	_Atomic size_t	 max_frame;
	_Atomic int	 refs;
	mc_event_fn	 on_stop;
	void		*arg;
	_Atomic(mc_note_fn) note_fn;	/* mc_set_notify */
	void *_Atomic	 note_arg;

	pthread_mutex_t	 mu;		/* table, heap, state, dead list */
	pthread_mutex_t	 wmu;		/* the write buffers; taken before mu */
	_Atomic int	 state;		/* enum mc_state; written under mu */
	char		 why[MUX_ERRLEN]; /* mu: reason for BROKEN */
	uint32_t	 next_id;	/* mu */
	mc_call		**buckets;	/* mu: power-of-two hash table */
	size_t		 nbuckets;	/* mu */
	_Atomic unsigned npending;	/* written under mu, read anywhere */
	mc_call		**heap;		/* mu: async deadlines, min-heap */
	size_t		 nheap, heapcap; /* mu */
	_Atomic uint64_t next_dl;	/* heap[0]'s deadline, 0: none;
					 * written under mu, read anywhere */
	mc_call		*dead;		/* mu: async calls failed, to complete */
	dmx_buf		 wbuf;		/* wmu: requests not yet being written */
	dmx_buf		 wcur;		/* owned by the writer (writing=1) */
	size_t		 wcur_off;	/* owned by the writer */
	uint64_t	 wcur_start;	/* stream offset of wcur.data[0] */
	uint64_t	 queued;	/* wmu: bytes ever queued */
	_Atomic uint64_t attempted;	/* bytes ever passed to write(2) */
	int		 writing;	/* wmu: a thread owns wcur */
	int		 want_out;	/* wmu: the reader must finish the write */
	_Atomic uint64_t late;		/* responses nobody waited for */
	_Atomic int	 draining;	/* the server sent $/drain (set under mu) */
	int		 wr_shut;	/* mu: we half-closed after the drain */

	/* reading (see "Leader and followers" in conn.c) */
	_Atomic int	 rd;		/* enum mc_rd; to FREE only under mu */
	int		 lwake;		/* eventfd: wake the caller reading */
	_Atomic unsigned nasync;	/* async calls in flight (mu) */
	_Atomic int	 keep_reader;	/* mc_keep_reader */
	mc_call		*followers;	/* mu: sync callers asleep, waiting */
	mc_call *_Atomic adone;		/* mu: async calls a caller read the
					 * answer of, for the reader thread */
	dmx_buf		 rb;		/* the token holder's: bytes read */
	unsigned	 rb_gen;	/* the token holder's: rb handed over */
	int		 rb_sized;	/* ... and rb sized for one frame */
	_Atomic int	 in_place;	/* results_in_place */
	dmx_scan	 sc;		/* the token holder's: framing state */
};

/* ---- conn.c: c->mu held unless said ---- */
void	 mc_wake_reader(mc_conn *c);			/* no lock needed */
mc_call	**mc_table_find(mc_conn *c, uint32_t id);
/* Unlink *pp from the table (and the heap); returns it. */
mc_call	*mc_table_remove(mc_conn *c, mc_call **pp);
/* After a $/drain, half-close once nothing is in flight. */
void	 mc_drain_done(mc_conn *c);
/* A sync caller is woken now; an async one goes on *list. */
void	 mc_finish(mc_conn *c, mc_call *p, int rc, mc_call **list);
/* Complete a sync call (mu held) without waking it: returns the futex word
 * to wake once mu is released (NULL: no need), so that no wake-up
 * syscall runs under the lock every caller takes. The word may belong to a
 * call that has returned by then: a spurious wake at worst. */
_Atomic uint32_t *mc_finish_sync(mc_conn *c, mc_call *p);
void	 mc_futex_wake(_Atomic uint32_t *w);
/* The time left until the CLOCK_MONOTONIC deadline *dl, in *rel: 0, or -1
 * once it has passed. */
int	 mc_time_left(const struct timespec *dl, struct timespec *rel);
/* on_done for every call on a list (no lock held). */
void	 mc_run_done(mc_call *list);
/* The connection is unusable: fail every call in flight. */
void	 mc_set_broken(mc_conn *c, const char *fmt, ...)
	    __attribute__((format(printf, 2, 3)));
/* Write what is queued (c->wmu held, not mu). */
void	 mc_flush_locked(mc_conn *c);
/* A call whose time ran out: drop its request if unsent, else cancel. */
void	 mc_withdraw_or_cancel(mc_conn *c, mc_call *p);

/* Wake the caller that holds the read token, if one does. */
void	 mc_wake_leader(mc_conn *c);			/* no lock needed */

/* ---- conn_read.c ---- */
void	*mc_reader_main(void *arg);
/* The calling thread holds the read token (rd == MC_RD_CALLER): read and
 * complete answers until p's is among them (returns 0), or *dl passes
 * (returns 1; p is still in the table). No lock held. */
int	 mc_lead(mc_conn *c, mc_call *p, const struct timespec *dl);

#endif
