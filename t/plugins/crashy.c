/*
 * crashy - a test plugin for isolation: process, whose methods end their
 * process in every way a plugin can:
 *
 *   crashy.echo [x...]   returns its params
 *   crashy.segv          dereferences NULL           (SIGSEGV)
 *   crashy.abort         abort()                     (SIGABRT)
 *   crashy.exit [n]      exit(n)                     (exit status n)
 *   crashy.hang          loops until cancelled (or its deadline passes)
 *   crashy.stuck         loops forever, deaf to cancellation (process
 *                        mode only: nothing can stop a thread)
 *   crashy.leak [mb]     keeps mb MiB (default 10), touched, and answers
 *   crashy.pid           getpid(), getuid() and the calls this process ran
 *   crashy.sometimes [n] SIGSEGV on every n-th call of this process,
 *                        otherwise returns the call's number
 *   crashy.whoami        the caller's identity (demux_request.identity)
 *   crashy.fail          an error with the worker's backtrace as trace
 *   crashy.left          [has a deadline, ms left] (demux_deadline)
 *   crashy.recurse       recurses until the stack overflows (SIGSEGV)
 *   crashy.nap [ms]      sleeps ms (default 1000), deaf to cancellation
 *   crashy.forget        defers the call and never finishes it (a plugin
 *                        bug: it leaks that call only)
 */
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <demux/plugin.h>

enum { C_ECHO, C_SEGV, C_ABORT, C_EXIT, C_HANG, C_LEAK, C_PID, C_SOMETIMES,
	C_WHOAMI, C_FAIL, C_LEFT, C_STUCK, C_RECURSE, C_NAP, C_FORGET };
static const char *const methods[] = { "echo", "segv", "abort", "exit",
	"hang", "leak", "pid", "sometimes", "whoami", "fail", "left", "stuck",
	"recurse", "nap", "forget", NULL };

static atomic_ulong calls;

/* Each frame keeps a page the compiler cannot drop, until the guard page
 * (the depth bound is never reached: it only tells the compiler the
 * recursion ends). */
static unsigned long
recurse(volatile char *prev, unsigned long depth)
{
	volatile char page[4096];

	page[0] = prev != NULL ? prev[0] : 1;
	if (depth == 0)
		return page[0];
	return recurse(page, depth - 1) + page[0];
}

static int64_t
arg(const demux_request *req, int64_t dflt)
{
	const msgpack_object *p = req->params;

	if (p->via.array.size < 1)
		return dflt;
	if (p->via.array.ptr[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER)
		return (int64_t)p->via.array.ptr[0].via.u64;
	return dflt;
}

static void
crashy_process(void *state, const demux_request *req, demux_call *call)
{
	unsigned long n = atomic_fetch_add(&calls, 1) + 1;
	msgpack_packer *pk;
	volatile int *nowhere = NULL;
	size_t mb, i;
	char *p;

	(void)state;
	switch (req->method_index) {
	case C_ECHO:
		pk = demux_result(call);
		msgpack_pack_object(pk, *req->params);
		break;
	case C_SEGV:
		*nowhere = 1;
		break;
	case C_ABORT:
		abort();
	case C_EXIT:
		exit((int)arg(req, 3));
	case C_HANG:
		while (!demux_cancelled(call))
			usleep(1000);
		demux_error(call, 9, "cancelled while hanging");
		break;
	case C_LEAK:
		mb = (size_t)arg(req, 10);
		p = malloc(mb << 20);
		if (p == NULL) {
			demux_error(call, 8, "no memory");
			break;
		}
		for (i = 0; i < mb << 20; i += 4096)
			p[i] = 1;	/* resident, and never freed */
		msgpack_pack_uint64(demux_result(call), mb);
		break;
	case C_PID:
		pk = demux_result(call);
		msgpack_pack_array(pk, 3);
		msgpack_pack_int64(pk, (int64_t)getpid());
		msgpack_pack_int64(pk, (int64_t)getuid());
		msgpack_pack_uint64(pk, n);
		break;
	case C_WHOAMI: {
		const char *id = demux_identity(req);

		pk = demux_result(call);
		if (id == NULL) {
			msgpack_pack_nil(pk);
			break;
		}
		msgpack_pack_str(pk, strlen(id));
		msgpack_pack_str_body(pk, id, strlen(id));
		break;
	}
	case C_FAIL:
		demux_error_bt(call, 5, "failing on purpose");
		break;
	case C_STUCK:
		for (;;)
			pause();	/* until a signal ends the process */
	case C_FORGET:
		(void)demux_defer(call);
		break;
	case C_NAP:
		usleep((useconds_t)arg(req, 1000) * 1000u);
		msgpack_pack_true(demux_result(call));
		break;
	case C_RECURSE:
		msgpack_pack_uint64(demux_result(call), recurse(NULL, ~0ul));
		break;
	case C_LEFT:
		pk = demux_result(call);
		msgpack_pack_array(pk, 2);
		if (demux_deadline(call) != 0)
			msgpack_pack_true(pk);
		else
			msgpack_pack_false(pk);
		msgpack_pack_int64(pk, demux_time_left_ms(call));
		break;
	case C_SOMETIMES:
		if (n % (unsigned long)arg(req, 30) == 0)
			raise(SIGSEGV);
		msgpack_pack_uint64(demux_result(call), n);
		break;
	}
}

static const demux_plugin crashy_plugin = {
	DEMUX_PLUGIN_HEADER,
	.name = "crashy",
	.version = "1.2.3",
	.methods = methods,
	.process_transaction = crashy_process,
};

DEMUX_EXPORT const demux_plugin *
DEMUX_PLUGIN_ENTRY(void)
{
	return &crashy_plugin;
}
