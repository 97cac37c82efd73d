/*
 * job.c - one transaction on a worker: decode params, run the plugin, check
 * what it answered, and the host functions behind demux_result() and
 * demux_error().
 *
 * The response is built in place in job->out: the header [1, msgid, nil, is
 * packed before the plugin runs, and the plugin's packer appends the result
 * after it. A plugin that packs nothing answers nil; one that packs more or
 * less than one whole object gets -32603 instead, because a stray byte would
 * corrupt the stream for every other caller on the connection.
 *
 * Threads: a job runs on one worker at a time and takes no lock; who may
 * answer it is settled by compare-and-swap on j->state (job.h), so a result
 * and an early answer (deadline, cancel, drain) never both go out.
 */
#define _GNU_SOURCE
#include <execinfo.h>
#include <time.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/msg.h"
#include "../common/wire.h"
#include "fatal.h"
#include "gen.h"
#include "inline.h"
#include "job.h"
#include "log.h"
#include "plugin_util.h"
#include "defer.h"

/* A packer sink that drops everything: used once an error is set. */
static int
discard_write(void *data, const char *p, size_t n)
{
	(void)data; (void)p; (void)n;
	return 0;
}

void
dmx_job_set_error(dmx_job *j, int64_t code, const char *msg, const char *trace)
{
	msgpack_packer pk;

	j->out.len = 0;
	j->errored = 1;
	j->err_code = code;
	msgpack_packer_init(&pk, &j->out, dmx_buf_pack_write);
	if (j->err_string)
		dmx_msg_error_string(&pk, j->msgid, code, msg ? msg :
		    dmx_wire_strerror(code));
	else
		dmx_msg_error(&pk, j->msgid, code, msg ? msg :
		    dmx_wire_strerror(code), trace);
	/* a plugin still holding the packer must not append to the error */
	j->pk.callback = discard_write;
}

/* ---- host functions (demux_host) ---- */

static msgpack_packer *
host_result(demux_call *c)
{
	return &((dmx_job *)c)->pk;
}

static int
code_allowed(int64_t code)
{
	return code >= 1 || code == DMX_E_INVALID_PARAMS ||
	    code == DMX_E_INTERNAL || code == DMX_E_CANCELLED;
}

static int
host_cancelled(demux_call *c)
{
	return atomic_load_explicit(&((dmx_job *)c)->cancel,
	    memory_order_relaxed);
}

static uint64_t
host_deadline(demux_call *c)
{
	return ((dmx_job *)c)->deadline;
}

static void
set_plugin_error(dmx_job *j, int64_t code, const char *trace,
    const char *fmt, va_list ap)
{
	char *msg = NULL, *m2 = NULL;

	if (vasprintf(&msg, fmt ? fmt : "", ap) < 0)
		msg = NULL;
	if (trace != NULL && j->gen != NULL && !j->gen->cfg->send_traces) {
		/* send_traces: false: the trace stays in our log */
		dmx_info("%s: error %lld: %s; its trace (not sent):\n%s",
		    j->route->name, (long long)code, msg ? msg : "", trace);
		trace = NULL;
	}
	if (!code_allowed(code)) {
		/* the reserved range belongs to the host: keep the protocol's
		 * meaning of each code intact for clients */
		if (asprintf(&m2, "plugin %s used reserved error code %lld: %s",
		    j->route->plugin->name, (long long)code,
		    msg ? msg : "") < 0)
			m2 = NULL;
		dmx_job_set_error(j, DMX_E_INTERNAL, m2 ? m2 : msg, trace);
	} else {
		dmx_job_set_error(j, code, msg ? msg : "error", trace);
	}
	free(msg);
	free(m2);
}

void
dmx_job_plugin_error(dmx_job *j, int64_t code, const char *trace,
    const char *fmt, va_list ap)
{
	set_plugin_error(j, code, trace, fmt, ap);
}

static void
host_error(demux_call *c, int64_t code, const char *trace, const char *fmt,
    va_list ap)
{
	set_plugin_error((dmx_job *)c, code, trace, fmt, ap);
}

static void
host_error_bt(demux_call *c, int64_t code, const char *fmt, va_list ap)
{
	void *frames[64];
	char **syms;
	dmx_buf t = DMX_BUF_INIT;
	int n, i;

	n = backtrace(frames, 64);
	syms = backtrace_symbols(frames, n);
	/* frame 0 is this function: start with the caller */
	for (i = 1; syms != NULL && i < n; i++) {
		dmx_buf_append(&t, syms[i], strlen(syms[i]));
		dmx_buf_append(&t, "\n", i + 1 < n ? 1 : 0);
	}
	dmx_buf_append(&t, "", 1);
	free(syms);
	set_plugin_error((dmx_job *)c, code, t.data, fmt, ap);
	dmx_buf_release(&t);
}

void
dmx_host_fill(demux_host *h)
{
	h->result = host_result;
	h->error = host_error;
	h->error_bt = host_error_bt;
	h->cancelled = host_cancelled;
	h->deadline = host_deadline;
	h->params = dmx_host_params;
	h->config_get = dmx_host_config_get;
	dmx_defer_fill(h);
}

/* ---- running a job ---- */

static uint64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Fold one run time into the method's moving average (1/8 weight). */
static void
note_run_time(const dmx_route *rt, uint64_t ns)
{
	uint32_t avg = atomic_load_explicit(&rt->stats->avg_ns,
	    memory_order_relaxed), v = ns > UINT32_MAX - 1 ? UINT32_MAX - 1 :
	    (uint32_t)ns;

	avg = avg == UINT32_MAX ? v : avg - avg / 8 + v / 8;
	atomic_store_explicit(&rt->stats->avg_ns, avg, memory_order_relaxed);
	if (ns > atomic_load_explicit(&dmx_inline_max_ns,
	    memory_order_relaxed) &&
	    !atomic_load_explicit(&rt->stats->slow, memory_order_relaxed))
		atomic_store_explicit(&rt->stats->slow, 1,
		    memory_order_relaxed);
}

