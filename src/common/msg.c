/*
 * msg.c - see msg.h.
 */
#include <string.h>

#include "buf.h"
#include "msg.h"
#include "wire.h"

static void
pack_name(msgpack_packer *pk, const char *s, size_t n)
{
	msgpack_pack_str(pk, n);
	msgpack_pack_str_body(pk, s, n);
}

void
dmx_msg_request_head(msgpack_packer *pk, uint32_t msgid, const char *method,
    size_t mlen)
{
	msgpack_pack_array(pk, 4);
	msgpack_pack_uint8(pk, DMX_MSG_REQUEST);
	msgpack_pack_uint32(pk, msgid);
	pack_name(pk, method, mlen);
}

void
dmx_msg_notify_head(msgpack_packer *pk, const char *method, size_t mlen)
{
	msgpack_pack_array(pk, 3);
	msgpack_pack_uint8(pk, DMX_MSG_NOTIFY);
	pack_name(pk, method, mlen);
}

void
dmx_msg_response_head(msgpack_packer *pk, uint32_t msgid)
{
	msgpack_pack_array(pk, 4);
	msgpack_pack_uint8(pk, DMX_MSG_RESPONSE);
	msgpack_pack_uint32(pk, msgid);
}

void
dmx_msg_result_head(msgpack_packer *pk, uint32_t msgid)
{
	msgpack_pack_array(pk, 4);
	msgpack_pack_uint8(pk, DMX_MSG_RESPONSE);
	msgpack_pack_uint32(pk, msgid);
	msgpack_pack_nil(pk);
}

void
dmx_msg_error(msgpack_packer *pk, uint32_t msgid, int64_t code,
    const char *message, const char *trace)
{
	msgpack_pack_array(pk, 4);
	msgpack_pack_uint8(pk, DMX_MSG_RESPONSE);
	msgpack_pack_uint32(pk, msgid);
	msgpack_pack_array(pk, trace ? 3 : 2);
	msgpack_pack_int64(pk, code);
	dmx_pack_cstr(pk, message);
	if (trace)
		dmx_pack_cstr(pk, trace);
	msgpack_pack_nil(pk);
}

void
dmx_msg_error_string(msgpack_packer *pk, uint32_t msgid, int64_t code,
    const char *message)
{
	char head[24];
	int n = snprintf(head, sizeof(head), "%lld: ", (long long)code);
	size_t ml = strlen(message);

	msgpack_pack_array(pk, 4);
	msgpack_pack_uint8(pk, DMX_MSG_RESPONSE);
	msgpack_pack_uint32(pk, msgid);
	msgpack_pack_str(pk, (size_t)n + ml);
	msgpack_pack_str_body(pk, head, (size_t)n);
	msgpack_pack_str_body(pk, message, ml);
	msgpack_pack_nil(pk);
}

void
dmx_msg_error_notice(msgpack_packer *pk, int64_t code, const char *message)
{
	dmx_msg_notify_head(pk, "$/error", 7);
	msgpack_pack_array(pk, 2);
	msgpack_pack_int64(pk, code);
	dmx_pack_cstr(pk, message);
}

void
dmx_msg_drain(msgpack_packer *pk)
{
	dmx_msg_notify_head(pk, "$/drain", 7);
	msgpack_pack_array(pk, 0);
}

void
dmx_msg_cancel(msgpack_packer *pk, uint32_t msgid)
{
	dmx_msg_notify_head(pk, "$/cancelRequest", 15);
	msgpack_pack_array(pk, 1);
	msgpack_pack_uint32(pk, msgid);
}
