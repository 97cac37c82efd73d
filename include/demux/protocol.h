/*
 * demux/protocol.h - the error codes of the demux MessagePack-RPC protocol,
 * listed once: demuxd, libmux (mux.h) and plugins (plugin.h) all take them
 * from here. docs/protocol.md explains each in full.
 *
 * An error response is [1, msgid, [code, message(, trace)], nil]. Codes >= 1
 * belong to plugins; the negative ones below belong to the protocol.
 *
 * Retry safety says what a client may do with a call that got the code:
 *   DEMUX_RETRY_SAFE     not executed: send it again, elsewhere
 *   DEMUX_RETRY_NEVER    the request itself is wrong: it fails anywhere
 *   DEMUX_RETRY_UNKNOWN  it may have run (or be running): only an
 *                        idempotent call may be sent again
 *   DEMUX_RETRY_PREFIX   safe only if the message begins with
 *                        DEMUX_NOT_EXECUTED_DRAINING, else unknown
 */
#ifndef DEMUX_PROTOCOL_H
#define DEMUX_PROTOCOL_H

enum demux_retry {
	DEMUX_RETRY_SAFE = 0,
	DEMUX_RETRY_NEVER,
	DEMUX_RETRY_UNKNOWN,
	DEMUX_RETRY_PREFIX,
};

/* XX(name, code, meaning, retry) */
#define DEMUX_PROTOCOL_ERRORS(XX)					      \
	XX(PARSE,           -32700, "parse error",       DEMUX_RETRY_NEVER)   \
	XX(INVALID_REQUEST, -32600, "invalid request",   DEMUX_RETRY_NEVER)   \
	XX(NO_METHOD,       -32601, "method not found",  DEMUX_RETRY_NEVER)   \
	XX(INVALID_PARAMS,  -32602, "invalid params",    DEMUX_RETRY_NEVER)   \
	XX(INTERNAL,        -32603, "internal error",    DEMUX_RETRY_UNKNOWN) \
	XX(OVERLOADED,      -32010, "overloaded",        DEMUX_RETRY_SAFE)    \
	XX(TIMED_OUT,       -32011, "timed out",         DEMUX_RETRY_UNKNOWN) \
	XX(SHUTTING_DOWN,   -32012, "shutting down",     DEMUX_RETRY_PREFIX)  \
	XX(TOO_LARGE,       -32013, "message too large", DEMUX_RETRY_NEVER)   \
	XX(PLUGIN_CRASHED,  -32014, "plugin crashed",    DEMUX_RETRY_UNKNOWN) \
	XX(UNAUTHENTICATED, -32015, "unauthenticated",   DEMUX_RETRY_NEVER)   \
	XX(PERMISSION_DENIED, -32016, "permission denied", DEMUX_RETRY_NEVER) \
	XX(CANCELLED,       -32800, "cancelled",         DEMUX_RETRY_UNKNOWN)

enum demux_error {
#define DEMUX_XX_(name, code, meaning, retry) DEMUX_E_##name = (code),
	DEMUX_PROTOCOL_ERRORS(DEMUX_XX_)
#undef DEMUX_XX_
};

/*
 * -32012 covers two cases a client must tell apart: a request that never
 * started (safe to send elsewhere) and one whose handler was still running
 * when drain_timeout_ms passed (effect unknown). The message of the first
 * always begins with this prefix.
 */
#define DEMUX_NOT_EXECUTED_DRAINING "shutting down: not executed"

#endif
