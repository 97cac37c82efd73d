/*
 * defer.h - the host side of deferred replies and peers (plugin ABI 1.5):
 * demux_defer, demux_deferred_*, demux_call_peer, demux_peer_*.
 *
 * A deferred call is its job (job.h), held by the plugin until finish: the
 * job keeps its connection (a claim) and its generation (so the plugin's
 * code) alive, and goes out through the connection's output queue like any
 * other answer. A peer is a small heap record holding a claim on a
 * connection (conn.h, dmx_conn_peer_hold).
 */
#ifndef DMX_DEFER_H
#define DMX_DEFER_H

#include "demux/plugin.h"

/* Fill the ABI 1.5 entries of a plugin's host table. */
void	dmx_defer_fill(demux_host *h);

#endif
