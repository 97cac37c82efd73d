/*
 * faulty - a test plugin that misbehaves on purpose, to check that the host
 * contains each mistake to the one call that made it.
 *
 *   faulty.two       packs two objects        -> -32603
 *   faulty.none      answers nothing          -> nil
 *   faulty.reserved  uses code -32000         -> -32603 naming the code
 *   faulty.trace     error with its own trace -> code 7 and that trace
 *   faulty.late      packs, then errors       -> the error, nothing else
 *   faulty.big [n]   returns a string of n bytes
 */
#include <stdlib.h>
#include <string.h>

#include <demux/plugin.h>

enum { F_TWO, F_NONE, F_RESERVED, F_TRACE, F_LATE, F_BIG };
static const char *const methods[] = { "two", "none", "reserved", "trace",
	"late", "big", NULL };

static void
faulty_process(void *state, const demux_request *req, demux_call *call)
{
	msgpack_packer *pk;
	size_t n;
	char *s;

	(void)state;
	switch (req->method_index) {
	case F_TWO:
		pk = demux_result(call);
		msgpack_pack_int(pk, 1);
		msgpack_pack_int(pk, 2);
		break;
	case F_NONE:
		break;
	case F_RESERVED:
		demux_error(call, -32000, "used a reserved code");
		break;
	case F_TRACE:
		demux_error_trace(call, 7, "line 1\nline 2", "with trace %d", 7);
		break;
	case F_LATE:
		pk = demux_result(call);
		msgpack_pack_array(pk, 2);
		msgpack_pack_int(pk, 1);
		demux_error(call, 3, "changed my mind");
		msgpack_pack_int(pk, 2);	/* after the error: dropped */
		break;
	case F_BIG:
		n = req->params->via.array.size == 1 ?
		    (size_t)req->params->via.array.ptr[0].via.u64 : 0;
		s = malloc(n ? n : 1);
		if (s == NULL) {
			demux_error(call, DEMUX_E_INTERNAL, "no memory");
			break;
		}
		memset(s, 'b', n);
		pk = demux_result(call);
		msgpack_pack_str(pk, n);
		msgpack_pack_str_body(pk, s, n);
		free(s);
		break;
	}
}

static const demux_plugin faulty_plugin = {
	DEMUX_PLUGIN_HEADER,
	.name = "faulty",
	.version = "0.0.1",
	.methods = methods,
	.process_transaction = faulty_process,
};

DEMUX_EXPORT const demux_plugin *
DEMUX_PLUGIN_ENTRY(void)
{
	return &faulty_plugin;
}
