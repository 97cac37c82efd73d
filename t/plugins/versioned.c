/*
 * versioned - a test plugin built twice (v1.so, v2.so) from this source with
 * a different VERSION, to check that a reload really swaps the code:
 *   ver.get          -> VERSION
 *   ver.slow [ms]    -> VERSION, after ms milliseconds
 * init and fini log, so that the test can see the old code finalised.
 */
#include <time.h>

#include <demux/plugin.h>

#ifndef VERSION
#define VERSION "v0"
#endif

static const char *const methods[] = { "get", "slow", NULL };

static int
init(const demux_host *host, void **state, char *err, size_t errlen)
{
	(void)err; (void)errlen;
	host->log(host, DEMUX_LOG_INFO, "init " VERSION);
	*state = (void *)host;
	return 0;
}

static void
fini(void *state)
{
	const demux_host *host = state;

	host->log(host, DEMUX_LOG_INFO, "fini " VERSION);
}

static void
process(void *state, const demux_request *req, demux_call *call)
{
	(void)state;
	if (req->method_index == 1 && req->params->via.array.size == 1) {
		int64_t ms = (int64_t)req->params->via.array.ptr[0].via.u64;
		struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

		nanosleep(&ts, NULL);
	}
	msgpack_pack_str_with_body(demux_result(call), VERSION,
	    sizeof(VERSION) - 1);
}

static const demux_plugin plugin = {
	DEMUX_PLUGIN_HEADER,
	.name = "ver",
	.version = VERSION,
	.methods = methods,
	.init = init,
	.fini = fini,
	.process_transaction = process,
};

DEMUX_EXPORT const demux_plugin *
DEMUX_PLUGIN_ENTRY(void)
{
	return &plugin;
}
