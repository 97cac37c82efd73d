/*
 * proc.c - the process executor: a plugin's children, the calls in flight
 * in each, their deaths, kills, recycles and respawns. See proc.h.
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
#include "proc.h"
#include "router.h"

extern char **environ;

#define MAX_CHILDREN	256		/* processes: at most (config.c) */
#define START_TIMEOUT_MS 30000		/* spawn to $/plugins answered */
#define SERVED_RESET_NS	(30ull * 1000000000u) /* backoff reset */
#define TICK_MS		250		/* kills, RSS, recycles, respawns */
#define READ_CHUNK	(64u << 10)
#define RETIRE_GRACE_MS	10000		/* a retired child's fini and exit */

enum ch_state {
	CH_FREE, CH_STARTING, CH_UP, CH_LEAVING, CH_RETIRING,
	CH_EXITING,	/* retired, socket closed: reaped by tick */
	CH_DYING,	/* gone unasked: the link thread reaps it now */
};

typedef struct proc_call {
	uint32_t	 id;		/* the child's msgid; 0: a free slot */
	uint32_t	 dead;		/* removed (a tombstone) */
	dmx_job		*job;
	uint64_t	 seq;		/* job->seq when sent */
	uint64_t	 kill_at;	/* ns; 0: no deadline */
} proc_call;

typedef struct proc_child {
	_Atomic int	 state;		/* enum ch_state: written under mu; the
					 * link thread reads it without */
	pid_t		 pid;
	int		 fd;		/* our end of the socketpair */
	int		 errfd;		/* its stderr and stdout */
	uint64_t	 started_ns, up_ns;
	uint64_t	 started_ms;	/* wall clock */
	_Atomic uint64_t served;
	_Atomic uint64_t rss_kb;
	uint32_t	 next_id;	/* mu */
	uint32_t	 plugins_id;	/* the handshake's $/plugins */
	proc_call	*calls;		/* mu: open addressing by id */
	unsigned	 cap, n, used;	/* mu: slots, live, live + tombstones */
	dmx_buf		 out;		/* mu: requests not yet written */
	size_t		 out_off;	/* mu */
	int		 want_out;	/* mu: the link thread must write */
	dmx_buf		 in;		/* link: a partial frame */
	dmx_scan	 scan;		/* link */
	char		 line[1024];	/* link: a partial stderr line */
	size_t		 linelen;
	char		 why[256];	/* mu: why we killed it, if we did */
	int		 recycle;	/* 1 requests, 2 rss (while LEAVING) */
	int		 shut;		/* mu: shutdown(SHUT_WR) sent */
	uint64_t	 exit_by;	/* EXITING: SIGKILL after this (ns) */
} proc_child;

typedef struct dmx_procs {
	dmx_exec	 base;		/* first */
	dmx_exec_hooks	 hooks;
	char		*name;		/* for messages */
	char		*cfgfile;
	int		 line, col;
	dmx_buf		 hello;		/* the $/host message every child gets */
	int		 sofd;		/* the .so as it was when configured */
	unsigned	 processes;
	unsigned	 limit;		/* calls in flight per child; 0: none */
	unsigned	 kill_after_ms;
	uint64_t	 max_requests, max_rss_kb;
	unsigned	 respawn_min_ms, respawn_max_ms;

	pthread_mutex_t	 mu;
	pthread_cond_t	 cv;		/* start-up: a child came up or failed */
	proc_child	 child[2 * MAX_CHILDREN]; /* room to replace each */
	unsigned	 nchild;	/* slots in use at most */
	int		 stop;		/* mu: free has begun */
	unsigned	 fails;		/* mu: deaths in a row (backoff) */
	uint64_t	 respawn_at;	/* mu: ns; 0: now */
	char		 failure[512];	/* mu: start-up: why a child failed */
	int		 failed;	/* mu */
	dmx_proc_report	 report;	/* the first child's (mu) */
	int		 reported;
	pthread_t	 link;
	int		 wakefd;
	int		 kick;		/* link: a child changed: tick now */

	_Atomic uint64_t crashes, kills, respawns;
	_Atomic uint64_t recycles_requests, recycles_rss;
	_Atomic uint64_t crash_sig[65];
} dmx_procs;

static void
wake(dmx_procs *ps)
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

static proc_call *
calls_find(proc_child *ch, uint32_t id)
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

static void
calls_del(proc_child *ch, proc_call *c)
{
	c->dead = 1;
	c->job = NULL;
	ch->n--;
}

