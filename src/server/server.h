/*
 * server.h - demuxd's internal objects: the server, its connections and the
 * jobs (transactions) that flow between them and the worker pool.
 *
 * DESIGN
 *
 * One I/O thread runs an epoll loop over the listeners and every connection.
 * It reads big chunks, finds every complete frame in them (wire.h), answers
 * what it can itself (malformed requests, unknown methods, built-ins) and
 * turns each routed request into a job, copied out of the read buffer so the
 * buffer can be reused at once. All jobs of one read pass go to the pool in
 * one batch (one lock, at most one wake-up per idle worker).
 *
 * A worker runs the plugin and packs the response into the job, then sends it
 * itself: under the connection's lock it appends the job to the output queue
 * and, unless another thread is already writing, drains the whole queue with
 * writev, so replies finished at the same time leave in one syscall. Only
 * when the socket is full (EAGAIN) does the I/O thread take over with
 * EPOLLOUT. A worker therefore never blocks on a slow client, and the common
 * case needs no hand-off back to the I/O thread.
 *
 * Workers tell the I/O thread about state it must act on (write blocked,
 * reading can resume, the connection can be closed) through the attention
 * list and an eventfd; only those transitions cost a wake-up.
 *
 * Lifetime: a connection is freed by whoever drops the last claim on it: the
 * I/O thread's registration (`released`) and its jobs (`inflight`). The fds are
 * closed only then, so a worker can never write to a reused descriptor.
 *
 * Lock order: conn->mu, then srv->attn_mu. The pool's lock is never held
 * together with either.
 */
#ifndef DMX_SERVER_H
#define DMX_SERVER_H

#include <pthread.h>
#include <stdint.h>

#include <msgpack.h>

#include "../common/buf.h"
#include "../common/wire.h"
#include "config.h"
#include "gen.h"
#include "job.h"
#include "pool.h"
#include "router.h"
#include "stats.h"

typedef struct dmx_server dmx_server;
typedef struct dmx_conn dmx_conn;

/* What every epoll registration points to. */
enum dmx_ev_kind { DMX_EV_LISTEN, DMX_EV_CONN, DMX_EV_WAKE, DMX_EV_SIGNAL };
typedef struct dmx_ev {
	enum dmx_ev_kind kind;
} dmx_ev;

/* How long a draining connection with nothing in flight stays open for
 * requests its client sent before it saw $/drain (each answered -32012 "not
 * executed"), unless the client closes first. */
#define DMX_DRAIN_LINGER_MS	1000u

struct dmx_conn {
	dmx_ev		 ev;		/* first */
	dmx_server	*srv;
	int		 rfd, wfd;	/* the same fd except for --stdio */
	int		 is_sock;	/* use send(MSG_NOSIGNAL) */
	unsigned	 id;

	/* I/O thread only */
	dmx_buf		 rbuf;		/* a partial frame between reads */
	dmx_scan	 scan;
	uint32_t	 events;	/* registered with epoll */
	int		 rd_closed;	/* reading stopped for good */
	int		 discard;	/* after a fatal frame: drain input */
	size_t		 discarded;	/* bytes thrown away since */
	int		 wr_shut;	/* shutdown(SHUT_WR) done */
	int		 rbuf_pending;	/* rbuf holds frames not yet parsed */
	unsigned	 invalid;	/* $/error notices sent */
	dmx_conn	*prev, *next;	/* srv->conns */
	uint64_t	 last_active;	/* ns: last read (I/O thread) */
	uint64_t	 frame_since;	/* ns: a partial frame began; 0: none */
	int		 frame_ended;	/* a frame ended since rbuf_account */
	size_t		 rbuf_counted;	/* rbuf.cap counted in the server's
					 * memory */
	int		 mem_paused;	/* reading paused: server memory bound */

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
	int		 want_out;	/* socket full: waiting for EPOLLOUT */
	int		 broken;	/* write failed or closing: drop output */
	int		 paused;	/* reading paused for back pressure */
	unsigned	 resume_inflight; /* while paused: resume at or below */
	size_t		 resume_output;
	size_t		 resume_in_bytes;
	size_t		 in_bytes;	/* request bytes in flight (jobs) */
	int		 closing;	/* reading has stopped: close when idle */
	int		 released;	/* the I/O thread let go */
	int		 attn;		/* on srv's attention list */
	dmx_conn	*attn_next;
	unsigned	 inflight;	/* jobs not yet recycled */
	dmx_job		*free_jobs;
	dmx_job		*flight;	/* jobs taken and not yet recycled */
	dmx_job		**idtab;	/* requests in flight by msgid (chains
					 * through id_next): $/cancelRequest in
					 * O(1); grows with what is in flight */
	unsigned	 idmask, idcount;
	unsigned	 timers;	/* deadline entries that point here */
	int		 draining;	/* I/O thread: $/drain sent */
	uint64_t	 drain_idle_since; /* I/O thread: ns, draining and idle */
	int		 abandoned;	/* I/O thread: drain timed out */
};

