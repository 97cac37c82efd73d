/*
 * top.h - muxcall --top: $/stats as a live view, like redis-cli --stat.
 */
#ifndef MUXCALL_TOP_H
#define MUXCALL_TOP_H

#include <demux/mux.h>

/* Refresh every interval_ms until q (or ^C) on a terminal; on anything
 * else, print one plain table per interval until the connection ends or
 * `count` tables (0: no limit). Returns a mux_* code: MUX_OK on q. */
int mc_top(mux_t *m, unsigned interval_ms, unsigned long count);

#endif
