/*
 * demux/plugin.h - the interface between demuxd and a handler plugin.
 *
 * A plugin is a shared object that exports exactly one symbol,
 * DEMUX_PLUGIN_ENTRY (demux_plugin_entry), returning a pointer to a constant
 * descriptor (struct demux_plugin). demuxd loads it with
 * dlopen(RTLD_NOW | RTLD_LOCAL), checks `magic` and `abi_major`/`abi_minor`
 * before it reads anything else, then calls `init` once with a host table
 * (struct demux_host) and routes every method "<plugin>.<method>" listed in
 * `methods` to `process_transaction`, on pooled worker threads.
 *
 * Rules that keep old plugins loading in new hosts and the other way round:
 *   - Both structs begin with a size field and only ever grow at the end.
 *     A host reads a descriptor field only if the plugin's `size` covers it;
 *     a plugin calls a host function only if DEMUX_HOST_HAS() says it exists.
 *   - abi_major changes only when an existing field changes meaning; the host
 *     refuses any other major. abi_minor grows with appended fields; the host
 *     refuses a plugin built against a newer minor than it provides.
 *   - A plugin never resolves symbols from the executable: everything the host
 *     offers comes through the table, so plugins link with -Wl,--no-undefined
 *     and build with -fvisibility=hidden (see DEMUX_EXPORT).
 *
 * Threads: process_transaction runs concurrently on many workers with the
 * same `state`; the plugin protects shared state itself. init and fini run
 * alone, on the main thread, before the first and after the last transaction.
 *
 * Params and result are MessagePack (msgpack-c 4.x, Debian libmsgpack-dev).
 */
#ifndef DEMUX_PLUGIN_H
#define DEMUX_PLUGIN_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <msgpack.h>

#include "protocol.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DEMUX_PLUGIN_MAGIC	0x444d5850u	/* "DMXP" */
#define DEMUX_ABI_MAJOR		1
#define DEMUX_ABI_MINOR		6	/* 1.1: demux_host.cancelled
					 * 1.2: demux_request.identity
					 * 1.3: demux_host.deadline
					 * 1.4: params, config_get
					 * 1.5: deferred replies, peers
					 * 1.6: declare_methods, watch_file,
					 *      catch-all "*" */

#define DEMUX_PLUGIN_ENTRY	demux_plugin_entry
#define DEMUX_PLUGIN_ENTRY_NAME	"demux_plugin_entry"

#define DEMUX_EXPORT		__attribute__((visibility("default")))

#if defined(__GNUC__)
#define DEMUX_PRINTF(f, a)	__attribute__((format(printf, f, a)))
#else
#define DEMUX_PRINTF(f, a)
#endif

/* Log levels for demux_host.log. */
enum demux_log_level {
	DEMUX_LOG_ERROR = 0,
	DEMUX_LOG_WARN  = 1,
	DEMUX_LOG_INFO  = 2,
	DEMUX_LOG_DEBUG = 3,
};

/* Protocol error codes (demux/protocol.h). Besides its own (>= 1), a plugin
 * may answer DEMUX_E_INVALID_PARAMS, DEMUX_E_INTERNAL and DEMUX_E_CANCELLED
 * (give up after demux_cancelled()); the host answers the others. */

/* One transaction in progress. Opaque; valid only during process_transaction. */
typedef struct demux_call demux_call;

/* One transaction's request, read-only, valid during process_transaction. */
typedef struct demux_request {
	uint32_t	size;		/* sizeof(demux_request) in the host */
	uint32_t	msgid;		/* the client's xid (0 for notifications) */
	int		notification;	/* nonzero: no response will be sent */
	int		method_index;	/* index into demux_plugin.methods */
	const char     *method;		/* full name, "echo.echo", NUL-terminated */
	const msgpack_object *params;	/* decoded params; always an array */
	const char     *raw;		/* params as msgpack bytes */
	size_t		raw_len;
	/* ABI 1.2: who calls: "unix:USER", "cert:CN", "token:NAME" or
	 * "anonymous" (docs/security.md); valid during the call. Read it only
	 * if size > offsetof(demux_request, identity): demux_identity(). */
	const char     *identity;
} demux_request;

/* The caller's identity, or NULL from a host older than ABI 1.2. */
static inline const char *
demux_identity(const demux_request *req)
{
	return req->size > offsetof(demux_request, identity) ?
	    req->identity : NULL;
}

