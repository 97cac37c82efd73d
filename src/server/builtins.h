/*
 * builtins.h - the methods demuxd serves itself ($/ping, $/health,
 * $/methods, $/plugins, $/stats): each returns its answer; the caller sends
 * it. They run on the I/O thread: each is a lookup or a snapshot of
 * counters, never a wait.
 */
#ifndef DMX_BUILTINS_H
#define DMX_BUILTINS_H

#include <stdint.h>

#include "../common/buf.h"
#include "gen.h"
#include "stats.h"

/* Serve the $/ method m[0..ml) from generation g to a caller `identity`
 * ($/methods lists what it may call): 0 with its result packed
 * into `result` (the caller's; appended to), or DMX_E_NO_METHOD for a name
 * it does not know. */
int dmx_builtin(const dmx_gen *g, dmx_server_stats *st, const char *identity,
    const char *m, uint32_t ml, dmx_buf *result);

#endif