/* ---- finishing jobs ---- */

/* j was sent (RUNNING) and is answered now: by its child's answer in
 * j->out, or an error. 0 if it was answered early meanwhile: drop it. */
static int
job_done(dmx_job *j)
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

static void
push(dmx_job **list, dmx_job *j)
{
	j->next = *list;
	*list = j;
}

/* Answer every call in flight in ch -32014 (mu held); onto *list. */
static void
fail_calls(dmx_procs *ps, proc_child *ch, const char *how, dmx_job **list)
{
	char msg[512];
	unsigned i;

	for (i = 0; i < ch->cap; i++) {
		proc_call *c = &ch->calls[i];
		dmx_job *j = c->job;

		if (c->id == 0 || c->dead)
			continue;
		/* the job is ours until done has it: its seq cannot move */
		calls_del(ch, c);
		snprintf(msg, sizeof(msg), "%s: plugin crashed (%s); the "
		    "call's effect is unknown", j->route->name, how);
		dmx_job_set_error(j, DMX_E_PLUGIN_CRASHED, msg, NULL);
		job_done(j);
		push(list, j);
	}
	(void)ps;
	free(ch->calls);
	ch->calls = NULL;
	ch->cap = ch->n = ch->used = 0;
}

/* ---- writing to a child (mu) ---- */

/* Write what ch has queued, as far as the socket takes it. */
static void
flush_locked(dmx_procs *ps, proc_child *ch)
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
					wake(ps);
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
		push(done, j);
		return 1;
	}
	if (!j->notify) {
		do
			id = ++ch->next_id;
		while (id == 0 || calls_find(ch, id) != NULL);
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
	if (j->notify)
		dmx_msg_notify_head(&pk, j->route->name, j->route->len);
	else
		dmx_msg_request_head(&pk, id, j->route->name, j->route->len);
	dmx_buf_append(&ch->out, j->in.data + j->params_off, j->params_len);
	if (j->notify) {
		/* nothing comes back: it is done once it has left */
		j->out.len = 0;
		job_done(j);
		push(done, j);
	}
	return 1;
}

/* ---- the executor interface ---- */

static void
done_list(dmx_procs *ps, dmx_job *list)
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
			*rtail = j;
			rtail = &j->next;
		}
	}
	for (i = 0; i < ps->nchild; i++)
		if (ps->child[i].state != CH_FREE && !ps->child[i].want_out &&
		    ps->child[i].out.len > 0)
			flush_locked(ps, &ps->child[i]);
	pthread_mutex_unlock(&ps->mu);
	*rejected = rej;
	done_list(ps, done);
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
			dmx_job_set_error(rej, DMX_E_OVERLOADED, msg, NULL);
			job_done(rej);
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
				flush_locked(ps, ch);
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
	op_free, op_cancel, op_procs
};

/* ---- spawning ---- */

/* demuxd's own file, read once: valgrind (and the like) make readlink give
 * the program, where exec of /proc/self/exe would start the tool. */
static char self_exe[4096];
static pthread_once_t self_once = PTHREAD_ONCE_INIT;

static void
find_self(void)
{
	ssize_t n = readlink("/proc/self/exe", self_exe, sizeof(self_exe) - 1);

	if (n <= 0)
		snprintf(self_exe, sizeof(self_exe), "/proc/self/exe");
	else
		self_exe[n] = '\0';
}

