/*
 * server.h - demuxd's server core: it owns the event loop, the listeners,
 * the signals, the generations and the shared pool, and runs the loop on
 * the I/O thread. Connections are the connection module's (conn.h); the
 * server adds accepted descriptors to its set and never touches one.
 *
 * Layers, each using only those below it (docs/internals.md):
 *   main.c, metrics.c
 *   server.c            listeners, signals, reload, drain, the run loop
 *   conn*.c             connections (conn.h)
 *   builtins.c          the $/ methods
 *   loop.c, timer.c     epoll, attention, deadlines
 *   gen.c               one generation per configuration
 *   router.c, pool.c, job.c, plugin_host.c, stats.c, config.c, log.c
 *   ../common/          framing, messages, transports, text, addresses
 */
#ifndef DMX_SERVER_H
#define DMX_SERVER_H

#include "config.h"
#include "gen.h"
#include "stats.h"

typedef struct dmx_server dmx_server;

/* Create the server for a validated configuration (taken: it belongs to
 * the first generation from now on, also on failure): the shared pool, then
 * the generation (every plugin loaded and initialised). Returns NULL with
 * "FILE:LINE:COL: ..." or another reason in err. */
dmx_server *dmx_server_new(dmx_config *cfg, char *err, size_t errlen);
/* The current generation (I/O thread, or main before dmx_server_run). */
dmx_gen *dmx_server_gen(const dmx_server *s);
/* The current generation with a reference, for another thread (/metrics);
 * drop it with dmx_gen_unref(g, 1). */
dmx_gen *dmx_server_gen_acquire(dmx_server *s);
/* The server's counters (they live as long as the server). */
dmx_server_stats *dmx_server_stats_get(dmx_server *s);
/* Listen on every configured address; -1 with "FILE:LINE:COL: ..." in err. */
int  dmx_server_listen(dmx_server *s, char *err, size_t errlen);
/* Serve one connection on stdin/stdout; the loop ends when it closes. */
int  dmx_server_add_stdio(dmx_server *s, char *err, size_t errlen);
/* The same on a connected socket fd (plugin-host mode). */
int  dmx_server_add_fd(dmx_server *s, int fd, char *err, size_t errlen);
/* Run until SIGINT/SIGTERM (or the stdio connection ends), then finish every
 * accepted request, close everything and return 0. */
int  dmx_server_run(dmx_server *s);
/* Handlers still running in any pool (after a drain timeout). */
int  dmx_server_busy_workers(dmx_server *s);
/* Stop the workers, free every generation (plugins' fini, dlclose), free. */
void dmx_server_free(dmx_server *s);

#endif