/*
 * The host table: handed to init, valid until fini returns. One per plugin
 * instance. Every function may be called from any thread.
 */
typedef struct demux_host {
	uint32_t	size;		/* sizeof(demux_host) in the host */
	uint16_t	abi_major;
	uint16_t	abi_minor;
	const char     *name;		/* this plugin's name (routing prefix) */
	const char     *path;		/* the .so as configured */

	/* The plugin's `config:` subtree from the YAML, converted to msgpack:
	 * mappings become maps, sequences arrays, plain scalars nil, booleans,
	 * integers, floats or strings by their YAML 1.1 form, quoted scalars
	 * strings. NULL / 0 when the YAML has no config for the plugin. Owned by
	 * the host. */
	const msgpack_object *config;
	const char     *config_raw;
	size_t		config_len;

	/* Write one line to demuxd's log, tagged with the plugin's name. */
	void (*log)(const struct demux_host *h, int level, const char *fmt, ...)
	    DEMUX_PRINTF(3, 4);
	void (*vlog)(const struct demux_host *h, int level, const char *fmt,
	    va_list ap);

	/*
	 * The result packer: pack exactly ONE msgpack object (use an array or map
	 * for several values). The host validates that exactly one complete object
	 * was packed and answers -32603 otherwise. Not calling it, nor setting an
	 * error, answers nil. Valid until process_transaction returns.
	 */
	msgpack_packer *(*result)(demux_call *c);

	/* Answer with an error instead of the result (discarding anything packed).
	 * code: >= 1 for the plugin's own errors, or DEMUX_E_INVALID_PARAMS /
	 * DEMUX_E_INTERNAL. `trace` (may be NULL) is sent as the third element. */
	void (*error)(demux_call *c, int64_t code, const char *trace,
	    const char *fmt, va_list ap);
	/* Like error, with the backtrace of the calling thread as trace. */
	void (*error_bt)(demux_call *c, int64_t code, const char *fmt,
	    va_list ap);

	/* ---- ABI 1.1 ---- */

	/* Nonzero once the answer is no longer wanted: the client cancelled
	 * this call ($/cancelRequest), or its deadline (timeout_ms) passed
	 * and the client was answered -32011. A long handler may check it
	 * and give up with demux_error(call, DEMUX_E_CANCELLED, ...); a
	 * result it returns anyway is delivered if it won the race. */
	int (*cancelled)(demux_call *c);

	/* ---- ABI 1.3 ---- */

	/* When this call's deadline passes: CLOCK_MONOTONIC in nanoseconds,
	 * or 0 if it has none (no timeout_ms). See demux_time_left_ms(). */
	uint64_t (*deadline)(demux_call *c);

	/* ---- ABI 1.4: reading params and config (use the wrappers below:
	 * demux_params, demux_config_*) ---- */

	int (*params)(demux_call *c, const char *fmt, va_list ap);
	int (*config_get)(const struct demux_host *h, const char *key,
	    char kind, void *out, char *err, size_t errlen);
	/* ---- ABI 1.5: deferred replies and notifications to clients (use
	 * the wrappers below: demux_defer, demux_deferred_*, demux_peer_*) */
	struct demux_deferred *(*defer)(demux_call *c);
	msgpack_packer *(*deferred_result)(struct demux_deferred *d);
	void (*deferred_error)(struct demux_deferred *d, int64_t code,
	    const char *trace, const char *fmt, va_list ap);
	void (*deferred_finish)(struct demux_deferred *d);
	int (*deferred_cancelled)(struct demux_deferred *d);
	struct demux_peer *(*call_peer)(demux_call *c);
	struct demux_peer *(*deferred_peer)(struct demux_deferred *d);
	int (*peer_notify)(struct demux_peer *p, const char *method,
	    const char *params, size_t len);
	int (*peer_closed)(struct demux_peer *p);
	const char *(*peer_identity)(struct demux_peer *p);
	void (*peer_release)(struct demux_peer *p);
	uint64_t (*peer_id)(struct demux_peer *p);
	/* ---- ABI 1.6: plugins that learn their methods at init (use
	 * demux_declare_methods, demux_watch_file) ---- */
	int (*declare_methods)(const struct demux_host *h,
	    const char *const *names, char *err, size_t errlen);
	int (*watch_file)(const struct demux_host *h, const char *path);
	/* the YAML file that configured this plugin: a path in `config:`
	 * is relative to its folder (demux_config_path) */
	const char     *config_file;
} demux_host;

