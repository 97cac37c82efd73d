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
#include "router.h"
#include "stats.h"

typedef struct dmx_server dmx_server;
typedef struct dmx_conn dmx_conn;
typedef struct dmx_pool dmx_pool;

/* A job's state: who may answer it. Changed by compare-and-swap, so that a
 * result and an early answer (drain timeout) cannot both be sent. */
enum dmx_job_state {
	DMX_JOB_QUEUED = 0,	/* waiting for a worker */
	DMX_JOB_RUNNING,	/* in process_transaction */
	DMX_JOB_DONE,		/* its own answer is (being) sent */
	DMX_JOB_ANSWERED,	/* answered early: do not run / drop result */
};

/* One transaction. Owned by its connection (free list); see conn.c. */
typedef struct dmx_job {
	struct demux_call_head head;	/* first: what plugin.h's wrappers read */
	struct dmx_job	*next;		/* pool queue, output queue, free list */
	struct dmx_job	*fl_prev, *fl_next; /* conn's in-flight list (mu) */
	_Atomic int	 state;		/* enum dmx_job_state */
	uint64_t	 seq;		/* bumped on every reuse (mu) */
	_Atomic int	 cancel;	/* $/cancelRequest arrived while running */
	dmx_conn	*conn;
	const dmx_route	*route;		/* NULL for host-made replies */
	uint32_t	 msgid;
	uint8_t		 notify;	/* a notification: nothing to send */
	uint8_t		 errored;	/* an error response is in `out` */
	int64_t		 err_code;	/* its code */
	uint64_t	 t_dispatch;	/* when the I/O thread routed it (ns) */
	uint32_t	 params_off;	/* params within `in` */
	uint32_t	 params_len;
	size_t		 result_off;	/* where the result starts in `out` */
	dmx_buf		 in;		/* the request frame */
	dmx_buf		 out;		/* the response, ready to write */
	msgpack_packer	 pk;		/* writes into `out` */
} dmx_job;

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

	/* protected by mu */
	pthread_mutex_t	 mu;
	dmx_job		*oq_head, *oq_tail; /* responses to write */
	size_t		 oq_off;	/* bytes of oq_head already written */
	size_t		 oq_bytes;	/* queued reply bytes not yet written */
	int		 writing;	/* a thread is in flush */
	int		 want_out;	/* socket full: waiting for EPOLLOUT */
	int		 broken;	/* write failed or closing: drop output */
	int		 paused;	/* reading paused for back pressure */
	int		 closing;	/* reading has stopped: close when idle */
	int		 released;	/* the I/O thread let go */
	int		 attn;		/* on srv's attention list */
	dmx_conn	*attn_next;
	unsigned	 inflight;	/* jobs not yet recycled */
	dmx_job		*free_jobs;
	dmx_job		*flight;	/* jobs taken and not yet recycled */
	unsigned	 timers;	/* deadline entries that point here */
	int		 draining;	/* I/O thread: $/drain sent */
	uint64_t	 drain_idle_since; /* I/O thread: ns, draining and idle */
	int		 abandoned;	/* I/O thread: drain timed out */
};

/* Create the server from a validated config and loaded plugins (not owned:
 * they must outlive the server). Returns NULL with a reason in err. */
dmx_server *dmx_server_new(const dmx_config *cfg, const dmx_router *router,
    char *err, size_t errlen);
/* The plugins of the configuration (main's array): a reload keeps those
 * that did not change and unloads the others once idle, setting their
 * entries to NULL; the caller unloads the non-NULL ones after
 * dmx_server_free. */
void dmx_server_set_plugins(dmx_server *s, dmx_plugin **plugins, size_t n);
/* Listen on every configured address; -1 with "FILE:LINE:COL: ..." in err. */
int  dmx_server_listen(dmx_server *s, char *err, size_t errlen);
/* Serve one connection on stdin/stdout; the loop ends when it closes. */
int  dmx_server_add_stdio(dmx_server *s, char *err, size_t errlen);
/* Run until SIGINT/SIGTERM (or the stdio connection ends), then finish every
 * accepted request, close everything and return 0. */
int  dmx_server_run(dmx_server *s);
/* Stop the workers and free. Plugins are left loaded. */
void dmx_server_free(dmx_server *s);

/* ---- between conn.c, call.c, pool.c and server.c ---- */

/* Read what the socket has, dispatch every complete frame. (I/O thread) */
void dmx_conn_on_readable(dmx_conn *c);
/* Flush after EPOLLOUT. (I/O thread) */
void dmx_conn_on_writable(dmx_conn *c);
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
/* Serve a $/ method (builtins.c). (I/O thread) */
int  dmx_builtin(dmx_conn *c, int notify, uint32_t msgid, const char *m,
    uint32_t ml);		/* returns 0, or the error code it answered */