/* Start a child into slot ch (mu held). 0, or -1 with why. */
static int
spawn_locked(dmx_procs *ps, proc_child *ch, char *why, size_t whylen)
{
	static char *const argv[] = { "demuxd", "--plugin-host", NULL };
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	sigset_t none;
	int sv[2], ep[2] = { -1, -1 }, rc;
	msgpack_packer pk;
	struct timespec ts;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0 ||
	    pipe2(ep, O_CLOEXEC) != 0) {
		snprintf(why, whylen, "socketpair/pipe: %s", strerror(errno));
		return -1;
	}
	posix_spawn_file_actions_init(&fa);
	/* descriptors 0-4 only: /dev/null, its stderr twice, the socket, the
	 * .so; nothing else of demuxd (no client socket, no listener) */
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, ep[1], 1);
	posix_spawn_file_actions_adddup2(&fa, ep[1], 2);
	posix_spawn_file_actions_adddup2(&fa, sv[1], 3);
	posix_spawn_file_actions_adddup2(&fa, ps->sofd, 4);
	posix_spawn_file_actions_addclosefrom_np(&fa, 5);
	posix_spawnattr_init(&at);
	sigemptyset(&none);
	posix_spawnattr_setsigmask(&at, &none);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK);
	pthread_once(&self_once, find_self);
	rc = posix_spawn(&ch->pid, self_exe, &fa, &at, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	close(sv[1]);
	close(ep[1]);
	if (rc != 0) {
		snprintf(why, whylen, "cannot start a process: %s",
		    strerror(rc));
		close(sv[0]);
		close(ep[0]);
		return -1;
	}
	fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
	fcntl(ep[0], F_SETFL, fcntl(ep[0], F_GETFL) | O_NONBLOCK);
	ch->fd = sv[0];
	ch->errfd = ep[0];
	ch->state = CH_STARTING;
	ch->started_ns = dmx_now_ns();
	clock_gettime(CLOCK_REALTIME, &ts);
	ch->started_ms = (uint64_t)ts.tv_sec * 1000u +
	    (uint64_t)ts.tv_nsec / 1000000u;
	ch->up_ns = 0;
	atomic_store(&ch->served, 0);
	atomic_store(&ch->rss_kb, 0);
	ch->next_id = 0;
	free(ch->calls);
	ch->calls = NULL;
	ch->cap = ch->n = ch->used = 0;
	ch->out.len = ch->out_off = 0;
	ch->want_out = 0;
	ch->in.len = 0;
	ch->scan = (dmx_scan)DMX_SCAN_INIT;
	ch->linelen = 0;
	ch->why[0] = '\0';
	ch->recycle = 0;
	ch->shut = 0;
	/* the host message, then $/plugins: its answer says init is done */
	dmx_buf_append(&ch->out, ps->hello.data, ps->hello.len);
	ch->plugins_id = ++ch->next_id;
	msgpack_packer_init(&pk, &ch->out, dmx_buf_pack_write);
	dmx_msg_request_head(&pk, ch->plugins_id, "$/plugins", 9);
	msgpack_pack_array(&pk, 0);
	flush_locked(ps, ch);
	dmx_debug("plugin %s: child %d started", ps->name, (int)ch->pid);
	return 0;
}

/* Children serving or on their way, not counting those leaving. */
static unsigned
live_locked(dmx_procs *ps)
{
	unsigned i, n = 0;

	for (i = 0; i < ps->nchild; i++)
		if (ps->child[i].state == CH_STARTING ||
		    ps->child[i].state == CH_UP)
			n++;
	return n;
}

static proc_child *
free_slot_locked(dmx_procs *ps)
{
	unsigned i;

	for (i = 0; i < 2 * MAX_CHILDREN; i++)
		if (ps->child[i].state == CH_FREE) {
			if (i >= ps->nchild)
				ps->nchild = i + 1;
			return &ps->child[i];
		}
	return NULL;
}

static uint64_t
backoff_ns(const dmx_procs *ps, unsigned fails)
{
	uint64_t ms = ps->respawn_min_ms;

	while (fails-- > 1 && ms < ps->respawn_max_ms)
		ms *= 2;
	if (ms > ps->respawn_max_ms)
		ms = ps->respawn_max_ms;
	return ms * 1000000u;
}

/* Keep `processes` children serving or starting (mu held). */
static void
ensure_children_locked(dmx_procs *ps, uint64_t now)
{
	char why[256];
	proc_child *ch;

	while (!ps->stop && live_locked(ps) < ps->processes &&
	    now >= ps->respawn_at && (ch = free_slot_locked(ps)) != NULL) {
		if (spawn_locked(ps, ch, why, sizeof(why)) != 0) {
			dmx_warn("plugin %s: %s", ps->name, why);
			ps->fails++;
			ps->respawn_at = now + backoff_ns(ps, ps->fails);
			if (!ps->reported) {
				snprintf(ps->failure, sizeof(ps->failure), "%s",
				    why);
				ps->failed = 1;
				pthread_cond_broadcast(&ps->cv);
			}
			return;
		}
		if (ps->reported)
			atomic_fetch_add(&ps->respawns, 1);
	}
}

/* ---- reading from a child (the link thread) ---- */

static char *
dup_n(const char *s, uint32_t n)
{
	char *p = malloc((size_t)n + 1);

	if (p != NULL) {
		memcpy(p, s, n);
		p[n] = '\0';
	}
	return p;
}