/* True if the host provides function `fn` (a field of demux_host). */
#define DEMUX_HOST_HAS(h, fn)						\
	((h)->size >= offsetof(demux_host, fn) + sizeof((h)->fn) &&	\
	 (h)->fn != NULL)

/*
 * The descriptor a plugin returns from DEMUX_PLUGIN_ENTRY. Static, constant,
 * owned by the plugin. Append-only.
 */
typedef struct demux_plugin {
	uint32_t	magic;		/* DEMUX_PLUGIN_MAGIC */
	uint16_t	abi_major;	/* DEMUX_ABI_MAJOR the plugin was built for */
	uint16_t	abi_minor;	/* DEMUX_ABI_MINOR the plugin was built for */
	uint32_t	size;		/* sizeof(demux_plugin) */
	const char     *name;		/* default routing prefix, e.g. "echo" */
	const char     *version;	/* the plugin's own version, e.g. "1.0.0" */
	const char *const *methods;	/* NULL-terminated; names after the dot.
					 * "*" catches every <plugin>.<name>
					 * not otherwise served (ABI 1.6); an
					 * empty list ({ NULL }, ABI 1.6): init
					 * declares them (demux_declare_methods) */

	/*
	 * Optional. Called once before any transaction. Set *state to whatever
	 * process_transaction and fini should receive. On failure return nonzero
	 * and write a reason into err (errlen bytes); demuxd then reports it and
	 * does not start. The host table stays valid until fini returns.
	 */
	int  (*init)(const demux_host *host, void **state, char *err,
	    size_t errlen);
	/* Optional. Called once after the last transaction has finished. */
	void (*fini)(void *state);
	/* Required. Handle one request or notification; see demux_host.result
	 * and demux_host.error for how to answer. */
	void (*process_transaction)(void *state, const demux_request *req,
	    demux_call *call);
} demux_plugin;

/* Initialise a descriptor's header fields. */
#define DEMUX_PLUGIN_HEADER						\
	.magic = DEMUX_PLUGIN_MAGIC, .abi_major = DEMUX_ABI_MAJOR,	\
	.abi_minor = DEMUX_ABI_MINOR, .size = sizeof(demux_plugin)

/* The entry point every plugin defines (declared here so that the compiler
 * checks each plugin's definition against it). */
typedef const demux_plugin *(*demux_plugin_entry_fn)(void);
DEMUX_EXPORT const demux_plugin *DEMUX_PLUGIN_ENTRY(void);

/*
 * Convenience wrappers for the plugin side. A call handle begins with the host
 * table pointer, so these reach the host without resolving host symbols.
 */
struct demux_call_head {
	const demux_host *host;
};

static inline msgpack_packer *
demux_result(demux_call *c)
{
	return ((struct demux_call_head *)c)->host->result(c);
}

static inline void DEMUX_PRINTF(3, 4)
demux_error(demux_call *c, int64_t code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	((struct demux_call_head *)c)->host->error(c, code, NULL, fmt, ap);
	va_end(ap);
}

static inline void DEMUX_PRINTF(4, 5)
demux_error_trace(demux_call *c, int64_t code, const char *trace,
    const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	((struct demux_call_head *)c)->host->error(c, code, trace, fmt, ap);
	va_end(ap);
}

/* demux_host.cancelled, or 0 on a host older than ABI 1.1. */
static inline int
demux_cancelled(demux_call *c)
{
	const demux_host *h = ((struct demux_call_head *)c)->host;

	return DEMUX_HOST_HAS(h, cancelled) ? h->cancelled(c) : 0;
}

/* demux_host.deadline: CLOCK_MONOTONIC ns, or 0 for none (also on a host
 * older than ABI 1.3). */
static inline uint64_t
demux_deadline(demux_call *c)
{
	const demux_host *h = ((struct demux_call_head *)c)->host;

	return DEMUX_HOST_HAS(h, deadline) ? h->deadline(c) : 0;
}

/* Milliseconds until the deadline (0 once it passed), or -1 without one:
 * what a handler waiting on something else may pass on as its timeout. */
static inline int64_t
demux_time_left_ms(demux_call *c)
{
	uint64_t at = demux_deadline(c), now;
	struct timespec ts;

	if (at == 0)
		return -1;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
	return at > now ? (int64_t)((at - now) / 1000000u) : 0;
}

