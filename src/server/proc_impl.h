/*
 * proc_impl.h - the process executor's own header: the children, their
 * calls, and what proc.c (the executor interface, creating and freeing)
 * and proc_link.c (the link thread: spawning, reading, deaths, kills,
 * recycles) share. Nobody else includes it; see proc.h.
 */
#ifndef DMX_PROC_IMPL_H
#define DMX_PROC_IMPL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "../common/buf.h"
#include "../common/wire.h"
#include "job.h"
#include "proc.h"

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
	char		 as[128];	/* mu: the identity it was last told */
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

/* ---- proc.c ---- */
void	 proc_wake(dmx_procs *ps);			/* any thread */
/* The table of calls in flight (mu held). */
proc_call *proc_calls_find(proc_child *ch, uint32_t id);
void	 proc_calls_del(proc_child *ch, proc_call *c);
/* j (RUNNING) is answered now: 0 if it was answered early meanwhile. */
int	 proc_job_done(dmx_job *j);
void	 proc_push(dmx_job **list, dmx_job *j);
/* Hand a list of finished jobs to the done hook, in order (no lock). */
void	 proc_done_list(dmx_procs *ps, dmx_job *list);
/* Write what ch has queued, as far as its socket takes it (mu held). */
void	 proc_flush_locked(dmx_procs *ps, proc_child *ch);

/* ---- proc_link.c ---- */
/* Keep `processes` children serving or starting (mu held). */
void	 proc_ensure_children_locked(dmx_procs *ps, uint64_t now);
void	*proc_link_main(void *arg);
/* Reap a child that is dead or about to be; its wait status. */
int	 proc_reap(pid_t pid);

#endif
