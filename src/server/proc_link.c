/*
 * proc_link.c - the process executor's link thread: spawning children,
 * reading their answers, stderr and exits, answering the calls of one that
 * died, and the housekeeping (kills past kill_after_ms, RSS, recycles,
 * respawns with the backoff). See proc.c for a child's life and the locks.
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
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../common/clock.h"
#include "../common/msg.h"
#include "../common/text.h"
#include "log.h"
#include "proc_impl.h"
#include "router.h"

extern char **environ;

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
		proc_calls_del(ch, c);
		snprintf(msg, sizeof(msg), "%s: plugin crashed (%s); the "
		    "call's effect is unknown", j->route->name, how);
		dmx_job_set_error(j, DMX_E_PLUGIN_CRASHED, msg, NULL);
		proc_job_done(j);
		proc_push(list, j);
	}
	(void)ps;
	free(ch->calls);
	ch->calls = NULL;
	ch->cap = ch->n = ch->used = 0;
}

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
	ch->as[0] = '\0';
	/* the host message, then $/plugins: its answer says init is done */
	dmx_buf_append(&ch->out, ps->hello.data, ps->hello.len);
	ch->plugins_id = ++ch->next_id;
	msgpack_packer_init(&pk, &ch->out, dmx_buf_pack_write);
	dmx_msg_request_head(&pk, ch->plugins_id, "$/plugins", 9);
	msgpack_pack_array(&pk, 0);
	proc_flush_locked(ps, ch);
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
void
proc_ensure_children_locked(dmx_procs *ps, uint64_t now)
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
			rep.name = dmx_strndup(s, sl);
		} else if (sl == 7 && memcmp(s, "version", 7) == 0) {
			if (dmx_rd_str(r, &s, &sl) != 0)
				goto bad;
			rep.version = dmx_strndup(s, sl);
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
				rep.methods[nm++] = dmx_strndup(dot + 1,
				    (uint32_t)(sl - (uint32_t)(dot + 1 - s)));
			}
		} else if (sl == 5 && memcmp(s, "watch", 5) == 0) {
			uint32_t cnt;

			if (dmx_rd_array(r, &cnt) != 0)
				goto bad;
			rep.watch = calloc((size_t)cnt + 1, sizeof(char *));
			if (rep.watch == NULL)
				goto bad;
			for (i = 0; i < cnt; i++) {
				if (dmx_rd_str(r, &s, &sl) != 0)
					goto bad;
				rep.watch[i] = dmx_strndup(s, sl);
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
	c = proc_calls_find(ch, (uint32_t)id);
	if (c == NULL) {
		pthread_mutex_unlock(&ps->mu);
		return;			/* cancelled and answered, or unknown */
	}
	j = c->job;
	proc_calls_del(ch, c);
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
		const char *ms = NULL;
		uint32_t en, ml = 0;
		int64_t code;

		if (dmx_rd_array(&er, &en) == 0 && en >= 1 &&
		    dmx_rd_int(&er, &code) == 0) {
			j->errored = 1;
			j->err_code = code;
			if (j->err_string) {
				/* the child packs [code, message, trace]: this
				 * client reads errors as one string */
				char *m = en >= 2 && dmx_rd_str(&er, &ms,
				    &ml) == 0 ? dmx_strndup(ms, ml) : NULL;

				dmx_job_set_error(j, code, m, NULL);
				free(m);
				proc_job_done(j);
				proc_push(done, j);
				return;
			}
		}
	}
	j->out.len = 0;
	msgpack_packer_init(&pk, &j->out, dmx_buf_pack_write);
	dmx_msg_response_head(&pk, j->msgid);
	dmx_buf_append(&j->out, r.p, dmx_rd_left(&r));
	proc_job_done(j);
	proc_push(done, j);
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
int
proc_reap(pid_t pid)
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
	st = proc_reap(ch->pid);
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

static void
tick(dmx_procs *ps, uint64_t now)
{
	unsigned i, k, up_new = 0;

	for (i = 0; i < ps->nchild; i++) {
		proc_child *ch = &ps->child[i];

		if (ch->state != CH_FREE && ch->pid > 0)
			atomic_store(&ch->rss_kb, dmx_rss_kb(ch->pid));
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
	proc_ensure_children_locked(ps, now);
	pthread_mutex_unlock(&ps->mu);
}

/* ---- the link thread ---- */

void *
proc_link_main(void *arg)
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
				proc_flush_locked(ps, ch);
				pthread_mutex_unlock(&ps->mu);
			}
			if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR) &&
			    read_child(ps, ch, &done))
				child_gone(ps, ch, &done);
		}
		proc_done_list(ps, done);
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
				proc_ensure_children_locked(ps, now);
			pthread_mutex_unlock(&ps->mu);
		}
	}
	return NULL;
}