/* A job's deadline passed (I/O thread): if that job (seq) is still queued
 * or running, answer -32011 and drop its result. Drops the timer's claim on
 * the connection (may free it). */
void dmx_conn_expire(dmx_conn *c, dmx_job *j, uint64_t seq,
    unsigned timeout_ms);
/* $/cancelRequest [msgid] (I/O thread): a queued request is answered
 * -32800 and never runs; a running one is flagged for demux_cancelled(). */
void dmx_conn_cancel(dmx_conn *c, uint32_t msgid);
/* Register a deadline for a job just dispatched (I/O thread). */
void dmx_server_timer_add(dmx_server *s, dmx_conn *c, dmx_job *j,
    uint64_t at);

/* Drain: send $/drain; from now on requests are answered -32012 and the
 * connection closes once idle. (I/O thread) */
void dmx_conn_drain(dmx_conn *c);
/* Drain timeout: answer -32012 to every request still queued or running;
 * their results, if they ever come, are dropped. (I/O thread) */
unsigned dmx_conn_abandon(dmx_conn *c);

/* Stop reading for good (shutdown). (I/O thread) */
void dmx_conn_stop_reading(dmx_conn *c);
/* Act on what workers reported. (I/O thread) */
void dmx_conn_attend(dmx_conn *c);
/* The I/O thread lets go of the connection; freed now or by the last job. */
void dmx_conn_release(dmx_conn *c);

/* Run a routed job on a worker: decode, call the plugin, validate. The reply
 * is then in j->out (empty for a notification); the caller sends it. *now
 * is a recent clock reading (ns) on entry and the end time on return: jobs
 * run back to back share readings (a clock read is not free on every VM). */
void dmx_job_run(dmx_job *j, msgpack_zone *zone, uint64_t *now);
/* Make `out` hold an error response for the job's msgid. */
void dmx_job_set_error(dmx_job *j, int64_t code, const char *msg,
    const char *trace);

/* Ask the I/O thread to attend to c. Called with c->mu held. */
void dmx_server_attn(dmx_server *s, dmx_conn *c);
/* Unregister from epoll and unlink from the connection list. (I/O thread) */
void dmx_server_forget(dmx_server *s, dmx_conn *c);

/* Accessors for conn.c */
dmx_server_stats *dmx_server_stats_get(dmx_server *s);
const dmx_config *dmx_server_config(const dmx_server *s);
const dmx_router *dmx_server_router(const dmx_server *s);
dmx_pool *dmx_server_pool(const dmx_server *s);
int  dmx_server_epoll_mod(dmx_server *s, dmx_conn *c, uint32_t events);
/* Large scratch buffer for reads of connections with no partial frame. */
dmx_buf *dmx_server_scratch(dmx_server *s);
int  dmx_server_stopping(const dmx_server *s);
/* Handlers still running in any pool (after a drain timeout). */
int  dmx_server_busy_workers(dmx_server *s);

/* ---- pool.c ---- */

/* nworkers > 0: a fixed pool. 0: on-demand, one thread per job up to
 * max_threads. Returns NULL with a reason in err. */
dmx_pool *dmx_pool_new(int nworkers, int max_threads, unsigned queue_max,
    char *err, size_t errlen);
/* Queue a list of n jobs linked by ->next. Jobs past the queue bound, or in
 * on-demand mode past the thread cap (or whose thread cannot start), are not
 * run: they come back as a list in *rejected for the caller to answer
 * -32010. */
void dmx_pool_submit(dmx_pool *p, dmx_job *head, dmx_job *tail, unsigned n,
    dmx_job **rejected);
/* Run every queued job, stop the threads and free. */
void dmx_pool_free(dmx_pool *p);

/* A snapshot for $/stats. `stuck`: workers running one job for longer than
 * stuck_ms; `longest_ms`: the longest such run now. */
typedef struct dmx_pool_info {
	int		 on_demand;
	int		 workers;	/* fixed: pool size; on-demand: running */
	int		 max_threads;
	int		 busy, idle;
	unsigned	 queued;
	unsigned	 stuck;
	uint64_t	 longest_ms;
} dmx_pool_info;
void dmx_pool_info_get(dmx_pool *p, uint64_t stuck_ms, dmx_pool_info *out);
/* Workers running route rt now (or, with rt NULL, any method of pl). */
unsigned dmx_pool_running(dmx_pool *p, const dmx_route *rt,
    const dmx_plugin *pl);
/* Workers stuck (over stuck_ms) in a method of plugin pl. */
unsigned dmx_pool_stuck_in(dmx_pool *p, uint64_t stuck_ms,
    const dmx_plugin *pl);

#endif
