/*
 * echo - the smallest useful plugin: echo.echo returns its params array
 * unchanged.
 *
 * The params arrive both decoded and as raw msgpack bytes; echoing the raw
 * bytes through the packer's write callback costs one memcpy whatever the
 * payload's shape.
 */
#include <demux/plugin.h>

static const char *const methods[] = { "echo", NULL };

static void
echo_process(void *state, const demux_request *req, demux_call *call)
{
	msgpack_packer *pk = demux_result(call);

	(void)state;
	pk->callback(pk->data, req->raw, req->raw_len);
}

static const demux_plugin echo_plugin = {
	DEMUX_PLUGIN_HEADER,
	.name = "echo",
	.version = "1.0.0",
	.methods = methods,
	.process_transaction = echo_process,
};

DEMUX_EXPORT const demux_plugin *
DEMUX_PLUGIN_ENTRY(void)
{
	return &echo_plugin;
}
