/*
 * proc.c - the process executor: its interface (submit, requeue, cancel,
 * the snapshots), the table of calls in flight, writing requests to a
 * child, and creating and freeing it; the link thread is proc_link.c. See
 * proc.h.
 *
 * A child's life: STARTING (spawned; the host message and a $/plugins
 * request are on their way), UP once $/plugins is answered (init has run),
 * then maybe LEAVING (past max_requests or max_rss_mb: still serving until
 * its replacement is UP), RETIRING (takes no new calls; once it has none,
 * its socket is shut for writing, and it runs fini and exits: EXITING until
 * it is reaped), and FREE again.
 * A child that dies in any state but RETIRING crashed: its calls in flight
 * are answered -32014 and a new one is spawned after the backoff.
 *
 * The request path: submit (the I/O thread) packs [0, id, method, params]
 * into the child's output buffer and writes it at once when the socket
 * takes it; only a full socket leaves the rest to the link thread. The
 * answer path: the link thread reads [1, id, error, result], puts the
 * caller's msgid in front of error and result, and hands the job to `done`.
 *
 * Threads and locks: ps->mu guards the children (state, output, the table
 * of calls in flight); the link thread alone owns each child's input
 * buffer and stderr. ps->mu is never held while calling admit or done, and
 * those never take it: lock order, callers' locks (none) then ps->mu.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../common/buf.h"
#include "../common/clock.h"
#include "../common/msg.h"
#include "../common/wire.h"
#include "job.h"
#include "log.h"
#include "plugin_host.h"
#include "proc_impl.h"
#include "router.h"

extern char **environ;

void
proc_wake(dmx_procs *ps)
{
	uint64_t one = 1;

	if (write(ps->wakefd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		dmx_warn("eventfd write: %s", strerror(errno));
}

/* ---- the table of calls in flight (mu) ---- */

static unsigned
call_hash(uint32_t id)
{
	return id * 2654435761u;
}

static int
calls_grow(proc_child *ch)
{
	unsigned cap = ch->cap ? ch->cap * 2 : 64, i, h;
	proc_call *t = calloc(cap, sizeof(*t));

	if (t == NULL)
		return -1;
	if (ch->n * 4 < ch->cap)	/* mostly tombstones: same size */
		cap = ch->cap, free(t), t = calloc(cap, sizeof(*t));
	if (t == NULL)
		return -1;
	for (i = 0; i < ch->cap; i++) {
		proc_call *c = &ch->calls[i];

		if (c->id == 0 || c->dead)
			continue;
		for (h = call_hash(c->id) & (cap - 1); t[h].id != 0;
		    h = (h + 1) & (cap - 1))
			;
		t[h] = *c;
	}
	free(ch->calls);
	ch->calls = t;
	ch->cap = cap;
	ch->used = ch->n;
	return 0;
}

static proc_call *
calls_add(proc_child *ch, uint32_t id)
{
	unsigned h;

	if ((ch->used + 1) * 2 > ch->cap && calls_grow(ch) != 0)
		return NULL;
	for (h = call_hash(id) & (ch->cap - 1); ch->calls[h].id != 0 &&
	    !ch->calls[h].dead; h = (h + 1) & (ch->cap - 1))
		;
	if (ch->calls[h].id == 0)
		ch->used++;
	ch->calls[h].id = id;
	ch->calls[h].dead = 0;
	ch->n++;
	return &ch->calls[h];
}

proc_call *
proc_calls_find(proc_child *ch, uint32_t id)
{
	unsigned h;

	if (ch->cap == 0 || id == 0)
		return NULL;
	for (h = call_hash(id) & (ch->cap - 1); ch->calls[h].id != 0;
	    h = (h + 1) & (ch->cap - 1))
		if (ch->calls[h].id == id && !ch->calls[h].dead)
			return &ch->calls[h];
	return NULL;
}

void
proc_calls_del(proc_child *ch, proc_call *c)
{
	c->dead = 1;
	c->job = NULL;
	ch->n--;
}

/* ---- finishing jobs ---- */

/* j was sent (RUNNING) and is answered now: by its child's answer in
 * j->out, or an error. 0 if it was answered early meanwhile: drop it. */
int
proc_job_done(dmx_job *j)
{
	int st = DMX_JOB_RUNNING;

	if (!atomic_compare_exchange_strong(&j->state, &st, DMX_JOB_DONE)) {
		j->out.len = 0;
		return 0;
	}
	if (j->notify)
		j->out.len = 0;
	dmx_job_account(j, dmx_now_ns());
	return 1;
}

