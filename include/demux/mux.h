/*
 * demux/mux.h - libmux, the client library: many threads making
 * MessagePack-RPC calls at once over ONE connection.
 *
 *	mux_t *m = mux_connect("unix:/run/demux.sock", err, sizeof(err));
 *	mux_result r;
 *	if (mux_callf(m, "kv.set", &r, 1000, "ss", "key", "value") == MUX_OK)
 *		...;
 *	mux_result_free(&r);
 *	mux_free(m);
 *
 * Threads: every function except mux_free may be called from any number of
 * threads at once on the same handle, also from inside async callbacks.
 * Each call gets its own msgid; one background reader thread per connection
 * hands every response to exactly the caller that asked (a blocked thread,
 * or a callback). Callers write their own requests (several callers'
 * requests leave in one write when they coincide); a caller never blocks in
 * write(2): when the connection is full, the reader thread finishes the write.
 * A handle may hold several endpoints (mux_open), each with its own
 * connection; see docs/client.md and docs/deployment.md.
 *
 * Ownership: params passed in are copied before the call returns. A
 * mux_result is filled by the library and owned by the caller, who releases
 * it with mux_result_free() whatever the call returned; except the one an
 * async callback receives, which libmux frees when the callback returns.
 *
 * Errors: functions return MUX_OK (0) or a negative MUX_E* code; mux_strerror
 * names it. MUX_EREMOTE means the server answered with an error: its code,
 * message and trace are in the mux_result.
 */
#ifndef DEMUX_MUX_H
#define DEMUX_MUX_H

#include <stddef.h>
#include <stdint.h>

#include "protocol.h"	/* the server's error codes: mux_result.code */