void
dmx_job_seal(dmx_job *j)
{
	const dmx_route *rt = j->route;
	size_t rlen;

	if (!j->errored && j->out.len == j->result_off &&
	    atomic_load_explicit(&j->cancel, memory_order_relaxed)) {
		/* cancelled while running, and the handler gave up without
		 * an answer */
		dmx_job_set_error(j, DMX_E_CANCELLED, "cancelled while running",
		    NULL);
	}
	if (j->errored)
		return;
	rlen = j->out.len - j->result_off;
	if (j->out.data == NULL && j->out.len > 0) {
		dmx_job_set_error(j, DMX_E_INTERNAL, "out of memory "
		    "while packing the result", NULL);
	} else if (rlen == 0) {
		msgpack_pack_nil(&j->pk);
	} else if (dmx_wire_one_object(j->out.data + j->result_off,
	    rlen) != rlen) {
		dmx_warn("plugin %s: %s packed a result that is not "
		    "exactly one msgpack object (%zu bytes)", rt->plugin->name,
		    rt->name, rlen);
		dmx_job_set_error(j, DMX_E_INTERNAL, "the handler's result "
		    "is not exactly one msgpack object", NULL);
	}
}

int
dmx_job_run(dmx_job *j, msgpack_zone *zone, uint64_t *now)
{
	const dmx_route *rt = j->route;
	const dmx_plugin *pl = rt->plugin;
	msgpack_object params;
	demux_request req;
	char mname[512];
	size_t off = 0;
	uint64_t t0, t1 = 0;
	int rc;

	j->head.host = &pl->host;
	j->errored = 0;
	j->out.len = 0;
	atomic_store_explicit(&j->dflags, 0, memory_order_relaxed);
	atomic_store_explicit(&j->holds, 0, memory_order_relaxed);
	{
		int st = DMX_JOB_QUEUED;

		if (!atomic_compare_exchange_strong(&j->state, &st,
		    DMX_JOB_RUNNING))
			return 0;	/* answered early: never runs */
	}
	msgpack_packer_init(&j->pk, &j->out, dmx_buf_pack_write);

	rc = msgpack_unpack(j->in.data + j->params_off, j->params_len, &off,
	    zone, &params);
	if (rc != MSGPACK_UNPACK_SUCCESS || params.type != MSGPACK_OBJECT_ARRAY) {
		/* framing already proved it whole; this is nesting beyond
		 * what msgpack-c decodes (32 levels) */
		dmx_job_set_error(j, DMX_E_INVALID_PARAMS,
		    "params could not be decoded (nested too deeply?)", NULL);
		goto send;
	}

	dmx_msg_result_head(&j->pk, j->msgid);
	j->result_off = j->out.len;

	memset(&req, 0, sizeof(req));
	req.size = sizeof(req);
	req.msgid = j->msgid;
	req.notification = j->notify;
	req.method_index = rt->index;
	req.method = rt->name;
	if (rt->catchall) {
		/* the name called, NUL-terminated: for a catch-all ("x.*")
		 * it is what the handler dispatches on */
		if (j->meth_len < sizeof(mname)) {
			memcpy(mname, j->in.data + j->meth_off, j->meth_len);
			mname[j->meth_len] = '\0';
			req.method = mname;
		}
	}
	req.params = &params;
	req.raw = j->in.data + j->params_off;
	req.raw_len = j->params_len;
	req.identity = j->identity ? j->identity : "anonymous";

	t0 = *now;
	j->params = &params;
	dmx_fatal_running(pl->name, rt->name);
	pl->desc->process_transaction(pl->state, &req, (demux_call *)j);
	dmx_fatal_running(NULL, NULL);
	j->params = NULL;
	t1 = *now = now_ns();
	note_run_time(rt, t1 - t0);

	if (atomic_load_explicit(&j->holds, memory_order_relaxed) != 0) {
		/* deferred: the worker lets go; if the plugin finished it
		 * already (holds reaches 0 here), its answer is sealed and
		 * counted, and goes out with the batch; else finish sends */
		return atomic_fetch_sub(&j->holds, 1) == 1 ? 0 : 1;
	}
	dmx_job_seal(j);
send:
	if (j->notify)
		j->out.len = 0;
	{
		int st = DMX_JOB_RUNNING;

		if (!atomic_compare_exchange_strong(&j->state, &st,
		    DMX_JOB_DONE)) {
			/* answered early meanwhile (and counted then): the
			 * result arrives too late and is dropped */
			j->out.len = 0;
			return 0;
		}
	}
	/* the answer is ready: account for it */
	dmx_job_account(j, t1 ? t1 : (*now = now_ns()));
	return 0;
}

void
dmx_job_account(dmx_job *j, uint64_t end)
{
	const dmx_route *rt = j->route;
	dmx_method_stats *ms = &rt->stats->m;
	uint64_t dt = end > j->t_dispatch ? end - j->t_dispatch : 0;

	atomic_fetch_add_explicit(&ms->calls, 1, memory_order_relaxed);
	if (j->errored)
		dmx_method_error(ms, j->err_code);
	dmx_hist_record(&ms->latency, dt);
	if (dmx_access_enabled())
		dmx_access_log(j->conn_id, j->msgid, j->notify, rt->name,
		    rt->len, j->errored, j->err_code, dt);
}