void
proc_push(dmx_job **list, dmx_job *j)
{
	j->next = *list;
	*list = j;
}

/* ---- writing to a child (mu) ---- */

/* Write what ch has queued, as far as the socket takes it. */
void
proc_flush_locked(dmx_procs *ps, proc_child *ch)
{
	ssize_t n;

	if (ch->fd < 0) {		/* gone: its calls fail with it */
		ch->out.len = ch->out_off = 0;
		return;
	}
	while (ch->out_off < ch->out.len) {
		n = send(ch->fd, ch->out.data + ch->out_off,
		    ch->out.len - ch->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				if (!ch->want_out) {
					ch->want_out = 1;
					proc_wake(ps);
				}
				return;
			}
			/* it died: the link thread sees EOF and answers */
			ch->out.len = ch->out_off = 0;
			return;
		}
		ch->out_off += (size_t)n;
	}
	ch->out.len = ch->out_off = 0;
	ch->want_out = 0;
	dmx_buf_shrink(&ch->out, 64u << 10);
}

/* Is any child serving? (mu held) */
static int
any_up_locked(const dmx_procs *ps)
{
	unsigned i;

	for (i = 0; i < ps->nchild; i++)
		if (ps->child[i].state == CH_UP ||
		    ps->child[i].state == CH_LEAVING)
			return 1;
	return 0;
}

/* The least loaded child that takes calls, or NULL. */
static proc_child *
pick_locked(dmx_procs *ps)
{
	proc_child *best = NULL;
	unsigned i;

	for (i = 0; i < ps->nchild; i++) {
		proc_child *ch = &ps->child[i];

		if (ch->state != CH_UP && ch->state != CH_LEAVING)
			continue;
		if (ps->limit > 0 && ch->n >= ps->limit)
			continue;
		if (best == NULL || ch->n < best->n ||
		    (best->state == CH_LEAVING && ch->state == CH_UP))
			best = ch;
	}
	return best;
}

/* Queue j for ch (mu held). 1 if sent (or answered), 0 if ch had no room
 * in memory: the caller rejects it. */
static int
send_locked(dmx_procs *ps, proc_child *ch, dmx_job *j, dmx_job **done)
{
	msgpack_packer pk;
	proc_call *c = NULL;
	uint32_t id = 0;
	int st = DMX_JOB_QUEUED;

	if (!atomic_compare_exchange_strong(&j->state, &st, DMX_JOB_RUNNING)) {
		/* answered early (cancelled) before it left */
		j->out.len = 0;
		proc_push(done, j);
		return 1;
	}
	if (!j->notify) {
		do
			id = ++ch->next_id;
		while (id == 0 || proc_calls_find(ch, id) != NULL);
		if ((c = calls_add(ch, id)) == NULL) {
			atomic_store(&j->state, DMX_JOB_QUEUED);
			return 0;
		}
		c->job = j;
		c->seq = j->seq;
		c->kill_at = j->route->timeout_ms > 0 ? j->t_dispatch +
		    ((uint64_t)j->route->timeout_ms + ps->kill_after_ms) *
		    1000000u : 0;
	}
	msgpack_packer_init(&pk, &ch->out, dmx_buf_pack_write);
	if (j->identity != NULL && strcmp(j->identity, ch->as) != 0) {
		/* the caller changed: [2, "$/as", [identity]] first, so that
		 * the plugin sees who calls, as in thread mode */
		snprintf(ch->as, sizeof(ch->as), "%s", j->identity);
		dmx_msg_notify_head(&pk, "$/as", 4);
		msgpack_pack_array(&pk, 1);
		dmx_pack_cstr(&pk, ch->as);
	}
	if (j->deadline != 0) {
		/* [2, "$/deadline", [ns]]: what demux_deadline() says there;
		 * the deadline itself is kept here (CLOCK_MONOTONIC is the
		 * same clock in both processes) */
		dmx_msg_notify_head(&pk, "$/deadline", 10);
		msgpack_pack_array(&pk, 1);
		msgpack_pack_uint64(&pk, j->deadline);
	}
	if (j->notify)
		dmx_msg_notify_head(&pk, j->route->name, j->route->len);
	else
		dmx_msg_request_head(&pk, id, j->route->name, j->route->len);
	dmx_buf_append(&ch->out, j->in.data + j->params_off, j->params_len);
	if (j->notify) {
		/* nothing comes back: it is done once it has left */
		j->out.len = 0;
		proc_job_done(j);
		proc_push(done, j);
	}
	return 1;
}

