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
#include <stddef.h>
#include <stdint.h>

#include "demux/plugin.h"	/* DEMUX_LOG_* levels, DEMUX_PRINTF */

/* Lines above this level are dropped. Default DEMUX_LOG_INFO. */
void dmx_log_set_level(int level);
int  dmx_log_get_level(void);

void dmx_log(int level, const char *fmt, ...) DEMUX_PRINTF(2, 3);
/* `tag` (may be NULL) is printed as "<tag> " before the message. */
void dmx_vlog(int level, const char *tag, const char *fmt, va_list ap);

/*
 * The access log (optional): one line per transaction,
 * "TIME conn=N msgid=N method=M status=ok|CODE us=N", each with one write(2)
 * to a file opened O_APPEND ("-": stderr).
 */
int  dmx_access_open(const char *path, char *err, size_t errlen);
void dmx_access_close(void);
int  dmx_access_enabled(void);
void dmx_access_log(unsigned conn, uint32_t msgid, int notify,
    const char *method, size_t mlen, int errored, int64_t code,
    uint64_t ns);

#define dmx_error(...)	dmx_log(DEMUX_LOG_ERROR, __VA_ARGS__)
#define dmx_warn(...)	dmx_log(DEMUX_LOG_WARN, __VA_ARGS__)
#define dmx_info(...)	dmx_log(DEMUX_LOG_INFO, __VA_ARGS__)
#define dmx_debug(...)	dmx_log(DEMUX_LOG_DEBUG, __VA_ARGS__)

#endif