/*
 * demux_params(call, fmt, ...): read the call's params by a format, or
 * answer -32602 naming the parameter. Returns 0, or -1 once the error is
 * set (return from process_transaction then). fmt is space-separated
 * NAME:TYPE items, one per parameter, in order:
 *
 *   b  int *                    i  int64_t *      u  uint64_t *
 *   d  double * (ints too)      s  const char **, size_t * (a string)
 *   B  const void **, size_t * (binary, or a string)
 *   a  const msgpack_object ** (an array)   m  ... (a map)   o  ... (any)
 *
 * i and u may carry a range, i(1..100); a ? after the type makes that
 * parameter optional (it and every one after it may be absent; an absent
 * one's pointers are left alone). More params than items is an error.
 * Strings and objects point into the request: valid during the call.
 *
 *	int64_t ms;
 *	if (demux_params(call, "ms:i(0..60000)", &ms) != 0)
 *		return;		// answered: "sleep.sleep: parameter 1 (ms)
 *				// must be from 0 to 60000, got -5"
 */
static inline int
demux_params(demux_call *c, const char *fmt, ...)
{
	const demux_host *h = ((struct demux_call_head *)c)->host;
	va_list ap;
	int rc;

	if (!DEMUX_HOST_HAS(h, params)) {
		demux_error(c, DEMUX_E_INTERNAL, "this demuxd is older than "
		    "plugin ABI 1.4: no demux_params");
		return -1;
	}
	va_start(ap, fmt);
	rc = h->params(c, fmt, ap);
	va_end(ap);
	return rc;
}

/*
 * Config getters, for init: a top-level key of the plugin's `config:` map.
 * Each returns 0 with *out set (to dflt when the key is absent), or -1 with
 * a reason in err naming the key and what was expected — init may return
 * it as it is. Sizes take 65536 or "64KiB" (K, M, G: powers of 1024) and
 * durations 500 or "500ms", "2s", "5m", "1h", as demuxd's own keys do.
 * demux_config_str's string is NUL-terminated and lives until fini.
 * demux_config_keys(h, "capacity max_input", ...) refuses a key that is
 * not in the list (a typo would otherwise be ignored).
 */
static inline int
demux_config__get(const demux_host *h, const char *key, char kind,
    void *out, char *err, size_t errlen)
{
	if (!DEMUX_HOST_HAS(h, config_get)) {
		snprintf(err, errlen, "this demuxd is older than plugin ABI "
		    "1.4: no demux_config_*");
		return -1;
	}
	/* the host says 1 (found) or 0 (absent: *out keeps dflt) */
	return h->config_get(h, key, kind, out, err, errlen) < 0 ? -1 : 0;
}

static inline int
demux_config_int(const demux_host *h, const char *key, int64_t dflt,
    int64_t *out, char *err, size_t errlen)
{
	*out = dflt;
	return demux_config__get(h, key, 'i', out, err, errlen);
}

static inline int
demux_config_uint(const demux_host *h, const char *key, uint64_t dflt,
    uint64_t *out, char *err, size_t errlen)
{
	*out = dflt;
	return demux_config__get(h, key, 'u', out, err, errlen);
}

static inline int
demux_config_size(const demux_host *h, const char *key, uint64_t dflt,
    uint64_t *out, char *err, size_t errlen)
{
	*out = dflt;
	return demux_config__get(h, key, 'z', out, err, errlen);
}

static inline int
demux_config_ms(const demux_host *h, const char *key, uint64_t dflt,
    uint64_t *out, char *err, size_t errlen)
{
	*out = dflt;
	return demux_config__get(h, key, 't', out, err, errlen);
}

static inline int
demux_config_bool(const demux_host *h, const char *key, int dflt, int *out,
    char *err, size_t errlen)
{
	*out = dflt;
	return demux_config__get(h, key, 'b', out, err, errlen);
}

static inline int
demux_config_double(const demux_host *h, const char *key, double dflt,
    double *out, char *err, size_t errlen)
{
	*out = dflt;
	return demux_config__get(h, key, 'd', out, err, errlen);
}

static inline int
demux_config_str(const demux_host *h, const char *key, const char *dflt,
    const char **out, char *err, size_t errlen)
{
	*out = dflt;
	return demux_config__get(h, key, 's', (void *)out, err, errlen);
}

static inline int
demux_config_keys(const demux_host *h, const char *allowed, char *err,
    size_t errlen)
{
	return demux_config__get(h, allowed, 'k', NULL, err, errlen);
}

