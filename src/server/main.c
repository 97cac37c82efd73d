/*
 * main.c - demuxd: flags, start-up order, signals, exit codes.
 *
 * Start-up is all-or-nothing: the configuration is validated and every plugin
 * loaded and initialised before the first socket is opened, so a deployment
 * with a bad file never half-starts. Exit codes: 0 clean stop (or --check
 * passed), 1 runtime failure (e.g. cannot listen), 2 bad usage, configuration
 * or plugin.
 */
#include <getopt.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "fatal.h"
#include "log.h"
#include "metrics.h"
#include "proc.h"
#include "server.h"

#define DEMUXD_VERSION "0.1.0"

static void
usage(FILE *fp)
{
	fprintf(fp,
	    "usage: demuxd -c FILE [-v|-q]...   serve the configuration in FILE\n"
	    "       demuxd --check -c FILE      validate FILE and load every "
	    "plugin, then exit\n"
	    "       demuxd --stdio [-c FILE]    serve one connection on "
	    "stdin/stdout\n"
	    "\n"
	    "  -c, --config FILE  YAML configuration (see demux.yaml(5))\n"
	    "  -v, --verbose      log more (repeatable)\n"
	    "  -q, --quiet        log less (repeatable)\n"
	    "      --check        exit 0 if FILE is valid and its plugins load, "
	    "else 2\n"
	    "      --stdio        serve stdin/stdout instead of listening\n"
	    "  -h, --help         this text\n"
	    "  -V, --version      print the version\n");
}

/*
 * Each connection is a descriptor: raise the soft limit towards the hard one
 * so that max_connections can really be reached (the usual soft default is
 * 1024), and say so when the hard limit is lower.
 */
static void
raise_nofile(const dmx_config *cfg)
{
	struct rlimit rl;
	rlim_t want = (rlim_t)cfg->max_connections + 64;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want)
		return;
	rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ?
	    want : rl.rlim_max;
	setrlimit(RLIMIT_NOFILE, &rl);
	if (rl.rlim_cur < want)
		dmx_warn("RLIMIT_NOFILE hard limit %llu is below max_connections "
		    "%u + 64: connections past it will be refused",
		    (unsigned long long)rl.rlim_cur, cfg->max_connections);
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "check", no_argument, NULL, 'C' },
		{ "stdio", no_argument, NULL, 'S' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		/* internal: a child of isolation: process (host.c) */
		{ "plugin-host", no_argument, NULL, 'P' },
		{ NULL, 0, NULL, 0 },
	};
	const char *file = NULL;
	int verbosity = 0, check = 0, stdio = 0, host = 0, ch, rc = 0;
	const dmx_config *cfg;
	dmx_config *loaded;
	dmx_server *srv = NULL;
	dmx_metrics *metrics = NULL;
	const dmx_gen *g;
	char err[1024];
	sigset_t set;

	while ((ch = getopt_long(argc, argv, "c:vqhV", opts, NULL)) != -1) {
		switch (ch) {
		case 'c': file = optarg; break;
		case 'v': verbosity++; break;
		case 'q': verbosity--; break;
		case 'C': check = 1; break;
		case 'S': stdio = 1; break;
		case 'P': host = 1; break;
		case 'h': usage(stdout); return 0;
		case 'V': printf("demuxd %s (plugin ABI %d.%d)\n",
		    DEMUXD_VERSION, DEMUX_ABI_MAJOR, DEMUX_ABI_MINOR); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc || (file == NULL && !stdio && !host)) {
		usage(stderr);
		return 2;
	}

	/* Signals: SIGINT/SIGTERM are read from a signalfd by the I/O thread,
	 * so block them before any thread exists (threads inherit the mask).
	 * A write to a closed peer must be an error, not a death. */
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);	/* reload */
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (host)
		return dmx_plugin_host_main(3);
	dmx_fatal_install("demuxd", "; a plugin's fault in thread mode ends "
	    "demuxd (isolation: process contains it)");

	loaded = calloc(1, sizeof(*loaded));
	if (loaded == NULL) {
		fprintf(stderr, "demuxd: out of memory\n");
		return 1;
	}
	if (file != NULL) {
		if (dmx_config_load(file, loaded, err, sizeof(err)) != 0) {
			fprintf(stderr, "demuxd: %s\n", err);
			free(loaded);
			return 2;
		}
	} else {
		dmx_config_defaults(loaded);
	}
	dmx_log_set_level((loaded->log_level >= 0 ? loaded->log_level :
	    DEMUX_LOG_INFO) + verbosity);
	raise_nofile(loaded);

	/* every plugin loaded and initialised, or nothing starts; the first
	 * generation owns the configuration from here on */
	srv = dmx_server_new(loaded, err, sizeof(err));
	if (srv == NULL) {
		fprintf(stderr, "demuxd: %s\n", err);
		return 2;
	}
	g = dmx_server_gen(srv);
	cfg = g->cfg;
	if (check) {
		printf("%s: ok (%zu plugins, %zu methods)\n", cfg->file,
		    g->nplugins, dmx_gen_nmethods(g));
		goto out;
	}
	if (stdio) {
		if (dmx_server_add_stdio(srv, err, sizeof(err)) != 0) {
			fprintf(stderr, "demuxd: %s\n", err);
			rc = 1;
			goto out;
		}
	} else if (dmx_server_listen(srv, err, sizeof(err)) != 0) {
		fprintf(stderr, "demuxd: %s\n", err);
		rc = 1;
		goto out;
	}
	if (cfg->metrics != NULL && !stdio) {
		metrics = dmx_metrics_start(srv, cfg->metrics, err, sizeof(err));
		if (metrics == NULL) {
			fprintf(stderr, "demuxd: %s:%d:%d: metrics: %s\n",
			    cfg->file, cfg->metrics_line, cfg->metrics_col, err);
			rc = 1;
			goto out;
		}
	}
	if (cfg->access_log != NULL && dmx_access_open(cfg->access_log, err,
	    sizeof(err)) != 0) {
		fprintf(stderr, "demuxd: %s: access_log: %s\n", cfg->file, err);
		rc = 1;
		goto out;
	}
	if (!stdio && cfg->nlisten == 0)
		dmx_warn("no listen addresses configured: nothing to serve");
	dmx_info("READY: %zu plugin(s), %zu method(s), %s%d worker(s)",
	    g->nplugins, dmx_gen_nmethods(g), cfg->workers == 0 ?
	    "on-demand, at most " : "", cfg->workers == 0 ? cfg->max_threads :
	    cfg->workers);
	if (dmx_server_run(srv) != 0)
		rc = 1;
	if (dmx_server_busy_workers(srv) > 0) {
		/* handlers still running past drain_timeout_ms: their threads
		 * cannot be stopped safely, nor can their plugins' fini run
		 * under them; every client has had its answer */
		dmx_warn("%d handler(s) still running after drain_timeout_ms: "
		    "exiting without waiting for them (their plugins' fini "
		    "is not called)", dmx_server_busy_workers(srv));
		_exit(rc);
	}
out:
	/* the metrics thread reads the server: stop it first; then the
	 * workers (they run plugin code), then the plugins' fini */
	dmx_metrics_stop(metrics);
	dmx_server_free(srv);
	dmx_access_close();
	if (rc == 0 && !check)
		dmx_info("stopped");
	return rc;
}