/* Create the server for a validated configuration (taken: it belongs to
 * the first generation from now on, also on failure): the shared pool, then
 * the generation (every plugin loaded and initialised). Returns NULL with
 * "FILE:LINE:COL: ..." or another reason in err. */
dmx_server *dmx_server_new(dmx_config *cfg, char *err, size_t errlen);
/* The current generation (I/O thread, or main before dmx_server_run). */
dmx_gen *dmx_server_gen(const dmx_server *s);
/* The current generation with a reference, for another thread (/metrics);
 * drop it with dmx_gen_unref(g, 1). */
dmx_gen *dmx_server_gen_acquire(dmx_server *s);
/* Listen on every configured address; -1 with "FILE:LINE:COL: ..." in err. */
int  dmx_server_listen(dmx_server *s, char *err, size_t errlen);
/* Serve one connection on stdin/stdout; the loop ends when it closes. */
int  dmx_server_add_stdio(dmx_server *s, char *err, size_t errlen);
/* Run until SIGINT/SIGTERM (or the stdio connection ends), then finish every
 * accepted request, close everything and return 0. */
int  dmx_server_run(dmx_server *s);
/* Stop the workers, free every generation (plugins' fini, dlclose), free. */
void dmx_server_free(dmx_server *s);

/* ---- between conn.c, call.c, pool.c and server.c ---- */

/* Read what the socket has, dispatch every complete frame. (I/O thread) */
void dmx_conn_on_readable(dmx_conn *c);
/* Flush after EPOLLOUT. (I/O thread) */
void dmx_conn_on_writable(dmx_conn *c);
/* The pools' admit callback (any worker): a job whose connection already
 * holds max_output bytes of unsent replies is parked on the connection, not
 * run, until the client has read half of them. Returns 1 to run it now. */
int  dmx_conn_admit(dmx_job *j);
/* Hand a finished job to its connection for writing (or recycling, for a
 * notification). Any thread; the job belongs to the connection afterwards. */
void dmx_conn_send(dmx_job *j);
/* The same for a list of finished jobs (->next): jobs of one connection
 * that follow each other are queued together and leave in one writev. */
void dmx_conn_send_list(dmx_job *head);
/* Answer msgid with a result (len bytes of msgpack, one object) or an
 * error, from the I/O thread. */
void dmx_conn_reply(dmx_conn *c, uint32_t msgid, const void *result,
    size_t len);
void dmx_conn_reply_error(dmx_conn *c, uint32_t msgid, int64_t code,
    const char *fmt, ...) DEMUX_PRINTF(4, 5);
/* Tell a connection refused before it was served why, best effort (the
 * notification [2, "$/error", [code, why]]); the caller closes fd. */
void dmx_conn_refuse(int fd, int64_t code, const char *why);
/* Serve a $/ method (builtins.c, I/O thread): 0 with its result packed
 * into `result`, or DMX_E_NO_METHOD for a name it does not know. */
