/* initfail - a plugin whose init refuses to start, with a reason. */
#include <stdio.h>

#include <demux/plugin.h>

static const char *const methods[] = { "x", NULL };

static int
init(const demux_host *host, void **state, char *err, size_t errlen)
{
	(void)host; (void)state;
	snprintf(err, errlen, "database unreachable");
	return -1;
}

static void
process(void *state, const demux_request *req, demux_call *call)
{
	(void)state; (void)req; (void)call;
}

static const demux_plugin plugin = {
	DEMUX_PLUGIN_HEADER,
	.name = "initfail",
	.methods = methods,
	.init = init,
	.process_transaction = process,
};

DEMUX_EXPORT const demux_plugin *
DEMUX_PLUGIN_ENTRY(void)
{
	return &plugin;
}
