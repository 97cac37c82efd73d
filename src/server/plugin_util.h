/*
 * plugin_util.h - the host side of demux_params() and demux_config_*()
 * (plugin ABI 1.4): reading a call's params by a format, answering -32602
 * that names the parameter, and typed reads of a plugin's config: with
 * demuxd's own grammar for sizes and durations.
 */
#ifndef DMX_PLUGIN_UTIL_H
#define DMX_PLUGIN_UTIL_H

#include <stdarg.h>
#include <stddef.h>

#include <demux/plugin.h>

/* demux_host.params: on a worker, during process_transaction. */
int dmx_host_params(demux_call *c, const char *fmt, va_list ap);

/* demux_host.config_get: kind i u z t b d s (a value) or k (key is the
 * list of allowed keys); 1 found, 0 absent, -1 with err. In init, or from
 * any thread if the plugin serialises its own calls (strings for 's' come
 * from the plugin's config zone). */
int dmx_host_config_get(const demux_host *h, const char *key, char kind,
    void *out, char *err, size_t errlen);

#endif