/* ---- the executor interface ---- */

void
proc_done_list(dmx_procs *ps, dmx_job *list)
{
	dmx_job *j, *next, *rev = NULL;

	for (j = list; j != NULL; j = next) {	/* in order */
		next = j->next;
		j->next = rev;
		rev = j;
	}
	if (rev != NULL)
		ps->hooks.done(rev, ps->hooks.done_arg);
}

static void
op_submit(dmx_exec *e, dmx_job *head, dmx_job *tail, unsigned n,
    dmx_job **rejected)
{
	dmx_procs *ps = (dmx_procs *)e;
	dmx_job *j, *next, *rej = NULL, **rtail = &rej, *done = NULL;
	dmx_job *take = NULL, **ttail = &take;
	proc_child *ch;
	unsigned i;

	(void)tail;
	(void)n;
	/* admit takes a connection's lock: ask before ours */
	for (j = head; j != NULL; j = next) {
		next = j->next;
		j->next = NULL;
		if (ps->hooks.admit != NULL && !ps->hooks.admit(j))
			continue;	/* parked; it comes back by requeue */
		*ttail = j;
		ttail = &j->next;
	}
	pthread_mutex_lock(&ps->mu);
	for (j = take; j != NULL; j = next) {
		next = j->next;
		j->next = NULL;
		ch = ps->stop ? NULL : pick_locked(ps);
		if (ch == NULL || !send_locked(ps, ch, j, &done)) {
			if (ch == NULL && !any_up_locked(ps)) {
				char msg[200];

				snprintf(msg, sizeof(msg), "overloaded: plugin %s "
				    "has no child process up (one is being "
				    "started); not executed, safe to retry",
				    ps->name);
				dmx_job_set_error(j, DMX_E_OVERLOADED, msg,
				    NULL);
			}
			*rtail = j;
			rtail = &j->next;
		}
	}
	for (i = 0; i < ps->nchild; i++)
		if (ps->child[i].state != CH_FREE && !ps->child[i].want_out &&
		    ps->child[i].out.len > 0)
			proc_flush_locked(ps, &ps->child[i]);
	pthread_mutex_unlock(&ps->mu);
	*rejected = rej;
	proc_done_list(ps, done);
}

static void
op_requeue(dmx_exec *e, dmx_job *j)
{
	dmx_job *rej;

	/* it was within the bound when submitted: if no child can take it
	 * now, it is answered as it would have been then */
	j->next = NULL;
	op_submit(e, j, j, 1, &rej);
	if (rej != NULL) {
		dmx_procs *ps = (dmx_procs *)e;
		char msg[160];
		int st = DMX_JOB_QUEUED;

		snprintf(msg, sizeof(msg), "overloaded: plugin %s has no child "
		    "process up; not executed, safe to retry", ps->name);
		if (atomic_compare_exchange_strong(&rej->state, &st,
		    DMX_JOB_RUNNING)) {
			if (rej->out.len == 0)
				dmx_job_set_error(rej, DMX_E_OVERLOADED, msg,
				    NULL);
			proc_job_done(rej);
		} else {
			rej->out.len = 0;
		}
		ps->hooks.done(rej, ps->hooks.done_arg);
	}
}

static void
op_cancel(dmx_exec *e, dmx_job *j, uint64_t seq)
{
	dmx_procs *ps = (dmx_procs *)e;
	msgpack_packer pk;
	unsigned i, k;

	pthread_mutex_lock(&ps->mu);
	for (i = 0; i < ps->nchild; i++) {
		proc_child *ch = &ps->child[i];

		for (k = 0; k < ch->cap; k++) {
			proc_call *c = &ch->calls[k];

			if (c->id == 0 || c->dead || c->job != j ||
			    c->seq != seq)
				continue;
			msgpack_packer_init(&pk, &ch->out, dmx_buf_pack_write);
			dmx_msg_cancel(&pk, c->id);
			if (!ch->want_out)
				proc_flush_locked(ps, ch);
			goto out;
		}
	}
out:
	pthread_mutex_unlock(&ps->mu);
}

