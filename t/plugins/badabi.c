/* badabi - a plugin built for a future ABI major: must be refused. */
#include <demux/plugin.h>

static const char *const methods[] = { "x", NULL };

static void
process(void *state, const demux_request *req, demux_call *call)
{
	(void)state; (void)req; (void)call;
}

static const demux_plugin plugin = {
	.magic = DEMUX_PLUGIN_MAGIC,
	.abi_major = DEMUX_ABI_MAJOR + 1,
	.abi_minor = 3,
	.size = sizeof(demux_plugin),
	.name = "badabi",
	.methods = methods,
	.process_transaction = process,
};

DEMUX_EXPORT const demux_plugin *
DEMUX_PLUGIN_ENTRY(void)
{
	return &plugin;
}
