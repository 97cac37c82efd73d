/*
 * helper.h - start and stop a real demuxd for end-to-end tests.
 *
 * t_server_start() writes a configuration into a fresh temporary folder
 * (listen: unix:demux.sock there), starts build/demuxd on it and returns once
 * demuxd has logged READY on stderr: a real signal, not a sleep. The rest of
 * its log is forwarded to the test's output as TAP comments. Every server is
 * stopped by its pid when the test exits, on failure, or when the watchdog
 * (t_watchdog) fires. With DEMUX_VALGRIND=1 in the environment the server runs
 * under valgrind's leak checker and t_server_stop reports its verdict.
 */
#ifndef T_HELPER_H
#define T_HELPER_H

#include <sys/types.h>

typedef struct t_server {
	pid_t	pid;
	char	dir[256];	/* temporary folder */
	char	conf[300];	/* dir/demux.yaml */
	char	uri[320];	/* unix:dir/demux.sock */
	int	keep;		/* set: stopping keeps the folder, so that
				 * t_server_restart can use it again */
} t_server;

/* Absolute path of a built file, e.g. t_build("plugins/echo.so"). Static
 * storage, one of 8 rotating buffers. */
const char *t_build(const char *rel);

/*
 * Start demuxd. `yaml` is the configuration; unless it has its own `listen:`,
 * "listen: unix:demux.sock" (in the temporary folder) is added. "@B@" in it
 * stands for the absolute build folder. Extra demuxd flags may follow
 * (NULL-terminated). Returns 0, or -1 after printing why.
 */
int  t_server_start(t_server *s, const char *yaml, ...);
/* Set while a start is meant to fail: its log lines say so, rather than
 * looking like a failure of the test. */
extern int t_start_may_fail;
/* SIGTERM, wait, clean up. Returns the exit status (or 128+signal); under
 * valgrind, 99 means it found leaks or errors. */
int  t_server_stop(t_server *s);
/* Wait for a server that is already stopping (no signal sent); returns as
 * t_server_stop does. */
int  t_server_wait(t_server *s);
/* Kill with SIGKILL and reap (a crash, from the clients' point of view). */
void t_server_kill(t_server *s);
/* The same, but keep the folder (configuration, the dead socket file), so
 * that t_server_restart can start demuxd again at the same address;
 * t_server_cleanup removes the folder of a server that is not running. */
void t_server_crash(t_server *s);
int  t_server_restart(t_server *s);
void t_server_cleanup(t_server *s);

/* Kill every server and exit(1) if the test is still running after
 * `seconds` (a hung test must fail, not stall the suite). */
void t_watchdog(unsigned seconds);

/* Kill this process too (SIGKILL) when the test exits or hangs; forget it
 * once it has been stopped and reaped. */
void t_track(pid_t pid);
void t_untrack(pid_t pid);

/* A counter from a demuxd's $/stats (e.g. "pool", "busy"), asked over a
 * connection of its own to uri; -1 if it cannot be asked or is not there.
 * t_requests: "server", "requests" (requests read so far). */
long t_stat(const char *uri, const char *section, const char *key);
/* The same for any depth: path is keys separated by '/', e.g.
 * "plugins/ver/queued" or "methods/echo.echo/calls". */
long t_stat_path(const char *uri, const char *path);
/* The string at path in $/stats into buf: 0, or -1 (buf empty). */
int  t_stat_str(const char *uri, const char *path, char *buf, size_t n);
/* Does the msgpack object in data hold the string s anywhere (a value or a
 * key, at any depth)? 1 or 0; -1 if data does not decode. */
int  t_has_str(const void *data, size_t len, const char *s);
/* Resident memory of process pid, in KiB (-1 if unknown). */
long t_rss_kb(pid_t pid);
long t_requests(const char *uri);

/* A TCP port on 127.0.0.1 that was free a moment ago. */
int  t_free_port(void);

/* Let a workload running on other threads go on for ms milliseconds (a
 * measurement window, never a stand-in for a signal). */
void t_run_for(int ms);

/* Monotonic milliseconds. */
double t_now_ms(void);

/* Write [bin32 n] into p (n + 6 bytes) whose bytes follow from seed, so
 * that each caller and call can send bytes of its own and check its echo.
 * Returns n + 6. */
size_t t_bin_params(char *p, size_t n, unsigned seed);

#endif