static void
op_info(dmx_exec *e, uint64_t stuck_ms, dmx_exec_info *out)
{
	dmx_procs *ps = (dmx_procs *)e;
	uint64_t now = dmx_now_ns(), oldest = 0;
	unsigned i, k, inflight = 0, stuck = 0;

	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&ps->mu);
	for (i = 0; i < ps->nchild; i++) {
		proc_child *ch = &ps->child[i];

		if (ch->state == CH_FREE)
			continue;
		inflight += ch->n;
		for (k = 0; k < ch->cap; k++) {
			proc_call *c = &ch->calls[k];
			uint64_t age;

			if (c->id == 0 || c->dead)
				continue;
			age = now - c->job->t_dispatch;
			if (age > oldest)
				oldest = age;
			if (age / 1000000u > stuck_ms)
				stuck++;
		}
	}
	pthread_mutex_unlock(&ps->mu);
	out->workers = (int)ps->processes;
	out->busy = (int)inflight;
	out->stuck = stuck;
	out->longest_ms = oldest / 1000000u;
}

static unsigned
op_running(dmx_exec *e, const void *stats, const void *pl)
{
	dmx_procs *ps = (dmx_procs *)e;
	unsigned i, k, n = 0;

	(void)pl;
	pthread_mutex_lock(&ps->mu);
	for (i = 0; i < ps->nchild; i++) {
		proc_child *ch = &ps->child[i];

		for (k = 0; k < ch->cap; k++)
			if (ch->calls[k].id != 0 && !ch->calls[k].dead &&
			    (stats == NULL ||
			    (const void *)ch->calls[k].job->route->stats ==
			    stats))
				n++;
	}
	pthread_mutex_unlock(&ps->mu);
	return n;
}

static unsigned
op_stuck_in(dmx_exec *e, uint64_t stuck_ms, const void *pl)
{
	dmx_exec_info in;

	(void)pl;
	op_info(e, stuck_ms, &in);
	return in.stuck;
}

static int
op_procs(dmx_exec *e, dmx_exec_procs *out)
{
	dmx_procs *ps = (dmx_procs *)e;
	unsigned i, k;

	memset(out, 0, sizeof(*out));
	out->processes = ps->processes;
	pthread_mutex_lock(&ps->mu);
	for (i = 0; i < ps->nchild; i++) {
		proc_child *ch = &ps->child[i];
		dmx_exec_child *c;

		if (ch->state == CH_FREE)
			continue;
		if (ch->state == CH_UP || ch->state == CH_LEAVING)
			out->up++;
		if (out->nchildren == DMX_EXEC_CHILDREN)
			continue;
		c = &out->child[out->nchildren++];
		c->pid = ch->pid;
		c->up = ch->state == CH_UP || ch->state == CH_LEAVING;
		c->started_ms = ch->started_ms;
		c->calls = atomic_load(&ch->served);
		c->rss_kb = atomic_load(&ch->rss_kb);
	}
	pthread_mutex_unlock(&ps->mu);
	out->crashes = atomic_load(&ps->crashes);
	for (k = 0; k < 65; k++)
		out->crash_sig[k] = atomic_load(&ps->crash_sig[k]);
	out->kills = atomic_load(&ps->kills);
	out->recycles_requests = atomic_load(&ps->recycles_requests);
	out->recycles_rss = atomic_load(&ps->recycles_rss);
	out->respawns = atomic_load(&ps->respawns);
	return 1;
}

static void op_free(dmx_exec *e);

static const dmx_exec_ops procs_ops = {
	"processes", op_submit, op_requeue, op_info, op_running, op_stuck_in,
	op_free, op_cancel, op_procs, NULL, NULL
};

/* ---- creating and freeing ---- */