/* One-line answers: the result is one value. */
static inline void
demux_reply_nil(demux_call *c)
{
	msgpack_pack_nil(demux_result(c));
}

static inline void
demux_reply_bool(demux_call *c, int v)
{
	if (v)
		msgpack_pack_true(demux_result(c));
	else
		msgpack_pack_false(demux_result(c));
}

static inline void
demux_reply_int(demux_call *c, int64_t v)
{
	msgpack_pack_int64(demux_result(c), v);
}

static inline void
demux_reply_uint(demux_call *c, uint64_t v)
{
	msgpack_pack_uint64(demux_result(c), v);
}

static inline void
demux_reply_double(demux_call *c, double v)
{
	msgpack_pack_double(demux_result(c), v);
}

/* s[0..len) as a string; demux_reply_cstr for a NUL-terminated one. */
static inline void
demux_reply_str(demux_call *c, const char *s, size_t len)
{
	msgpack_packer *pk = demux_result(c);

	msgpack_pack_str(pk, len);
	msgpack_pack_str_body(pk, s, len);
}

static inline void
demux_reply_cstr(demux_call *c, const char *s)
{
	demux_reply_str(c, s, strlen(s));
}

static inline void
demux_reply_bin(demux_call *c, const void *p, size_t len)
{
	msgpack_packer *pk = demux_result(c);

	msgpack_pack_bin(pk, len);
	msgpack_pack_bin_body(pk, p, len);
}

/* A msgpack object as it is (a param, say). */
static inline void
demux_reply_object(demux_call *c, const msgpack_object *o)
{
	msgpack_pack_object(demux_result(c), *o);
}

static inline void DEMUX_PRINTF(3, 4)
demux_error_bt(demux_call *c, int64_t code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	((struct demux_call_head *)c)->host->error_bt(c, code, fmt, ap);
	va_end(ap);
}

/*
 * ---- ABI 1.5: deferred replies ----
 *
 * A handler that waits on something (a timer, another service, an event)
 * need not hold its worker: inside process_transaction it calls
 *
 *	demux_deferred *d = demux_defer(call);
 *
 * and returns; the call stays open, and the worker serves others. Later,
 * from any thread, it packs the answer with demux_deferred_result(d) (one
 * msgpack object, as demux_result) or sets demux_deferred_error(d, ...),
 * and sends it with demux_deferred_finish(d), exactly once, which also
 * releases d. Until then d is valid whatever the client does: once the
 * answer can no longer be delivered or wanted (the client cancelled it,
 * its deadline passed and -32011 went out, the connection closed, or
 * demuxd is draining past drain_timeout_ms) demux_deferred_cancelled(d)
 * says so, and finish drops the answer. An open deferred call counts as in
 * flight everywhere (max_inflight, drain, deadlines, $/stats), and keeps
 * the plugin's code loaded across a reload until it is finished.
 *
 * demux_defer returns NULL on a host older than ABI 1.5 (answer directly).
 * Calling it twice returns the same d. After demux_defer, the call's own
 * demux_result/demux_error are not used: answer through d. For a
 * notification (req->notification) finish sends nothing.
 */
typedef struct demux_deferred demux_deferred;

static inline demux_deferred *
demux_defer(demux_call *c)
{
	const demux_host *h = ((struct demux_call_head *)c)->host;
	return DEMUX_HOST_HAS(h, defer) ? h->defer(c) : NULL;
}

static inline msgpack_packer *
demux_deferred_result(demux_deferred *d)
{
	return ((struct demux_call_head *)d)->host->deferred_result(d);
}

static inline void DEMUX_PRINTF(3, 4)
demux_deferred_error(demux_deferred *d, int64_t code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	((struct demux_call_head *)d)->host->deferred_error(d, code, NULL,
	    fmt, ap);
	va_end(ap);
}

static inline void
demux_deferred_finish(demux_deferred *d)
{
	((struct demux_call_head *)d)->host->deferred_finish(d);
}

static inline int
demux_deferred_cancelled(demux_deferred *d)
{
	return ((struct demux_call_head *)d)->host->deferred_cancelled(d);
}

