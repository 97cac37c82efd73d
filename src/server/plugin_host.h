/*
 * plugin_host.h - loading handler plugins: dlopen, ABI checks, init/fini.
 *
 * Each stage that can fail (open, entry symbol, magic, ABI, descriptor, init)
 * is reported separately with the configuration position, the plugin's name
 * and path, and the copied dlerror() text or the plugin's own message.
 */
#ifndef DMX_PLUGIN_HOST_H
#define DMX_PLUGIN_HOST_H

#include <msgpack.h>

#include "config.h"
#include "demux/plugin.h"

typedef struct dmx_plugin {
	char		   *name;	/* routing prefix */
	char		   *path;
	char		   *version;	/* the descriptor's, or "" */
	int		    process;	/* isolation: process: it runs in
					 * children, desc and handle are NULL */
	void		   *handle;	/* from dlopen */
	const demux_plugin *desc;	/* owned by the plugin */
	void		   *state;	/* from desc->init */
	int		    inited;
	int		    fini_done;	/* fini ran (unload or exit) */
	demux_host	    host;	/* handed to init and every call */
	msgpack_zone	    cfg_zone;	/* holds cfg_obj */
	msgpack_object	    cfg_obj;
	char		   *cfg_raw;	/* copy of the YAML config as msgpack */
	size_t		    nmethods;
	char		  **methods;	/* full names, "name.method" */
	int		    workers;	/* own pool size from the YAML, or 0 */
	unsigned	    queue;	/* its queue bound, or 0 */
	unsigned	   *timeout_ms;	/* per method (nmethods), 0: none */
	unsigned	    kill_after_ms; /* past a deadline + this: a worker
					 * is written off (thread mode) */
	unsigned	    max_abandoned; /* its own pool's (workers:) */
	/* set by the generation that loads it (gen.c, I/O thread only) */
	struct dmx_exec	   *exec;	/* runs its jobs: its own or the shared */
	int		    own_pool;	/* exec belongs to this plugin */
	unsigned	    refs;	/* generations that route to it */
	char		    sig[256];	/* what it was loaded from: a reload
					 * keeps it only if this is unchanged */
	int		    catchall;	/* index of its "*" method, or -1 */
	int		    inline_ok;	/* measured fast methods may run on the
					 * I/O thread (thread mode, inline:
					 * auto) */
	/* files a reload checks (demux_watch_file, or a child's report) */
	struct dmx_watch   *watch;
	size_t		    nwatch;
	char		   *config_file; /* host.config_file */
	/* during init only: what declare_methods needs */
	const dmx_conf_plugin *init_cp;
	const char	   *init_file;
} dmx_plugin;

/* A file a plugin's code depends on, as it was at init. */
struct dmx_watch {
	char		   *path;
	unsigned long long  dev, ino;
	long long	    size, mtime_s, mtime_ns;
};

/* Record path as it is now (0), or -1 if it cannot be read. */
int dmx_plugin_watch_add(dmx_plugin *p, const char *path);
/* 1 if a watched file is not what it was. */
int dmx_plugin_watch_changed(const dmx_plugin *p);

/*
 * Load the plugin described by `cp` (from config file `file`) and run its
 * init. Returns the instance, or NULL with "FILE:LINE:COL: plugin 'x': ..." in
 * err. The caller owns the instance and releases it with dmx_plugin_unload().
 */
dmx_plugin *dmx_plugin_load(const dmx_conf_plugin *cp, const char *file,
    char *err, size_t errlen);
/* The same, loading a private copy of the file so that a .so changed at the
 * same path gets a new handle (dlopen of a path already loaded would return
 * the old one). Used by reloads. */
dmx_plugin *dmx_plugin_load_fresh(const dmx_conf_plugin *cp, const char *file,
    char *err, size_t errlen);
/* A plugin that runs in child processes (isolation: process): demuxd
 * itself never loads its code; name, version and methods are what its
 * first child reported. Returns NULL with "FILE:LINE:COL: ..." in err
 * (a method configured that it does not have, a bad method list). */
dmx_plugin *dmx_plugin_remote(const dmx_conf_plugin *cp, const char *file,
    const char *name, const char *version, const char *const *methods,
    char *const *watch, char *err, size_t errlen);
/* The identity of a configured plugin: its name, file (device, inode, size,
 * mtime), settings and config. Equal signatures: nothing to reload. */
void dmx_plugin_signature(const dmx_conf_plugin *cp, char *buf, size_t len);

/* Call fini (if init succeeded), dlclose and free. NULL is a no-op. */
void dmx_plugin_unload(dmx_plugin *p);

/* Fill the call-related entries of a host table (defined in call.c). */
void dmx_host_fill(demux_host *h);
/* Run p's fini now, once (unload does not run it again): at exit, where
 * fini finishes the deferred calls it still holds. */
void dmx_plugin_fini(dmx_plugin *p);

#endif