int  dmx_builtin(dmx_server *s, const char *m, uint32_t ml,
    dmx_buf *result);

/* A job's deadline passed (I/O thread): if that job (seq) is still queued
 * or running, answer -32011 and drop its result. Drops the timer's claim on
 * the connection (may free it). */
void dmx_conn_expire(dmx_conn *c, dmx_job *j, uint64_t seq,
    unsigned timeout_ms);
/* $/cancelRequest [msgid] (I/O thread): a queued request is answered
 * -32800 and never runs; a running one is flagged for demux_cancelled(). */
void dmx_conn_cancel(dmx_conn *c, uint32_t msgid);
/* Set the deadline of a job just dispatched (I/O thread). Returns 1 if the
 * job's connection gains a claim (a new timer entry points to it). */
int  dmx_server_timer_add(dmx_server *s, dmx_job *j, uint64_t at);
/* Remove a job's deadline, if it has one; returns 1 if it had (the
 * connection loses that claim). (I/O thread) */
int  dmx_server_timer_del(dmx_server *s, dmx_job *j);

/* Drain: send $/drain; from now on requests are answered -32012 and the
 * connection closes once idle. (I/O thread) */
void dmx_conn_drain(dmx_conn *c);
/* Drain timeout: answer -32012 to every request still queued or running;
 * their results, if they ever come, are dropped. (I/O thread) */
unsigned dmx_conn_abandon(dmx_conn *c);

/* The server's memory is below half its bound again. (I/O thread) */
void dmx_conn_mem_resume(dmx_conn *c);
/* Housekeeping (I/O thread): close c if a frame it began is older than
 * frame_ns, or if it has been idle idle_ns (no read, nothing running, and
 * no write progress for what it has queued). 0 disables each. Returns 1 if
 * c was closed (it may be freed). */
int  dmx_conn_check_timeouts(dmx_conn *c, uint64_t now, uint64_t idle_ns,
    uint64_t frame_ns);
/* Stop reading for good (shutdown). (I/O thread) */
void dmx_conn_stop_reading(dmx_conn *c);
/* Act on what workers reported. (I/O thread) */
void dmx_conn_attend(dmx_conn *c);
/* The I/O thread lets go of the connection; freed now or by the last job. */
void dmx_conn_release(dmx_conn *c);

/* Ask the I/O thread to attend to c. Called with c->mu held. */
void dmx_server_attn(dmx_server *s, dmx_conn *c);
/* Unregister from epoll and unlink from the connection list. (I/O thread) */
void dmx_server_forget(dmx_server *s, dmx_conn *c);

/* Accessors for conn.c */
dmx_server_stats *dmx_server_stats_get(dmx_server *s);
/* The current generation's configuration and router (I/O thread only:
 * other threads use the generation their job or reference holds). */
const dmx_config *dmx_server_config(const dmx_server *s);
const dmx_router *dmx_server_router(const dmx_server *s);
/* The shared pool (lives as long as the server). */
dmx_pool *dmx_server_pool(const dmx_server *s);
int  dmx_server_epoll_mod(dmx_server *s, dmx_conn *c, uint32_t events);
/* Large scratch buffer for reads of connections with no partial frame. */
dmx_buf *dmx_server_scratch(dmx_server *s);
int  dmx_server_stopping(const dmx_server *s);
/* Bytes of requests in flight and partial frames, all connections, against
 * max_memory. add: I/O thread; sub: any thread (a crossing below half the
 * bound wakes the I/O thread to resume connections paused for it). */
void dmx_server_mem_add(dmx_server *s, size_t n);
void dmx_server_mem_sub(dmx_server *s, size_t n);
int  dmx_server_mem_full(dmx_server *s);
/* A connection paused for the memory bound (it waits to be resumed). */
void dmx_server_mem_wait(dmx_server *s);
/* Handlers still running in any pool (after a drain timeout). */
int  dmx_server_busy_workers(dmx_server *s);

#endif
