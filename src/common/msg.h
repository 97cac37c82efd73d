/*
 * msg.h - the one builder of MessagePack-RPC messages, for demuxd and
 * libmux alike. Every message either side sends is packed here with
 * msgpack-c; none is written as literal bytes anywhere.
 *
 *   request       [0, msgid, method, params]
 *   response      [1, msgid, nil, result]       or
 *                 [1, msgid, [code, message(, trace)], nil]
 *   notification  [2, method, params]
 *
 * The *_head functions pack everything up to the last element, which the
 * caller packs (or appends as ready-made msgpack bytes) itself.
 */
#ifndef DMX_MSG_H
#define DMX_MSG_H

#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

/* [0, msgid, method, — params follow */
void dmx_msg_request_head(msgpack_packer *pk, uint32_t msgid,
    const char *method, size_t mlen);
/* [2, method, — params follow */
void dmx_msg_notify_head(msgpack_packer *pk, const char *method,
    size_t mlen);
/* [1, msgid, — the error and the result follow */
void dmx_msg_response_head(msgpack_packer *pk, uint32_t msgid);
/* [1, msgid, nil, — the result follows */
void dmx_msg_result_head(msgpack_packer *pk, uint32_t msgid);
/* [1, msgid, [code, message(, trace)], nil]; trace may be NULL */
void dmx_msg_error(msgpack_packer *pk, uint32_t msgid, int64_t code,
    const char *message, const char *trace);
/* The same as one string, "CODE: message", the trace dropped: for clients
 * that can read an error only as a string (listen error_format: string). */
void dmx_msg_error_string(msgpack_packer *pk, uint32_t msgid, int64_t code,
    const char *message);
/* [2, "$/error", [code, message]]: an error with no msgid to answer */
void dmx_msg_error_notice(msgpack_packer *pk, int64_t code,
    const char *message);
/* [2, "$/drain", []]: the server sends nothing new on this connection */
void dmx_msg_drain(msgpack_packer *pk);
/* [2, "$/cancelRequest", [msgid]] (as in LSP) */
void dmx_msg_cancel(msgpack_packer *pk, uint32_t msgid);

#endif