#ifdef __cplusplus
extern "C" {
#endif

/* libmux is built with hidden visibility; only these names are exported. */
#define MUX_API __attribute__((visibility("default")))

/* name, value, description */
#define MUX_ERRORS(XX)							\
	XX(OK,       0,  "success")						\
	XX(EREMOTE, -1,  "the server answered with an error")		\
	XX(ECLOSED, -2,  "the handle was closed")				\
	XX(ECONN,   -3,  "connection lost; the call's effect on the server is unknown") \
	XX(ETIMEDOUT, -4, "timed out; the call's effect on the server is unknown") \
	XX(ENOMEM,  -5,  "out of memory")					\
	XX(EINVAL,  -6,  "invalid argument")				\
	XX(EPROTO,  -7,  "the server broke the protocol")		\
	XX(ETOOBIG, -8,  "message larger than the limit")			\
	XX(EDRAINING, -9, "the server is draining: not sent, safe to retry elsewhere") \
	XX(ENOTCONN, -10, "not connected: the call was not sent, safe to retry")

enum mux_err {
#define MUX_XX(name, val, desc) MUX_##name = (val),
	MUX_ERRORS(MUX_XX)
#undef MUX_XX
};

/* A static description of a MUX_* code. */
MUX_API const char *mux_strerror(int err);

/* Size of an error buffer that always holds the full reason. */
#define MUX_ERRLEN 256

typedef struct mux mux_t;

/*
 * Open a handle. Each returns the handle, or NULL with errno set and, when
 * err is not NULL, a reason in err (errlen bytes, MUX_ERRLEN is enough).
 *
 * mux_connect: "unix:PATH", "tcp:HOST:PORT" or "tcp:[IPv6]:PORT" (or a
 *   list, as for mux_open); the same as mux_open with reconnect and health
 *   checks off: once the connection breaks, calls fail with MUX_ENOTCONN.
 * mux_spawn: start argv[0] (searched in PATH) with argv as a child speaking on
 *   its stdin/stdout, e.g. {"demuxd", "--stdio", "-c", "demux.yaml", NULL};
 *   mux_free closes its pipes and reaps it.
 * mux_open_fds: use an existing pair (rfd to read, wfd to write; may be the
 *   same socket). The handle owns them from then on, also on failure.
 */
MUX_API mux_t *mux_connect(const char *uri, char *err, size_t errlen);
MUX_API mux_t *mux_spawn(char *const argv[], char *err, size_t errlen);
MUX_API mux_t *mux_open_fds(int rfd, int wfd, char *err, size_t errlen);

/*
 * Options for mux_open. Initialise with mux_options_init (later versions
 * only append fields; `size` tells the library which ones you know).
 */
typedef struct mux_options {
	size_t	size;		/* sizeof(mux_options), set by mux_options_init */
	int	reconnect;	/* 1 (default): reconnect broken endpoints in
				 * the background; 0: an endpoint that breaks
				 * stays down */
	int	backoff_min_ms;	/* first reconnect delay (default 100) */
	int	backoff_max_ms;	/* the delay doubles up to this (default 5000);
				 * each delay is jittered to 50..100 % */
	int	wait_connected;	/* a call made while no endpoint is connected:
				 * 0 (default) fails at once with MUX_ENOTCONN;
				 * 1 waits up to its timeout for one */
	int	connect_timeout_ms; /* per TCP connect attempt (default 2000) */
	int	health_interval_ms; /* ask each endpoint's $/health this often;
				 * "draining" takes it out (default 1000; 0:
				 * never, the $/drain notice still works) */
	int	completion_fd;	/* async callbacks: 0 (default) run on a libmux
				 * thread; 1 run in mux_dispatch, on your thread,
				 * when mux_completion_fd is readable */
	size_t	max_frame;	/* largest response (default 64 MiB) */
	/* a token for servers with access rules (docs/security.md): sent as
	 * $/auth [auth_name, auth_secret] on every connection, before any
	 * call; a server that refuses it fails the calls with its answer
	 * (-32015) and is not reconnected. Copied by mux_open; NULL: none */
	const char *auth_name;
	const char *auth_secret;
	/* tls:HOST:PORT endpoints: the CA that signs the servers'
	 * certificates (default: the system's), our certificate and key
	 * (PEM) if servers ask for one, and the name the server's
	 * certificate must carry (default: HOST). The certificate and the
	 * name are always verified. Copied by mux_open; NULL: the default */
	const char *tls_ca;
	const char *tls_cert;
	const char *tls_key;
	const char *tls_server_name;
	/* 1: a result of 16 KiB or more is handed over in the buffer it was
	 * read into, with no copy; res->data then points inside that
	 * buffer, so it must be released with mux_result_free only, never
	 * free()d (to keep one from an async callback take the whole struct:
	 * `*mine = *res; memset(res, 0, sizeof(*res));`). 0 (default): every
	 * res->data is a block of its own that free() also takes. */
	int	results_in_place;
} mux_options;

MUX_API void mux_options_init(mux_options *o);

/*
 * Open a handle over one or more endpoints: a comma-separated list of
 * addresses ("unix:a.sock,tcp:h2:7411"), each with its own connection. Each
 * call goes to the connected endpoint with the fewest calls in flight; one
 * that breaks is taken out and reconnected in the background; one whose
 * server drains ($/drain, or "draining" from $/health) gets nothing new.
 * A call answered -32010 (overloaded: not executed), or refused before it
 * was sent, is retried once on another endpoint; a call whose effect is
 * unknown (MUX_ECONN, MUX_ETIMEDOUT) never is.
 *
 * o may be NULL (the defaults). With reconnect on, mux_open succeeds even if
 * no endpoint answers yet; with it off, every endpoint must connect. Returns
 * NULL with a reason in err on a bad list or option.
 */
MUX_API mux_t *mux_open(const char *endpoints, const mux_options *o,
    char *err, size_t errlen);

/* A call's outcome. Fill with nothing; read after mux_call; release with
 * mux_result_free, leaving data and len as libmux set them (it finds the
 * result's memory from them; see results_in_place). */
typedef struct mux_result {
	char	*data;		/* success: the result as msgpack bytes */
	size_t	 len;
	int64_t	 code;		/* MUX_EREMOTE: the server's error code */
	char	*message;	/* MUX_EREMOTE: its message; otherwise the
				 * local reason for a failure; or NULL */
	char	*trace;		/* MUX_EREMOTE: the server's trace, or NULL */
} mux_result;

/*
 * Call `method` with `params` (len bytes of msgpack: one array; NULL/0 means
 * no arguments) and wait for the answer at most timeout_ms milliseconds
 * (<= 0: no limit). Returns MUX_OK with the result in *res, MUX_EREMOTE with
 * the server's error in *res, or a local error (MUX_ETIMEDOUT, MUX_ECONN,
 * MUX_ECLOSED, MUX_EINVAL, MUX_ENOMEM, MUX_EPROTO) with its reason in
 * res->message. A late response to a call that timed out is dropped.
 */
MUX_API int mux_call(mux_t *m, const char *method, const void *params, size_t len,
    mux_result *res, int timeout_ms);

/*
 * Cancelling a call from another thread: pass a token to mux_call_token,
 * then mux_cancel(m, &token) from any thread. The server answers a call it
 * has not started with -32800 (it never runs), and asks a running handler to
 * give up (demux_cancelled()); a result that wins the race is returned as
 * usual. A call that times out is cancelled on the server the same way.
 * Initialise with MUX_TOKEN_INIT; one call per token at a time.
 */
typedef struct mux_token {
	unsigned long long opaque;	/* accessed atomically by libmux */
} mux_token;
#define MUX_TOKEN_INIT { 0 }

MUX_API int mux_call_token(mux_t *m, const char *method, const void *params,
    size_t len, mux_result *res, int timeout_ms, mux_token *tok);
/* Returns MUX_OK if the cancel request was sent, MUX_EINVAL if the token
 * has no call in flight. */
MUX_API int mux_cancel(mux_t *m, mux_token *tok);

/* Send a notification on one connected endpoint: no answer, no wait beyond
 * handing it to the kernel (or to the reader thread when the connection is
 * full). */
MUX_API int mux_notify(mux_t *m, const char *method, const void *params, size_t len);

/*
 * Asynchronous calls. mux_call_async sends the call and returns at once:
 * MUX_OK, after which `cb` runs exactly once with the outcome; or an error
 * (the call did not start, cb never runs). cb runs on a libmux thread, or in
 * mux_dispatch with the completion_fd option; never on the caller's stack
 * inside mux_call_async and never with a libmux lock held, so it may call
 * libmux (mux_call_async, mux_call, mux_notify, mux_close; not mux_free).
 * Callbacks run one at a time, in completion order: one that blocks delays
 * the others.
 *
 * `res` belongs to libmux and is freed when cb returns; to keep a field, take
 * it and set it to NULL. The timeout counts from the call (<= 0: none); a
 * call that times out is cancelled on the server. params are copied.
 */
typedef void (*mux_callback)(void *user, int rc, mux_result *res);

MUX_API int mux_call_async(mux_t *m, const char *method, const void *params,
    size_t len, mux_callback cb, void *user, int timeout_ms);

/* The same with a cancellation token for mux_cancel (see mux_call_token).
 * tok must stay valid until cb has run; libmux clears it before cb runs, and
 * while the call waits for a connection (it is on no server then). */
MUX_API int mux_call_async_token(mux_t *m, const char *method,
    const void *params, size_t len, mux_callback cb, void *user,
    int timeout_ms, mux_token *tok);

/*
 * With the completion_fd option: an fd (owned by the handle) that polls
 * readable while callbacks are ready; then call mux_dispatch, which runs
 * them on the calling thread and returns how many ran. Without the option
 * mux_completion_fd returns -1 and mux_dispatch 0. Call mux_dispatch from
 * one thread at a time.
 */
MUX_API int mux_completion_fd(mux_t *m);
MUX_API int mux_dispatch(mux_t *m);

/*
 * Notifications from the server: plugins may send [2, method, params] on
 * their own (pubsub.message, timer.progress, ...). Every one except the
 * "$/" ones libmux handles itself reaches fn(user, method, params, len):
 * method NUL-terminated, params one msgpack array; both valid during the
 * call only. It runs where async callbacks run, with the same rules: on
 * the libmux dispatcher thread, or in mux_dispatch with the completion_fd
 * option; one at a time, in the order they arrived on their connection.
 * Set it before the calls that make the server send them (a subscribe);
 * NULL stops delivery. A notification is tied to the connection it came
 * on: after a reconnect, subscribe again.
 */
typedef void (*mux_notify_fn)(void *user, const char *method,
    const char *params, size_t len);
MUX_API void mux_set_notify(mux_t *m, mux_notify_fn fn, void *user);

/* Counters of a handle since it was opened. */
typedef struct mux_stats {
	uint64_t calls;		/* calls sent (each retry counts again) */
	uint64_t retries;	/* calls sent again on another endpoint */
	uint64_t connects;	/* connections made, the first ones included */
	uint64_t late;		/* answers to calls that had timed out */
	unsigned endpoints;	/* in the list */
	unsigned up;		/* connected and not draining */
} mux_stats;

MUX_API void mux_get_stats(mux_t *m, mux_stats *st);

/* One endpoint's state; uri stays valid until mux_free. Returns MUX_EINVAL
 * when i is past the last endpoint. */
typedef struct mux_endpoint_info {
	const char *uri;	/* as given, or "fd"/"spawn" */
	int	 connected;
	int	 draining;
	unsigned inflight;
	uint64_t calls;		/* calls sent to it */
	uint64_t connects;
	uint64_t connect_failures; /* attempts that failed (backoff between) */
	char	 why[MUX_ERRLEN]; /* while down: the last failure */
} mux_endpoint_info;

MUX_API int mux_endpoint(mux_t *m, unsigned i, mux_endpoint_info *info);

/* Release what a mux_result holds and empty it. */
MUX_API void mux_result_free(mux_result *res);

/*
 * The recipe's stop(): close every connection. Every thread waiting in
 * mux_call returns MUX_ECLOSED at once, every async call still outstanding
 * is called back with MUX_ECLOSED, and later calls fail the same way; no
 * reconnect follows. The handle stays valid (for those threads) until
 * mux_free. Safe from callbacks and more than once.
 */
MUX_API void mux_close(mux_t *m);

/* Close if needed, wait for threads still inside libmux calls to leave, run
 * the callbacks still due (completion_fd mode: on this thread), then free
 * everything (and reap a spawned child). Call once, last, never from a
 * callback. */
MUX_API void mux_free(mux_t *m);

/* Largest response accepted (default 64 MiB); a bigger one breaks its
 * connection (MUX_ECONN for the calls on it) rather than growing memory
 * without bound. */
MUX_API void mux_set_max_frame(mux_t *m, size_t bytes);

/* Nonzero while every connected endpoint is draining (it sent $/drain, or
 * $/health said "draining"): calls then fail with MUX_EDRAINING without
 * being sent; calls in flight still get answers. */
MUX_API int mux_draining(mux_t *m);

/* Responses that arrived for calls that had already timed out. */
MUX_API uint64_t mux_late_responses(mux_t *m);

/* ---- helpers: msgpack without hand-packing ---- */

/*
 * Pack values described by fmt into a new buffer (*out, *len; free(*out)).
 * One character per value:
 *   n nil          b bool (int)         i int64 (int64_t)   u uint64 (uint64_t)
 *   d double       s string (const char *, NUL-terminated)
 *   S string (const char *, size_t)     B binary (const void *, size_t)
 *   r raw msgpack, one object (const void *, size_t)
 *   [ ... ] array of the values inside  { ... } map of key/value pairs
 * Returns MUX_OK, MUX_EINVAL (bad fmt) or MUX_ENOMEM.
 */
MUX_API int mux_pack(char **out, size_t *len, const char *fmt, ...);

/* mux_call with params packed from fmt as an array: mux_callf(m, "kv.set",
 * &r, 1000, "ss", "k", "v") sends ["k", "v"]. */
MUX_API int mux_callf(mux_t *m, const char *method, mux_result *res, int timeout_ms,
    const char *fmt, ...);

/*
 * Read a result by the same format letters, storing through pointers:
 *   n (none: checks nil)  b int *   i int64_t *   u uint64_t *   d double *
 *   s/S const char **, size_t * (points into data, NOT NUL-terminated)
 *   B const void **, size_t *
 *   * skip one value     [ ... ] an array with exactly those elements
 *   { sX sY ... } a map read by key: each s takes the key's name (const
 *     char *, an argument before the value's pointers) and X is its value's
 *     format; s?X lets the key be absent (X's pointers are then left
 *     alone). Keys not named are ignored.
 * Integers convert where the value fits; d accepts integers too. Returns
 * MUX_OK or MUX_EINVAL when the data does not match fmt. E.g. for
 * {"name": "kv", "calls": 12}:
 *	mux_unpack(d, n, "{sSsi}", "name", &s, &slen, "calls", &calls)
 */
MUX_API int mux_unpack(const void *data, size_t len, const char *fmt, ...);

#ifdef __cplusplus
}
#endif

#endif
