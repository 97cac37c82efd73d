/*
 * conn.h - client connections: what the server core and the executors see
 * of them. The connection's own struct is private (conn_impl.h).
 *
 * DESIGN
 *
 * The I/O thread reads big chunks, finds every complete frame in them
 * (wire.h), answers what it can itself (malformed requests, unknown
 * methods, built-ins) and turns each routed request into a job, copied out
 * of the read buffer so the buffer can be reused at once. All jobs of one
 * read pass go to their executors in one batch.
 *
 * A worker runs the plugin and packs the response into the job; the
 * executor hands finished jobs to dmx_conn_send_list on that worker, which
 * appends them to the connection's output queue and, unless another thread
 * is already writing, drains the queue with one writev. Only when the
 * socket is full (EAGAIN) does the I/O thread take over with EPOLLOUT. A
 * worker therefore never blocks on a slow client, and the common case needs
 * no hand-off back to the I/O thread. Workers tell the I/O thread about
 * state it must act on (write blocked, reading can resume, the connection
 * can be closed) through the loop's attention list.
 *
 * Lifetime: a connection is freed by whoever drops the last claim on it:
 * the I/O thread's registration, its jobs and its deadline entries. Its
 * descriptors are closed only then, so a worker can never write to a
 * reused descriptor.
 */
#ifndef DMX_CONN_H
#define DMX_CONN_H

#include <stdint.h>

#include "../common/xport.h"
#include "gen.h"
#include "job.h"
#include "loop.h"
#include "stats.h"

typedef struct dmx_conns dmx_conns;	/* every connection of a server */
typedef struct dmx_conn dmx_conn;

/* How long a draining connection with nothing in flight stays open for
 * requests its client sent before it saw $/drain (each answered -32012 "not
 * executed"), unless the client closes first. */
#define DMX_DRAIN_LINGER_MS	1000u

/* The connections of one server: they read the generation serving now from
 * `gens`, count into `stats`, and are driven by `loop`; all three outlive
 * the set. */
dmx_conns *dmx_conns_new(dmx_loop *loop, dmx_gen_slot *gens,
    dmx_server_stats *stats);
/* Measured fast requests may run inline (inline.h; not owned). */
struct dmx_inline;
void	 dmx_conns_set_inline(dmx_conns *cs, struct dmx_inline *in);
/* Release every connection (one whose jobs still run is freed by the last
 * of them), then free the set. */
void	 dmx_conns_free(dmx_conns *cs);

/* Serve a connection over transport x (taken: freed with the connection,
 * or here on failure), whose caller is `identity` (access.h) and whose
 * peer, for the log, is `peer`; flags: DMX_CONN_ERR_STRING sends its
 * errors as "CODE: message" strings. Returns its id, or 0 with errno.
 * (I/O thread) */
#define DMX_CONN_ERR_STRING	1u
unsigned dmx_conns_add(dmx_conns *cs, dmx_xport *x, const char *identity,
    const char *peer, unsigned flags);
/* The set's one peer is demuxd (plugin-host mode): it may name the caller
 * of what it sends next with [2, "$/as", [identity]]. */
void	 dmx_conns_trust(dmx_conns *cs);
/* Connections open now. */
unsigned dmx_conns_count(const dmx_conns *cs);

/* The server-wide memory bound (max_memory) of a configuration. */
void	 dmx_conns_limits(dmx_conns *cs, const dmx_config *cfg);
/*
 * Housekeeping, once per loop pass (I/O thread): resume connections paused
 * for memory once half is free; idle_timeout_ms and frame_timeout_ms;
 * draining connections that lingered long enough. Returns ms until it must
 * run again, or -1 if nothing is pending.
 */
int	 dmx_conns_tick(dmx_conns *cs);

/* Graceful stop: send $/drain to every connection; from now on requests are
 * answered -32012 and each closes once idle. stdio: stop reading instead.
 * (I/O thread) */
void	 dmx_conns_drain(dmx_conns *cs, int stdio);
/* The drain deadline passed: answer -32012 to every request still queued or
 * running (their results, if they ever come, are dropped); returns how many.
 * (I/O thread) */
unsigned dmx_conns_abandon(dmx_conns *cs);

/* ---- hooks for the executors and the loop (any thread) ---- */

/* Asked before a job runs: a job whose connection already holds max_output
 * bytes of unsent replies is parked on it, not run, until the client has
 * read half of them. Returns 1 to run it now. */
int	 dmx_conn_admit(dmx_job *j);
/* Finished jobs (->next) to their connections, to be written (or recycled,
 * for a notification or a job answered early); they belong to their
 * connections afterwards. Jobs of one connection that follow each other
 * leave in one writev. */
void	 dmx_conn_send_list(dmx_job *head, void *unused);
/* A job's deadline passed (the loop's expire callback): if it is still
 * queued or running, answer -32011 and drop its result. */
void	 dmx_conn_expire(dmx_job *j, uint64_t seq, unsigned timeout_ms);
/* ---- peers: connections that plugins hold (conn_peer.c; any thread) ---- */

/* Take a claim on j's connection for a plugin's peer (its caller holds a
 * job of it, so it is alive). Returns 0, or -1 where plugins may not hold
 * it (plugin-host mode: the one peer is demuxd). */
int	 dmx_conn_peer_hold(dmx_conn *c);
/* Drop it; the last claim frees the connection. */
void	 dmx_conn_peer_drop(dmx_conn *c);
/* Queue [2, method, params] (params one msgpack array, copied). Returns 0,
 * DEMUX_EGONE (closed), DEMUX_EFULL (over max_output: dropped, counted) or
 * DEMUX_EINVAL. */
int	 dmx_conn_notify(dmx_conn *c, const char *method, const char *params,
	    size_t len);
/* 1 once nothing sent to it can arrive any more. */
int	 dmx_conn_gone(dmx_conn *c);
/* Its id (conns ids are never reused while the server runs). */
uint64_t dmx_conn_id(const dmx_conn *c);
/* Its identity now (valid while the claim is held). */
const char *dmx_conn_identity(dmx_conn *c);

/* Tell a peer refused before it was served why, best effort (the
 * notification [2, "$/error", [code, why]]); the caller closes fd. */
void	 dmx_conn_refuse(int fd, int64_t code, const char *why);

#endif