/* The $/plugins answer of a new child: [{name, path, version, methods}] */
static int
read_report(dmx_procs *ps, dmx_rd *r)
{
	dmx_proc_report rep;
	uint32_t n, m, k, i, sl;
	const char *s;
	size_t nm = 0;

	memset(&rep, 0, sizeof(rep));
	if (dmx_rd_nil(r) != 0 || dmx_rd_array(r, &n) != 0 || n < 1 ||
	    dmx_rd_map(r, &m) != 0)
		return -1;
	for (k = 0; k < m; k++) {
		if (dmx_rd_str(r, &s, &sl) != 0)
			goto bad;
		if (sl == 4 && memcmp(s, "name", 4) == 0) {
			if (dmx_rd_str(r, &s, &sl) != 0)
				goto bad;
			rep.name = dup_n(s, sl);
		} else if (sl == 7 && memcmp(s, "version", 7) == 0) {
			if (dmx_rd_str(r, &s, &sl) != 0)
				goto bad;
			rep.version = dup_n(s, sl);
		} else if (sl == 7 && memcmp(s, "methods", 7) == 0) {
			uint32_t cnt;

			if (dmx_rd_array(r, &cnt) != 0)
				goto bad;
			rep.methods = calloc((size_t)cnt + 1, sizeof(char *));
			if (rep.methods == NULL)
				goto bad;
			for (i = 0; i < cnt; i++) {
				const char *dot;

				if (dmx_rd_str(r, &s, &sl) != 0)
					goto bad;
				dot = memchr(s, '.', sl);
				if (dot == NULL)
					goto bad;
				rep.methods[nm++] = dup_n(dot + 1,
				    (uint32_t)(sl - (uint32_t)(dot + 1 - s)));
			}
		} else if (dmx_rd_skip(r) != 0) {
			goto bad;
		}
	}
	if (rep.name == NULL || rep.methods == NULL)
		goto bad;
	if (!ps->reported) {
		ps->report = rep;
		ps->reported = 1;
	} else {
		dmx_proc_report_free(&rep);
	}
	return 0;
bad:
	dmx_proc_report_free(&rep);
	return -1;
}

/* One frame from child ch: an answer, or a notice. (link thread) */
static void
on_frame(dmx_procs *ps, proc_child *ch, const uint8_t *p, size_t len,
    dmx_job **done)
{
	uint64_t type, id;
	uint32_t n;
	proc_call *c;
	dmx_job *j;
	dmx_rd r, er;
	msgpack_packer pk;

	dmx_rd_init(&r, p, len);
	if (dmx_rd_array(&r, &n) != 0 || dmx_rd_uint(&r, &type) != 0)
		return;
	if (type == DMX_MSG_NOTIFY) {
		const char *m;
		uint32_t ml;

		/* a child that drains (someone sent it SIGTERM) takes nothing
		 * new: replace it */
		if (dmx_rd_str(&r, &m, &ml) == 0 && ml == 7 &&
		    memcmp(m, "$/drain", 7) == 0) {
			pthread_mutex_lock(&ps->mu);
			if (ch->state == CH_UP)
				ch->state = CH_LEAVING;
			pthread_mutex_unlock(&ps->mu);
		}
		return;
	}
	if (type != DMX_MSG_RESPONSE || n != 4 || dmx_rd_uint(&r, &id) != 0 ||
	    id > UINT32_MAX)
		return;
	pthread_mutex_lock(&ps->mu);
	if (ch->state == CH_STARTING && id == ch->plugins_id) {
		if (read_report(ps, &r) == 0) {
			ch->state = CH_UP;
			ch->up_ns = dmx_now_ns();
			ps->kick = 1;	/* a child it replaces may retire */
			pthread_cond_broadcast(&ps->cv);
			dmx_info("plugin %s: child %d serving", ps->name,
			    (int)ch->pid);
		} else {
			snprintf(ch->why, sizeof(ch->why), "its plugin host "
			    "answered $/plugins with something else");
			kill(ch->pid, SIGKILL);
		}
		pthread_mutex_unlock(&ps->mu);
		return;
	}
	c = calls_find(ch, (uint32_t)id);
	if (c == NULL) {
		pthread_mutex_unlock(&ps->mu);
		return;			/* cancelled and answered, or unknown */
	}
	j = c->job;
	calls_del(ch, c);
	if (atomic_fetch_add_explicit(&ch->served, 1, memory_order_relaxed) +
	    1 == ps->max_requests && ch->state == CH_UP) {
		/* its last call: a replacement starts now */
		ch->state = CH_LEAVING;
		ch->recycle = 1;
		atomic_fetch_add(&ps->recycles_requests, 1);
		ps->kick = 1;
		dmx_info("plugin %s: recycling child %d (max_requests %llu): "
		    "its replacement starts first", ps->name, (int)ch->pid,
		    (unsigned long long)ps->max_requests);
	}
	pthread_mutex_unlock(&ps->mu);
	/* [1, id, error, result] -> [1, msgid, error, result] */
	er = r;
	j->errored = 0;
	if (!dmx_rd_is_nil(&er)) {
		uint32_t en;
		int64_t code;

		if (dmx_rd_array(&er, &en) == 0 && en >= 1 &&
		    dmx_rd_int(&er, &code) == 0) {
			j->errored = 1;
			j->err_code = code;
		}
	}
	j->out.len = 0;
	msgpack_packer_init(&pk, &j->out, dmx_buf_pack_write);
	dmx_msg_response_head(&pk, j->msgid);
	dmx_buf_append(&j->out, r.p, dmx_rd_left(&r));
	job_done(j);
	push(done, j);
}

