/*
 * metrics.h - the Prometheus endpoint (GET /metrics), optional.
 */
#ifndef DMX_METRICS_H
#define DMX_METRICS_H

#include <stddef.h>

struct dmx_server;
typedef struct dmx_metrics dmx_metrics;

/* Listen on uri ("tcp:HOST:PORT") and serve until stopped; NULL with a
 * reason in err. The server must outlive it. */
dmx_metrics *dmx_metrics_start(struct dmx_server *s, const char *uri,
    char *err, size_t errlen);
void dmx_metrics_stop(dmx_metrics *m);

#endif
