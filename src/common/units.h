/*
 * units.h - sizes and durations as people write them in configuration:
 * "65536", "64KiB", "1M"; "500", "500ms", "2s", "5m". One grammar for
 * demuxd's own keys and for the plugins' (demux_config_size/_ms), so that a
 * plugin's config: reads like the rest of the file.
 */
#ifndef DMX_UNITS_H
#define DMX_UNITS_H

#include <stdint.h>

/* A size in bytes: digits, then optionally K/KB/KiB, M/MB/MiB, G/GB/GiB
 * (powers of 1024, any case). 0, or -1 if s is not one, -2 if it is more
 * than max. */
int dmx_parse_size(const char *s, uint64_t max, uint64_t *out);

/* A duration in milliseconds: digits (ms), or digits then ms, s, m or h.
 * 0, -1 or -2 as dmx_parse_size. */
int dmx_parse_ms(const char *s, uint64_t max, uint64_t *out);

#endif
