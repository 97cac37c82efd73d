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
	const msgpack_object *p = req->params;
	struct timespec ts;
	int64_t ms, slept, slice;

	(void)state;
	if (p->via.array.size != 1 ||
	    (p->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER &&
	     p->via.array.ptr[0].type != MSGPACK_OBJECT_NEGATIVE_INTEGER)) {
		demux_error(call, DEMUX_E_INVALID_PARAMS,
		    "sleep.sleep expects [ms] with ms an integer");
		return;
	}
	if (p->via.array.ptr[0].type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
		ms = p->via.array.ptr[0].via.i64;
		demux_error_bt(call, SLEEP_E_NEGATIVE,
		    "sleep.sleep: negative duration %lld ms", (long long)ms);
		return;
	}
	if (p->via.array.ptr[0].via.u64 > 86400000u) {
		demux_error(call, DEMUX_E_INVALID_PARAMS,
		    "sleep.sleep: %llu ms is more than a day",
		    (unsigned long long)p->via.array.ptr[0].via.u64);
		return;
	}
	ms = (int64_t)p->via.array.ptr[0].via.u64;
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
	msgpack_pack_int64(demux_result(call), ms);
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
