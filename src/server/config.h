/*
 * config.h - demuxd's configuration: the YAML file, parsed with libyaml into a
 * plain struct.
 *
 * The parser is strict: an unknown key, a wrong type, a duplicate key, a
 * duplicate plugin or a missing plugin file is an error, reported as
 * "FILE:LINE:COL: what" (1-based), because a typo that is silently ignored
 * becomes an outage later. Relative paths (unix sockets, plugin files) are
 * resolved against the folder of the YAML file, so a deployment can be moved
 * as a whole.
 */
#ifndef DMX_CONFIG_H
#define DMX_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef struct dmx_conf_listen {
	char   *uri;		/* "unix:PATH" (resolved) or "tcp:HOST:PORT" */
	int	error_string;	/* error_format: string ("CODE: message") */
	int	line, col;
} dmx_conf_listen;

typedef struct dmx_conf_method {
	char	*name;		/* after the dot */
	unsigned timeout_ms;
	int	 line, col;
} dmx_conf_method;

typedef struct dmx_conf_plugin {
	char   *name;		/* routing prefix; NULL: the plugin's own name */
	char   *path;		/* resolved against the YAML file's folder */
	char   *open;		/* what to dlopen, if not path (a child's
				 * /proc/self/fd/4); NULL normally */
	char   *config;		/* `config:` as msgpack bytes, or NULL */
	size_t	config_len;
	int	workers;	/* its own pool of this size; 0: the shared one */
	unsigned queue;		/* bound on its queued jobs; 0: none */
	unsigned timeout_ms;	/* deadline of its methods; 0: none */
	dmx_conf_method *methods; /* per-method settings */
	size_t	nmethods;
	/* isolation: process (see docs/configuration.md) */
	int	process;	/* 0: thread (in demuxd), 1: process */
	int	inline_never;	/* inline: never (default auto: measured
				 * fast methods may run on the I/O thread) */
	unsigned processes;	/* children; default 1 */
	unsigned kill_after_ms;	/* past deadline + this: kill the child, or
				 * (thread mode) write the worker off */
	unsigned max_abandoned;	/* its own pool's; default DMX_DEFAULT_... */
	uint64_t max_requests;	/* recycle a child after this many; 0 never */
	uint64_t max_rss_mb;	/* recycle a child past this RSS; 0 never */
	unsigned respawn_min_ms, respawn_max_ms; /* respawn backoff */
	char	*user, *group;	/* the children's, when run as root */
	int	line, col;	/* of the list entry */
} dmx_conf_plugin;

#define DMX_DEFAULT_KILL_AFTER_MS	5000u
#define DMX_DEFAULT_RESPAWN_MIN_MS	100u
#define DMX_DEFAULT_RESPAWN_MAX_MS	5000u

/* access: one rule (first match on identity wins) */
typedef struct dmx_conf_rule {
	char	*identity;	/* a glob on the caller's identity */
	char	**allow;	/* globs on method names */
	size_t	 nallow;
	char	**deny;		/* checked before allow */
	size_t	 ndeny;
	int	 line, col;
} dmx_conf_rule;

/* auth: tokens: one token ($/auth [name, secret]) */
typedef struct dmx_conf_token {
	char	*name;
	char	*secret;	/* the first line of secret_file (wiped when
				 * freed) */
	size_t	 secret_len;
} dmx_conf_token;

/* tls: the certificate of tls: listeners, and what clients must show */
enum { DMX_TLS_AUTH_NONE, DMX_TLS_AUTH_OPTIONAL, DMX_TLS_AUTH_REQUIRE };
typedef struct dmx_conf_tls {
	char	*cert, *key, *ca;	/* resolved paths; NULL: not set */
	int	 client_auth;		/* DMX_TLS_AUTH_*; -1 until defaulted */
	int	 min_version;		/* 12 or 13 */
	unsigned handshake_timeout_ms;
	int	 line, col;
} dmx_conf_tls;

