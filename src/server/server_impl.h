/*
 * server_impl.h - the server core's own header: its struct and what
 * server.c (the core: generations, reload, signals, the orderly stop, the
 * run loop) and listen.c (listeners, accepting, TLS handshakes) share.
 * Nobody else includes it; see server.h.
 */
#ifndef DMX_SERVER_IMPL_H
#define DMX_SERVER_IMPL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "../common/uri.h"
#include "conn.h"
#include "exec.h"
#include "gen.h"
#include "loop.h"
#include "server.h"
#include "tls.h"

typedef struct dmx_listener {
	dmx_io		io;		/* first */
	dmx_server     *srv;
	dmx_uri		uri;
	char	       *text;		/* as configured (owned) */
	unsigned	conn_flags;	/* for its connections: error_format */
	struct dmx_listener *next;
} dmx_listener;

struct dmx_server {
	dmx_gen_slot	 gen;		/* the generation serving now */
	dmx_gen		*gens;		/* every generation not yet freed,
					 * the current one first */
	pthread_mutex_t	 dead_mu;
	dmx_gen		*dead;		/* unreferenced, to be freed by the I/O
					 * thread (dead_mu) */
	_Atomic int	 have_dead;
	dmx_exec	*exec;		/* the shared pool */
	dmx_loop	*loop;
	dmx_conns	*conns;
	struct dmx_inline *inl;		/* run to completion (inline.h) */
	pthread_t	 standby;	/* takes the loop over from a stall */
	int		 have_standby;
	int		 run_rc;	/* the loop's result, whoever ran it */
	dmx_io		 sig_io;
	dmx_listener	*listeners;	/* list */
	dmx_tls_ctx	*tls;		/* tls: listeners' context, or NULL */
	struct dmx_handshake *handshakes; /* TLS handshakes under way */
	unsigned	 nhandshakes;
	int		 stdio;		/* serving one stdio connection */
	int		 stopping;
	uint64_t	 drain_deadline; /* ns; 0 until a signal */
	int		 abandoned;	/* the drain deadline passed */
	dmx_server_stats stats;
	int		 reserve_fd;	/* spent when out of descriptors */
	uint64_t	 listen_paused_until; /* ns; 0: listeners watched */
	uint64_t	 warned_fds, warned_max; /* rate-limited warnings */
	unsigned	 quiet_fds, quiet_max;
};

/* The configuration serving now (I/O thread). */
static inline const dmx_config *
srv_cfg(const dmx_server *s)
{
	return dmx_server_gen(s)->cfg;
}

/* ---- listen.c (I/O thread) ---- */
/* Out of descriptors with no reserve left: look again this much later. */
#define LISTEN_PAUSE_MS 100
/* Make the listeners match cfg; keep what is unchanged. */
void	srv_relisten(dmx_server *s, const dmx_config *cfg);
void	srv_close_listeners(dmx_server *s);
/* Stop or resume watching every listener. */
void	srv_listeners_watch(dmx_server *s, int on);
/* Close handshakes past handshake_timeout_ms (all when stopping); ms until
 * the next deadline, or -1. */
int	srv_handshakes_tick(dmx_server *s);
/* Drop every handshake under way (freeing the server). */
void	srv_handshakes_close(dmx_server *s);

#endif