/* The host message: [2, "$/host", [{...}]] with what a child needs. */
static int
build_hello(dmx_procs *ps, const dmx_conf_plugin *cp, const dmx_config *cfg)
{
	msgpack_packer pk;
	int workers = cp->workers > 0 ? cp->workers : cfg->workers;
	char open_path[32];

	snprintf(open_path, sizeof(open_path), "/proc/self/fd/4");
	msgpack_packer_init(&pk, &ps->hello, dmx_buf_pack_write);
	dmx_msg_notify_head(&pk, "$/host", 6);
	msgpack_pack_array(&pk, 1);
	msgpack_pack_map(&pk, 14);
	dmx_pack_cstr(&pk, "send_traces");
	msgpack_pack_int(&pk, cfg->send_traces);
	dmx_pack_cstr(&pk, "name");
	if (cp->name != NULL)
		dmx_pack_cstr(&pk, cp->name);
	else
		msgpack_pack_nil(&pk);
	dmx_pack_cstr(&pk, "path");
	dmx_pack_cstr(&pk, cp->path);
	dmx_pack_cstr(&pk, "open");
	dmx_pack_cstr(&pk, open_path);
	dmx_pack_cstr(&pk, "config");
	if (cp->config != NULL)
		dmx_buf_append(&ps->hello, cp->config, cp->config_len);
	else
		msgpack_pack_nil(&pk);
	dmx_pack_cstr(&pk, "workers");
	msgpack_pack_int(&pk, workers);
	dmx_pack_cstr(&pk, "max_threads");
	msgpack_pack_int(&pk, cfg->max_threads);
	dmx_pack_cstr(&pk, "queue");
	msgpack_pack_unsigned_int(&pk, cp->workers > 0 ? cp->queue :
	    cfg->queue);
	dmx_pack_cstr(&pk, "max_frame");
	msgpack_pack_uint64(&pk, cfg->max_frame);
	dmx_pack_cstr(&pk, "log_level");
	msgpack_pack_int(&pk, dmx_log_get_level());
	dmx_pack_cstr(&pk, "file");
	dmx_pack_cstr(&pk, cfg->file ? cfg->file : "");
	dmx_pack_cstr(&pk, "line");
	msgpack_pack_int(&pk, cp->line);
	dmx_pack_cstr(&pk, "user");
	if (cp->user)
		dmx_pack_cstr(&pk, cp->user);
	else
		msgpack_pack_nil(&pk);
	dmx_pack_cstr(&pk, "group");
	if (cp->group)
		dmx_pack_cstr(&pk, cp->group);
	else
		msgpack_pack_nil(&pk);
	return ps->hello.data == NULL ? -1 : 0;
}

void
dmx_proc_report_free(dmx_proc_report *r)
{
	size_t i;

	if (r == NULL)
		return;
	free(r->name);
	free(r->version);
	for (i = 0; r->methods != NULL && r->methods[i] != NULL; i++)
		free(r->methods[i]);
	free(r->methods);
	for (i = 0; r->watch != NULL && r->watch[i] != NULL; i++)
		free(r->watch[i]);
	free(r->watch);
	memset(r, 0, sizeof(*r));
}

static void
procs_destroy(dmx_procs *ps)
{
	unsigned i;

	for (i = 0; i < 2 * MAX_CHILDREN; i++) {
		dmx_buf_release(&ps->child[i].out);
		dmx_buf_release(&ps->child[i].in);
		free(ps->child[i].calls);
	}
	dmx_proc_report_free(&ps->report);
	dmx_buf_release(&ps->hello);
	if (ps->sofd >= 0)
		close(ps->sofd);
	if (ps->wakefd >= 0)
		close(ps->wakefd);
	pthread_cond_destroy(&ps->cv);
	pthread_mutex_destroy(&ps->mu);
	free(ps->name);
	free(ps->cfgfile);
	free(ps);
}