typedef struct dmx_config {
	char		*file;		/* as given */
	dmx_conf_listen	*listen;
	size_t		 nlisten;
	int		 workers;	/* pool size; 0 = on-demand */
	int		 max_threads;	/* on-demand cap */
	unsigned	 queue;		/* bound on the shared pool's queue; 0: none */
	unsigned	 max_abandoned;	/* the shared pool's written-off cap */
	size_t		 max_frame;	/* largest message accepted, bytes */
	unsigned	 max_inflight;	/* per connection */
	unsigned	 max_connections;
	unsigned	 drain_timeout_ms; /* SIGTERM: wait this long for in-flight */
	size_t		 max_output;	/* unsent reply bytes per connection */
	uint64_t	 max_elements;	/* msgpack objects per request */
	size_t		 max_inflight_bytes; /* request bytes in flight, per
					 * connection */
	size_t		 max_memory;	/* request bytes in flight and partial
					 * frames, all connections */
	unsigned	 frame_timeout_ms; /* a frame begun must end by then */
	unsigned	 tcp_keepalive_ms; /* idle before keepalive probes; 0 off */
	unsigned	 idle_timeout_ms; /* close idle connections; 0: never */
	int		 reuse_port;	/* SO_REUSEPORT on tcp listeners */
	int		 log_level;	/* -1: not set in the file */
	char		*metrics;	/* "tcp:HOST:PORT" for GET /metrics, or NULL */
	int		 metrics_line, metrics_col;
	char		*access_log;	/* path (resolved), "-" for stderr, or NULL */
	/* who may call what (docs/security.md) */
	int		 has_access;	/* an access: section (even empty) */
	dmx_conf_rule	*access;
	size_t		 naccess;
	dmx_conf_token	*tokens;
	size_t		 ntokens;
	unsigned	 max_failures;	/* failed $/auth before closing */
	int		 send_traces;	/* backtraces in error responses */
	unsigned	 unix_mode;	/* the unix sockets' file mode */
	char		*unix_group;	/* ... and group, or NULL */
	int		 has_tls;	/* a tls: section */
	dmx_conf_tls	 tls;
	const dmx_conf_listen *tls_listen; /* the first tls: listener */
	dmx_conf_plugin	*plugins;
	size_t		 nplugins;
} dmx_config;

#define DMX_DEFAULT_MAX_FRAME		(64u << 20)
#define DMX_DEFAULT_MAX_INFLIGHT	4096u
#define DMX_DEFAULT_MAX_CONNECTIONS	10000u
#define DMX_DEFAULT_MAX_THREADS		1024
#define DMX_DEFAULT_MAX_ABANDONED	16u
#define DMX_DEFAULT_DRAIN_TIMEOUT_MS	30000u
#define DMX_DEFAULT_MAX_OUTPUT		(16u << 20)
#define DMX_DEFAULT_MAX_ELEMENTS	(1u << 20)
#define DMX_DEFAULT_MAX_INFLIGHT_BYTES	(64u << 20)
#define DMX_DEFAULT_MAX_MEMORY		(1ull << 30)
#define DMX_DEFAULT_FRAME_TIMEOUT_MS	30000u
#define DMX_DEFAULT_TCP_KEEPALIVE_MS	60000u
#define DMX_DEFAULT_MAX_FAILURES	3u
#define DMX_DEFAULT_UNIX_MODE		0660u
#define DMX_DEFAULT_HANDSHAKE_TIMEOUT_MS 5000u

/*
 * Read and validate FILE. On success fill *cfg (free with dmx_config_free)
 * and return 0. On failure return -1 with "FILE:LINE:COL: what" in err.
 */
int  dmx_config_load(const char *file, dmx_config *cfg, char *err,
    size_t errlen);
/* Defaults, as used for --stdio without -c. */
void dmx_config_defaults(dmx_config *cfg);
void dmx_config_free(dmx_config *cfg);

#endif
