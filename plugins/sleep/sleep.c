/*
 * sleep - the recipe's handler: sleep.sleep [ms] sleeps ms milliseconds and
 * returns ms. A negative ms is the recipe's exception: error code 1, with a
 * message naming the value and the worker's backtrace as trace.
 */
#include <errno.h>
#include <time.h>

#include <demux/plugin.h>

#define SLEEP_E_NEGATIVE 1
#define SLICE_MS 10	/* how often a long sleep checks for cancellation */

static const char *const methods[] = { "sleep", NULL };

static void
sleep_process(void *state, const demux_request *req, demux_call *call)
{
	struct timespec ts;
	int64_t ms, slept, slice;

	(void)state;
	(void)req;
	/* one integer, at most a day (-32602 naming it otherwise) */
	if (demux_params(call, "ms:i(-9223372036854775807..86400000)",
	    &ms) != 0)
		return;
	if (ms < 0) {
		demux_error_bt(call, SLEEP_E_NEGATIVE,
		    "sleep.sleep: negative duration %lld ms", (long long)ms);
		return;
	}
	/* sleep in slices so that a cancelled call gives up early */
	for (slept = 0; slept < ms; slept += slice) {
		slice = ms - slept < SLICE_MS ? ms - slept : SLICE_MS;
		if (demux_cancelled(call)) {
			demux_error(call, DEMUX_E_CANCELLED, "sleep.sleep "
			    "cancelled after %lld of %lld ms", (long long)slept,
			    (long long)ms);
			return;
		}
		ts.tv_sec = slice / 1000;
		ts.tv_nsec = (slice % 1000) * 1000000L;
		while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
			;
	}
	demux_reply_int(call, ms);
}

static const demux_plugin sleep_plugin = {
	DEMUX_PLUGIN_HEADER,
	.name = "sleep",
	.version = "1.0.0",
	.methods = methods,
	.process_transaction = sleep_process,
};

DEMUX_EXPORT const demux_plugin *
DEMUX_PLUGIN_ENTRY(void)
{
	return &sleep_plugin;
}