dmx_exec *
dmx_procs_new(const dmx_conf_plugin *cp, const dmx_config *cfg,
    const dmx_exec_hooks *hooks, dmx_proc_report *rep, char *err,
    size_t errlen)
{
	dmx_procs *ps;
	const char *base;
	unsigned i, up;
	int rc, workers = cp->workers > 0 ? cp->workers : cfg->workers;
	struct timespec dl;

	memset(rep, 0, sizeof(*rep));
	ps = calloc(1, sizeof(*ps));
	if (ps == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	ps->base.ops = &procs_ops;
	ps->hooks = *hooks;
	base = strrchr(cp->path, '/');
	ps->name = strdup(cp->name ? cp->name : base ? base + 1 : cp->path);
	ps->cfgfile = strdup(cfg->file ? cfg->file : "");
	ps->line = cp->line;
	ps->col = cp->col;
	ps->processes = cp->processes ? cp->processes : 1;
	ps->limit = cp->queue > 0 ? (unsigned)(workers > 0 ? workers :
	    cfg->max_threads) + cp->queue : 0;
	ps->kill_after_ms = cp->kill_after_ms;
	ps->max_requests = cp->max_requests;
	ps->max_rss_kb = cp->max_rss_mb * 1024u;
	ps->respawn_min_ms = cp->respawn_min_ms ? cp->respawn_min_ms : 1;
	ps->respawn_max_ms = cp->respawn_max_ms >= ps->respawn_min_ms ?
	    cp->respawn_max_ms : ps->respawn_min_ms;
	pthread_mutex_init(&ps->mu, NULL);
	{
		pthread_condattr_t ca;

		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&ps->cv, &ca);
		pthread_condattr_destroy(&ca);
	}
	for (i = 0; i < 2 * MAX_CHILDREN; i++) {
		ps->child[i].fd = ps->child[i].errfd = -1;
		ps->child[i].pid = -1;
	}
	ps->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	/* kept at 5 or above: the children's 3 and 4 are dup2'ed from it */
	{
		int fd = open(cp->path, O_RDONLY | O_CLOEXEC);

		ps->sofd = fd < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 5);
		if (fd >= 0)
			close(fd);
	}
	if (ps->name == NULL || ps->cfgfile == NULL || ps->wakefd < 0 ||
	    ps->sofd < 0 || build_hello(ps, cp, cfg) != 0) {
		snprintf(err, errlen, "%s:%d:%d: plugin '%s': %s", cfg->file,
		    cp->line, cp->col, ps->name ? ps->name : cp->path,
		    ps->sofd < 0 ? strerror(errno) : "out of memory");
		procs_destroy(ps);
		return NULL;
	}

	/* the children, then the link thread that serves them; wait until
	 * each has run init (or one failed) */
	pthread_mutex_lock(&ps->mu);
	proc_ensure_children_locked(ps, dmx_now_ns());
	pthread_mutex_unlock(&ps->mu);
	rc = pthread_create(&ps->link, NULL, proc_link_main, ps);
	if (rc != 0) {
		snprintf(err, errlen, "%s:%d:%d: plugin '%s': cannot start its "
		    "link thread: %s", cfg->file, cp->line, cp->col, ps->name,
		    strerror(rc));
		pthread_mutex_lock(&ps->mu);
		ps->stop = 1;
		for (i = 0; i < ps->nchild; i++)
			if (ps->child[i].state != CH_FREE)
				kill(ps->child[i].pid, SIGKILL);
		pthread_mutex_unlock(&ps->mu);
		for (i = 0; i < ps->nchild; i++)
			if (ps->child[i].state != CH_FREE) {
				close(ps->child[i].fd);
				close(ps->child[i].errfd);
				proc_reap(ps->child[i].pid);
			}
		procs_destroy(ps);
		return NULL;
	}
	clock_gettime(CLOCK_MONOTONIC, &dl);
	dl.tv_sec += START_TIMEOUT_MS / 1000 + 1;
	pthread_mutex_lock(&ps->mu);
	for (;;) {
		for (i = 0, up = 0; i < ps->nchild; i++)
			up += ps->child[i].state == CH_UP;
		if (ps->failed || up >= ps->processes)
			break;
		if (pthread_cond_timedwait(&ps->cv, &ps->mu, &dl) == ETIMEDOUT) {
			ps->failed = 1;
			snprintf(ps->failure, sizeof(ps->failure), "its "
			    "process was not ready within %u ms",
			    START_TIMEOUT_MS);
			break;
		}
	}
	if (ps->failed) {
		char why[512];

		snprintf(why, sizeof(why), "%s", ps->failure);
		pthread_mutex_unlock(&ps->mu);
		snprintf(err, errlen, "%s:%d:%d: plugin '%s' (isolation: "
		    "process): its child could not start: %s", cfg->file,
		    cp->line, cp->col, ps->name, why);
		op_free(&ps->base);
		return NULL;
	}
	*rep = ps->report;
	memset(&ps->report, 0, sizeof(ps->report));
	ps->fails = 0;
	pthread_mutex_unlock(&ps->mu);
	return &ps->base;
}

/* Every call in flight is answered first (children finish them), then the
 * children retire: fini runs in each, and they exit. */
static void
op_free(dmx_exec *e)
{
	dmx_procs *ps = (dmx_procs *)e;
	unsigned i;

	pthread_mutex_lock(&ps->mu);
	ps->stop = 1;
	for (i = 0; i < ps->nchild; i++) {
		proc_child *ch = &ps->child[i];

		if (ch->state == CH_STARTING)
			kill(ch->pid, SIGKILL);
		else if (ch->state == CH_UP || ch->state == CH_LEAVING)
			ch->state = CH_RETIRING;
	}
	pthread_mutex_unlock(&ps->mu);
	proc_wake(ps);
	pthread_join(ps->link, NULL);
	procs_destroy(ps);
}