/* Read what ch sent; 1 at EOF or on an error (it is gone). */
static int
read_child(dmx_procs *ps, proc_child *ch, dmx_job **done)
{
	size_t off, flen, need;
	ssize_t n;
	int rc;

	for (;;) {
		need = dmx_scan_need(&ch->scan);
		if (dmx_buf_reserve(&ch->in, need > ch->in.len &&
		    need - ch->in.len > READ_CHUNK ? need - ch->in.len :
		    READ_CHUNK) != 0)
			return 1;
		n = read(ch->fd, ch->in.data + ch->in.len,
		    ch->in.cap - ch->in.len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return 0;
		if (n <= 0)
			return 1;
		ch->in.len += (size_t)n;
		for (off = 0; off < ch->in.len; off += flen) {
			rc = dmx_scan_frame(&ch->scan, (uint8_t *)ch->in.data +
			    off, ch->in.len - off, SIZE_MAX / 2, &flen);
			if (rc == DMX_SCAN_MORE)
				break;
			if (rc != DMX_SCAN_FRAME)
				return 1;	/* not ours to parse: gone */
			on_frame(ps, ch, (uint8_t *)ch->in.data + off, flen,
			    done);
		}
		dmx_buf_consume(&ch->in, off);
		if (ch->in.len == 0)
			dmx_buf_shrink(&ch->in, READ_CHUNK);
	}
}

/* The last thing a child said, as the reason it could not start: without
 * the "demuxd: FILE:LINE:COL: " it puts before its own errors. */
static void
keep_failure(dmx_procs *ps, const char *t)
{
	size_t fl = strlen(ps->cfgfile);
	const char *p;

	if (strncmp(t, "demuxd: ", 8) == 0)
		t += 8;
	if (fl > 0 && strncmp(t, ps->cfgfile, fl) == 0 && t[fl] == ':' &&
	    (p = strstr(t + fl, ": ")) != NULL)
		t = p + 2;
	snprintf(ps->failure, sizeof(ps->failure), "%.*s",
	    (int)sizeof(ps->failure) - 1, t);
}

/* The child's stderr, a line at a time, into our log with its tag. */
static int
read_stderr(dmx_procs *ps, proc_child *ch)
{
	char buf[4096];
	ssize_t n;
	size_t i;

	for (;;) {
		n = read(ch->errfd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno == EAGAIN ? 0 : 1;
		if (n == 0)
			return 1;
		for (i = 0; i < (size_t)n; i++) {
			if (buf[i] != '\n' && ch->linelen < sizeof(ch->line) - 1) {
				ch->line[ch->linelen++] = buf[i];
				continue;
			}
			if (buf[i] != '\n')
				continue;	/* too long: cut */
			ch->line[ch->linelen] = '\0';
			{
				/* "TIME demuxd[PID] LEVEL: text": keep text */
				const char *t = strstr(ch->line, "] ");
				int lvl = DEMUX_LOG_WARN;

				t = t ? t + 2 : ch->line;
				if (strncmp(t, "info: ", 6) == 0)
					lvl = DEMUX_LOG_INFO, t += 6;
				else if (strncmp(t, "debug: ", 7) == 0)
					lvl = DEMUX_LOG_DEBUG, t += 7;
				else if (strncmp(t, "warn: ", 6) == 0)
					t += 6;
				else if (strncmp(t, "error: ", 7) == 0)
					lvl = DEMUX_LOG_ERROR, t += 7;
				dmx_log(lvl, "plugin %s (child %d): %s",
				    ps->name, (int)ch->pid, t);
				keep_failure(ps, t);
			}
			ch->linelen = 0;
		}
	}
}

static void
describe_status(int st, char *buf, size_t n)
{
	if (WIFSIGNALED(st)) {
		const char *ab = sigabbrev_np(WTERMSIG(st));

		if (ab != NULL)
			snprintf(buf, n, "SIG%s", ab);
		else
			snprintf(buf, n, "signal %d", WTERMSIG(st));
	} else if (WIFEXITED(st)) {
		snprintf(buf, n, "exit status %d", WEXITSTATUS(st));
	} else {
		snprintf(buf, n, "status 0x%x", st);
	}
}

/* Reap a child whose socket closed: it is dead or about to be. */
static int
reap(pid_t pid)
{
	int st = 0, i;
	pid_t r;

	for (i = 0; i < 1000; i++) {
		r = waitpid(pid, &st, WNOHANG);
		if (r == pid)
			return st;
		if (r < 0 && errno != EINTR)
			return 0;
		if (i == 500)
			kill(pid, SIGKILL);	/* it closed the socket and
						 * lingers: no more waiting */
		{
			struct timespec ts = { 0, 1000000 };

			nanosleep(&ts, NULL);
		}
	}
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	return st;
}

/* ch's socket closed: reap it, answer its calls, count it. */
static void
child_gone(dmx_procs *ps, proc_child *ch, dmx_job **done)
{
	char how[300], st_text[64];
	uint64_t now;
	int st, was, crashed;

	if (ch->errfd >= 0) {
		read_stderr(ps, ch);		/* its last words */
		close(ch->errfd);
		ch->errfd = -1;
	}
	now = dmx_now_ns();
	pthread_mutex_lock(&ps->mu);
	/* nobody may write to its descriptor once it is closed (it could be
	 * reused), nor send it a call: DYING until it is reaped */
	close(ch->fd);
	ch->fd = -1;
	was = ch->state;
	if (was == CH_RETIRING && ch->n == 0) {
		/* it closed after its last answer, as asked: its fini may
		 * take a while, the link thread does not wait for it */
		dmx_buf_release(&ch->out);
		dmx_buf_release(&ch->in);
		free(ch->calls);
		ch->calls = NULL;
		ch->cap = ch->n = ch->used = 0;
		ch->state = CH_EXITING;
		ch->exit_by = now + (uint64_t)RETIRE_GRACE_MS * 1000000u;
		pthread_mutex_unlock(&ps->mu);
		return;
	}
	ch->state = CH_DYING;
	pthread_mutex_unlock(&ps->mu);
	st = reap(ch->pid);
	describe_status(st, st_text, sizeof(st_text));
	pthread_mutex_lock(&ps->mu);
	crashed = 1;	/* it went before it was asked to */
	if (ch->why[0] != '\0')
		snprintf(how, sizeof(how), "%s", ch->why);
	else
		snprintf(how, sizeof(how), "%s", st_text);
	if (ch->n > 0)
		fail_calls(ps, ch, how, done);
	free(ch->calls);
	ch->calls = NULL;
	ch->cap = ch->n = ch->used = 0;
	dmx_buf_release(&ch->out);
	dmx_buf_release(&ch->in);
	ch->state = CH_FREE;
	ps->kick = 1;
	if (crashed && !ps->stop) {
		if (ch->up_ns != 0 && now - ch->up_ns >= SERVED_RESET_NS)
			ps->fails = 0;
		ps->fails++;
		ps->respawn_at = now + backoff_ns(ps, ps->fails);
		if (ch->why[0] == '\0') {
			atomic_fetch_add(&ps->crashes, 1);
			atomic_fetch_add(&ps->crash_sig[WIFSIGNALED(st) &&
			    WTERMSIG(st) < 65 ? WTERMSIG(st) : 0], 1);
		}
		if (!ps->reported) {
			ps->failed = 1;
			if (ps->failure[0] == '\0')
				snprintf(ps->failure, sizeof(ps->failure),
				    "its process ended (%s)", st_text);
			pthread_cond_broadcast(&ps->cv);
		}
		pthread_mutex_unlock(&ps->mu);
		if (!ps->reported)
			return;		/* start-up: the caller says why */
		dmx_warn("plugin %s: child %d %s (%s)%s; %s", ps->name,
		    (int)ch->pid, ch->why[0] ? "was killed" : "crashed",
		    how, was == CH_STARTING ? " while starting" : "",
		    ps->stop ? "not respawned (stopping)" :
		    "respawning after the backoff");
		return;
	}
	pthread_mutex_unlock(&ps->mu);
	dmx_info("plugin %s: child %d exited (%s)", ps->name, (int)ch->pid,
	    st_text);
}

/* ---- housekeeping (the link thread, every TICK_MS) ---- */

static uint64_t
rss_kb(pid_t pid)
{
	char path[64];
	unsigned long size, res;
	FILE *f;
	int ok;

	snprintf(path, sizeof(path), "/proc/%d/statm", (int)pid);
	if ((f = fopen(path, "r")) == NULL)
		return 0;
	ok = fscanf(f, "%lu %lu", &size, &res) == 2;
	fclose(f);
	return ok ? (uint64_t)res * (uint64_t)(sysconf(_SC_PAGESIZE) / 1024) :
	    0;
}

static void
tick(dmx_procs *ps, uint64_t now)
{
	unsigned i, k, up_new = 0;

	for (i = 0; i < ps->nchild; i++) {
		proc_child *ch = &ps->child[i];

		if (ch->state != CH_FREE && ch->pid > 0)
			atomic_store(&ch->rss_kb, rss_kb(ch->pid));
	}
	pthread_mutex_lock(&ps->mu);
	for (i = 0; i < ps->nchild; i++) {
		proc_child *ch = &ps->child[i];

		if (ch->state == CH_FREE || ch->why[0] != '\0')
			continue;
		if (ch->state == CH_STARTING && now - ch->started_ns >
		    (uint64_t)START_TIMEOUT_MS * 1000000u) {
			snprintf(ch->why, sizeof(ch->why), "killed: not ready "
			    "%u ms after it started", START_TIMEOUT_MS);
			kill(ch->pid, SIGKILL);
			continue;
		}
		/* a call still running kill_after_ms past its deadline */
		for (k = 0; k < ch->cap; k++) {
			proc_call *c = &ch->calls[k];

			if (c->id == 0 || c->dead || c->kill_at == 0 ||
			    now < c->kill_at)
				continue;
			snprintf(ch->why, sizeof(ch->why), "killed: %s still "
			    "running %u ms after its deadline (timeout_ms %u + "
			    "kill_after_ms %u)", c->job->route->name,
			    ps->kill_after_ms, c->job->route->timeout_ms,
			    ps->kill_after_ms);
			atomic_fetch_add(&ps->kills, 1);
			kill(ch->pid, SIGKILL);
			break;
		}
		if (ch->why[0] != '\0' || ch->state != CH_UP)
			continue;
		if (ps->max_rss_kb > 0 &&
		    atomic_load(&ch->rss_kb) > ps->max_rss_kb)
			ch->recycle = 2;
		if (ch->recycle) {
			ch->state = CH_LEAVING;
			atomic_fetch_add(&ps->recycles_rss, 1);
			dmx_info("plugin %s: recycling child %d (max_rss_mb "
			    "%llu: %llu KiB resident): its replacement starts "
			    "first", ps->name, (int)ch->pid,
			    (unsigned long long)ps->max_rss_kb / 1024,
			    (unsigned long long)atomic_load(&ch->rss_kb));
		}
	}
	for (i = 0; i < ps->nchild; i++)
		if (ps->child[i].state == CH_UP)
			up_new++;
	for (i = 0; i < ps->nchild; i++) {
		proc_child *ch = &ps->child[i];

		/* a leaving child retires once enough others serve (or we
		 * stop); a retiring one is told so once it has no calls */
		if (ch->state == CH_LEAVING &&
		    (up_new >= ps->processes || ps->stop))
			ch->state = CH_RETIRING;
		if (ch->state == CH_RETIRING && ch->n == 0 &&
		    ch->out.len == 0 && ch->fd >= 0 && !ch->shut) {
			shutdown(ch->fd, SHUT_WR);
			ch->shut = 1;
		}
		/* a retired child runs fini and exits: reap it, or end it */
		if (ch->state == CH_EXITING) {
			int st;

			if (waitpid(ch->pid, &st, WNOHANG) == ch->pid) {
				char t[64];

				describe_status(st, t, sizeof(t));
				dmx_info("plugin %s: child %d retired (%s)",
				    ps->name, (int)ch->pid, t);
				ch->state = CH_FREE;
			} else if (now >= ch->exit_by) {
				dmx_warn("plugin %s: child %d still running %u "
				    "ms after it retired: killed", ps->name,
				    (int)ch->pid, RETIRE_GRACE_MS);
				kill(ch->pid, SIGKILL);
				ch->exit_by = UINT64_MAX;
			}
		}
	}
	ensure_children_locked(ps, now);
	pthread_mutex_unlock(&ps->mu);
}

/* ---- the link thread ---- */

static void *
link_main(void *arg)
{
	dmx_procs *ps = arg;
	struct pollfd pfd[1 + 4 * MAX_CHILDREN];
	proc_child *who[1 + 4 * MAX_CHILDREN];
	int kind[1 + 4 * MAX_CHILDREN];
	uint64_t now, next_tick = 0;
	unsigned i, np, live;
	dmx_job *done;
	int timeout;

	for (;;) {
		np = 0;
		pfd[np].fd = ps->wakefd;
		pfd[np].events = POLLIN;
		who[np] = NULL;
		kind[np++] = 0;
		pthread_mutex_lock(&ps->mu);
		live = 0;
		for (i = 0; i < ps->nchild; i++) {
			proc_child *ch = &ps->child[i];

			if (ch->state == CH_FREE)
				continue;
			live++;
			if (ch->state == CH_EXITING || ch->state == CH_DYING)
				continue;
			pfd[np].fd = ch->fd;
			pfd[np].events = POLLIN | (ch->want_out ? POLLOUT : 0);
			who[np] = ch;
			kind[np++] = 1;
			if (ch->errfd >= 0) {
				pfd[np].fd = ch->errfd;
				pfd[np].events = POLLIN;
				who[np] = ch;
				kind[np++] = 2;
			}
		}
		if (ps->stop && live == 0) {
			pthread_mutex_unlock(&ps->mu);
			break;
		}
		pthread_mutex_unlock(&ps->mu);
		now = dmx_now_ns();
		timeout = next_tick > now ? (int)((next_tick - now) /
		    1000000u) + 1 : 0;
		pthread_mutex_lock(&ps->mu);
		if (!ps->stop && live_locked(ps) < ps->processes) {
			/* a respawn is due: wake for it */
			int r = ps->respawn_at > now ? (int)((ps->respawn_at -
			    now) / 1000000u) + 1 : 0;

			if (r < timeout)
				timeout = r;
		}
		pthread_mutex_unlock(&ps->mu);
		if (poll(pfd, np, timeout) < 0 && errno != EINTR) {
			dmx_error("plugin %s: poll: %s", ps->name,
			    strerror(errno));
			break;
		}
		done = NULL;
		if (pfd[0].revents & POLLIN) {
			uint64_t v;

			if (read(ps->wakefd, &v, sizeof(v)) < 0 &&
			    errno != EAGAIN)
				dmx_warn("eventfd read: %s", strerror(errno));
		}
		for (i = 1; i < np; i++) {
			proc_child *ch = who[i];

			if (pfd[i].revents == 0 || ch->state == CH_FREE ||
			    ch->state == CH_EXITING)
				continue;
			if (kind[i] == 2) {
				if (read_stderr(ps, ch)) {
					close(ch->errfd);
					ch->errfd = -1;
				}
				continue;
			}
			if (pfd[i].revents & POLLOUT) {
				pthread_mutex_lock(&ps->mu);
				flush_locked(ps, ch);
				pthread_mutex_unlock(&ps->mu);
			}
			if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR) &&
			    read_child(ps, ch, &done))
				child_gone(ps, ch, &done);
		}
		done_list(ps, done);
		now = dmx_now_ns();
		if (ps->kick || now >= next_tick) {
			ps->kick = 0;
			tick(ps, now);
			if (now >= next_tick)
				next_tick = now + TICK_MS * 1000000ull;
		} else {
			pthread_mutex_lock(&ps->mu);
			if (!ps->stop && live_locked(ps) < ps->processes &&
			    now >= ps->respawn_at)
				ensure_children_locked(ps, now);
			pthread_mutex_unlock(&ps->mu);
		}
	}
	return NULL;
}

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
	msgpack_pack_map(&pk, 13);
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
	ensure_children_locked(ps, dmx_now_ns());
	pthread_mutex_unlock(&ps->mu);
	rc = pthread_create(&ps->link, NULL, link_main, ps);
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
				reap(ps->child[i].pid);
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
	wake(ps);
	pthread_join(ps->link, NULL);
	procs_destroy(ps);
}
