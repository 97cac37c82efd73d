/*
 * proc.h - the process executor (exec.h): a plugin with `isolation:
 * process` runs in child processes, never in demuxd.
 *
 * Each child is demuxd itself, started with fork+exec (posix_spawn) in
 * plugin-host mode (host.c): it loads the .so, runs init, and serves the
 * plugin's methods over a socketpair with the same MessagePack-RPC framing
 * as the wire, on its own thread pool. demuxd shares no memory with it. A
 * child that dies answers every call it had -32014 at once and is
 * respawned with a backoff; a call still running kill_after_ms past its
 * deadline gets its child killed; a child past max_requests or max_rss_mb
 * is replaced first, then retired gracefully. While no child is up, calls
 * are refused -32010 (not executed).
 *
 * One thread per executor (the link) reads every child's answers, stderr
 * and exit; requests are written by whoever submits them, so the request
 * path has no hand-off on this side.
 *
 * Locks: the executor's mu guards its children and their tables; it is
 * never held while calling a hook (admit, done) or a connection.
 */
#ifndef DMX_PROC_H
#define DMX_PROC_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "exec.h"

/* What the first child said of the plugin, for routing (dmx_plugin_remote).
 * Owned by the caller: dmx_proc_report_free. */
typedef struct dmx_proc_report {
	char	 *name;
	char	 *version;
	char	**methods;	/* short names, NULL-terminated */
	char	**watch;	/* files its reload checks, NULL-terminated,
				 * or NULL */
} dmx_proc_report;

void dmx_proc_report_free(dmx_proc_report *r);

/*
 * Start the children of plugin cp (of configuration cfg) and wait until
 * each has loaded the plugin and run its init. Returns the executor and
 * the plugin's description in *rep, or NULL with "FILE:LINE:COL: plugin
 * 'x': ..." and the child's own reason in err (nothing is left running).
 */
dmx_exec *dmx_procs_new(const dmx_conf_plugin *cp, const dmx_config *cfg,
    const dmx_exec_hooks *hooks, dmx_proc_report *rep, char *err,
    size_t errlen);

/* The child side: `demuxd --plugin-host`, serving on descriptor fd. Returns
 * the process's exit status. (host.c) */
int dmx_plugin_host_main(int fd);

#endif
