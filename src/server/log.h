/*
 * log.h - demuxd's log: one line per event on stderr, with a level.
 *
 * Lines look like "2026-11-27T11:38:53.123Z demuxd[42] warn: <kv> table full".
 * Each line is written with one write(2), so lines from different threads do
 * not interleave. stdout stays free for the --stdio transport.
 */
#ifndef DMX_LOG_H
#define DMX_LOG_H

#include <stdarg.h>

#include "demux/plugin.h"	/* DEMUX_LOG_* levels, DEMUX_PRINTF */

/* Lines above this level are dropped. Default DEMUX_LOG_INFO. */
void dmx_log_set_level(int level);
int  dmx_log_get_level(void);

void dmx_log(int level, const char *fmt, ...) DEMUX_PRINTF(2, 3);
/* `tag` (may be NULL) is printed as "<tag> " before the message. */
void dmx_vlog(int level, const char *tag, const char *fmt, va_list ap);

#define dmx_error(...)	dmx_log(DEMUX_LOG_ERROR, __VA_ARGS__)
#define dmx_warn(...)	dmx_log(DEMUX_LOG_WARN, __VA_ARGS__)
#define dmx_info(...)	dmx_log(DEMUX_LOG_INFO, __VA_ARGS__)
#define dmx_debug(...)	dmx_log(DEMUX_LOG_DEBUG, __VA_ARGS__)

#endif