/*
 * ---- ABI 1.5: notifications to clients ----
 *
 * demux_call_peer(call) (during process_transaction) and
 * demux_deferred_peer(d) (until finish) return a counted reference to the
 * connection the call came from: the caller owns it, may use it from any
 * thread and for as long as it likes, also after the call and the
 * connection have ended, and gives it back with demux_peer_release(p).
 * NULL without memory, or where the connection cannot be reached from the
 * plugin (isolation: process; see docs/plugins.md).
 *
 * demux_peer_notify(p, method, params, len) queues [2, method, params] on
 * it (params: one msgpack array, copied) and returns 0; DEMUX_EGONE once
 * the connection has closed (demux_peer_closed(p) then says 1 too), or
 * DEMUX_EFULL when its unsent output is over max_output: the notification
 * is dropped, never queued without bound. DEMUX_EINVAL for a method that
 * is empty or begins with "$/", or params that are not one array.
 * demux_peer_identity(p): the connection's identity now, as
 * demux_identity() says it ("unix:alice", ...), valid until release.
 * demux_peer_id(p): a number naming the connection, never reused while
 * demuxd runs: two peers of one connection have the same (a plugin keeps
 * per-connection state by it, e.g. a subscriber's topics).
 */
typedef struct demux_peer demux_peer;

#define DEMUX_EGONE	(-1)
#define DEMUX_EFULL	(-2)
#define DEMUX_EINVAL	(-3)

static inline demux_peer *
demux_call_peer(demux_call *c)
{
	const demux_host *h = ((struct demux_call_head *)c)->host;
	return DEMUX_HOST_HAS(h, call_peer) ? h->call_peer(c) : NULL;
}

static inline demux_peer *
demux_deferred_peer(demux_deferred *d)
{
	return ((struct demux_call_head *)d)->host->deferred_peer(d);
}

static inline int
demux_peer_notify(demux_peer *p, const char *method, const char *params,
    size_t len)
{
	return ((struct demux_call_head *)p)->host->peer_notify(p, method,
	    params, len);
}

static inline int
demux_peer_closed(demux_peer *p)
{
	return ((struct demux_call_head *)p)->host->peer_closed(p);
}

static inline const char *
demux_peer_identity(demux_peer *p)
{
	return ((struct demux_call_head *)p)->host->peer_identity(p);
}

static inline uint64_t
demux_peer_id(demux_peer *p)
{
	return ((struct demux_call_head *)p)->host->peer_id(p);
}

static inline void
demux_peer_release(demux_peer *p)
{
	if (p != NULL)
		((struct demux_call_head *)p)->host->peer_release(p);
}

/*
 * ---- ABI 1.6: methods known only at init ----
 *
 * A plugin that hosts other code (the python plugin imports a module)
 * learns its methods in init. Its descriptor lists none ({ NULL }) and
 * init calls demux_declare_methods(host, names, err, errlen) once, with a
 * NULL-terminated list of names after the dot, as the descriptor would
 * have; "*" among them catches every "<plugin>.<name>" no other name
 * serves (req->method is then the name called, and method_index the
 * index of "*"). Returns 0, or -1 with the reason in err (init returns
 * it). Only during init.
 *
 * demux_watch_file(host, path): a reload (SIGHUP) loads the plugin anew,
 * in a new instance, when this file has changed since init (its size,
 * mtime or inode), as it does when its .so or its config changes. Any
 * number of files, during init. Returns 0, or -1 (no such file).
 */
static inline int
demux_declare_methods(const demux_host *h, const char *const *names,
    char *err, size_t errlen)
{
	if (!DEMUX_HOST_HAS(h, declare_methods)) {
		snprintf(err, errlen, "this demuxd is older than plugin ABI "
		    "1.6: methods cannot be declared at init");
		return -1;
	}
	return h->declare_methods(h, names, err, errlen);
}

/* The folder of the YAML file that configured the plugin ("." from a host
 * older than ABI 1.6), for resolving relative paths in its config. */
static inline void
demux_config_dir(const demux_host *h, char *buf, size_t len)
{
	const char *f = h->size > offsetof(demux_host, config_file) ?
	    h->config_file : NULL, *slash = f ? strrchr(f, '/') : NULL;

	if (slash == NULL)
		snprintf(buf, len, ".");
	else
		snprintf(buf, len, "%.*s", (int)(slash - f), f);
}

static inline int
demux_watch_file(const demux_host *h, const char *path)
{
	return DEMUX_HOST_HAS(h, watch_file) ? h->watch_file(h, path) : -1;
}

#ifdef __cplusplus
}
#endif

#endif
