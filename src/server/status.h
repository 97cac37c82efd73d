/*
 * status.h - the operator's status page on the metrics: listener: GET /
 * (one self-contained HTML page, status.html) and GET /stats.json ($/stats
 * as JSON, which the page reads every second).
 */
#ifndef DMX_STATUS_H
#define DMX_STATUS_H

#include "../common/buf.h"
#include "gen.h"
#include "stats.h"

/* The page: a static string (the HTML, with its script and style). */
const char *dmx_status_page(void);

/* $/stats of generation g as JSON into out; 0, or -1 without memory. */
int dmx_status_json(const dmx_gen *g, dmx_server_stats *st, dmx_buf *out);

#endif
