/*
 * plugin_host.c - dlopen a plugin, check its descriptor, run init; see
 * plugin_host.h.
 *
 * The descriptor is read in a fixed order: magic first (so garbage such as a
 * random library exporting the same symbol name is refused before any other
 * field is trusted), then the ABI version, then `size` (so that a field the
 * plugin's build does not have is never read), then the rest.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "plugin_deps.h"
#include "plugin_host.h"

#define MAX_METHODS 4096

/* Smallest descriptor that has every field ABI 1.0 requires. */
#define DESC_MIN_SIZE \
	(offsetof(demux_plugin, process_transaction) + sizeof(void (*)(void)))

static int DEMUX_PRINTF(5, 6)
load_fail(char *err, size_t errlen, const char *file, const dmx_conf_plugin *cp,
    const char *fmt, ...)
{
	va_list ap;
	int k;

	k = snprintf(err, errlen, "%s:%d:%d: plugin%s%s%s %s: ", file, cp->line,
	    cp->col, cp->name ? " '" : "", cp->name ? cp->name : "",
	    cp->name ? "'" : "", cp->path);
	if (k < 0 || (size_t)k >= errlen)
		return -1;
	va_start(ap, fmt);
	vsnprintf(err + k, errlen - (size_t)k, fmt, ap);
	va_end(ap);
	return -1;
}

static void
host_vlog(const demux_host *h, int level, const char *fmt, va_list ap)
{
	dmx_vlog(level, h->name, fmt, ap);
}

static void
host_log(const demux_host *h, int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	dmx_vlog(level, h->name, fmt, ap);
	va_end(ap);
}

/* Check the method list m (NULL-terminated short names) and build the full
 * names, then each method's deadline: the plugin's, or its own. */
static int
load_methods(dmx_plugin *p, const char *const *m, const dmx_conf_plugin *cp,
    const char *file, char *err, size_t errlen)
{
	size_t n = 0, i, j, k, len;

	if (m == NULL)
		return load_fail(err, errlen, file, cp,
		    "descriptor has no method list");
	while (m[n] != NULL && n <= MAX_METHODS)
		n++;
	if (n == 0 || n > MAX_METHODS)
		return load_fail(err, errlen, file, cp,
		    "descriptor must list 1 to %d methods", MAX_METHODS);
	p->methods = calloc(n, sizeof(*p->methods));
	if (p->methods == NULL)
		return load_fail(err, errlen, file, cp, "out of memory");
	p->catchall = -1;
	for (i = 0; i < n; i++) {
		if (strcmp(m[i], "*") == 0)
			p->catchall = (int)i;
		if (m[i][0] == '\0' || strchr(m[i], '.') != NULL)
			return load_fail(err, errlen, file, cp, "method name "
			    "'%s' must be non-empty and contain no '.'", m[i]);
		for (j = 0; j < i; j++)
			if (strcmp(m[i], m[j]) == 0)
				return load_fail(err, errlen, file, cp,
				    "duplicate method '%s.%s'", p->name, m[i]);
		len = strlen(p->name) + 1 + strlen(m[i]) + 1;
		p->methods[i] = malloc(len);
		if (p->methods[i] == NULL)
			return load_fail(err, errlen, file, cp, "out of memory");
		snprintf(p->methods[i], len, "%s.%s", p->name, m[i]);
		p->nmethods++;
	}
	p->timeout_ms = calloc(p->nmethods, sizeof(*p->timeout_ms));
	if (p->timeout_ms == NULL)
		return load_fail(err, errlen, file, cp, "out of memory");
	for (i = 0; i < p->nmethods; i++)
		p->timeout_ms[i] = cp->timeout_ms;
	for (k = 0; k < cp->nmethods; k++) {
		for (i = 0; i < p->nmethods; i++)
			if (strcmp(m[i], cp->methods[k].name) == 0)
				break;
		if (i == p->nmethods) {
			snprintf(err, errlen, "%s:%d:%d: plugin '%s' has no "
			    "method '%s'", file, cp->methods[k].line,
			    cp->methods[k].col, p->name, cp->methods[k].name);
			return -1;
		}
		p->timeout_ms[i] = cp->methods[k].timeout_ms;
	}
	return 0;
}

/* What every plugin gets from its configuration, in either mode. */
static int
plugin_common(dmx_plugin *p, const dmx_conf_plugin *cp, const char *file,
    const char *name, const char *version, const char *const *methods,
    char *err, size_t errlen)
{
	p->workers = cp->workers;
	p->queue = cp->queue;
	p->process = cp->process;
	/* a plugin with workers of its own is promised that bound on its
	 * handlers' concurrency (workers: 1 serialises a plugin that is not
	 * thread-safe): never run beside them */
	p->inline_ok = !cp->process && !cp->inline_never && cp->workers == 0;
	p->kill_after_ms = cp->kill_after_ms;
	p->max_abandoned = cp->max_abandoned;
	p->name = strdup(cp->name ? cp->name : name);
	p->version = strdup(version ? version : "");
	if (p->name == NULL || p->version == NULL)
		return load_fail(err, errlen, file, cp, "out of memory");
	p->catchall = -1;
	if (methods != NULL && methods[0] == NULL && p->desc != NULL &&
	    p->desc->abi_minor >= 6)
		return 0;	/* init declares them (ABI 1.6) */
	return load_methods(p, methods, cp, file, err, errlen);
}

/* ---- ABI 1.6 ---- */

static dmx_plugin *
plugin_of(const demux_host *h)
{
	return (dmx_plugin *)(void *)((char *)h - offsetof(dmx_plugin, host));
}

static int
host_declare_methods(const demux_host *h, const char *const *names,
    char *err, size_t errlen)
{
	dmx_plugin *p = plugin_of(h);
	char why[512];

	if (p->init_cp == NULL || p->nmethods > 0) {
		snprintf(err, errlen, "demux_declare_methods: only once, in "
		    "init, by a plugin whose descriptor lists no methods");
		return -1;
	}
	if (load_methods(p, names, p->init_cp, p->init_file, why,
	    sizeof(why)) != 0) {
		/* the reason without load_fail's "FILE:L:C: plugin ...: "
		 * prefix: init's caller puts its own */
		char pre[512];
		size_t n;

		load_fail(pre, sizeof(pre), p->init_file, p->init_cp, "%s", "");
		n = strlen(pre);
		snprintf(err, errlen, "%s", strncmp(why, pre, n) == 0 ?
		    why + n : why);
		return -1;
	}
	return 0;
}

int
dmx_plugin_watch_add(dmx_plugin *p, const char *path)
{
	struct dmx_watch *w;
	struct stat st;

	if (stat(path, &st) != 0)
		return -1;
	w = realloc(p->watch, (p->nwatch + 1) * sizeof(*w));
	if (w == NULL)
		return -1;
	p->watch = w;
	w = &p->watch[p->nwatch];
	if ((w->path = strdup(path)) == NULL)
		return -1;
	w->dev = (unsigned long long)st.st_dev;
	w->ino = (unsigned long long)st.st_ino;
	w->size = (long long)st.st_size;
	w->mtime_s = (long long)st.st_mtim.tv_sec;
	w->mtime_ns = (long long)st.st_mtim.tv_nsec;
	p->nwatch++;
	return 0;
}

int
dmx_plugin_watch_changed(const dmx_plugin *p)
{
	struct stat st;
	size_t i;

	for (i = 0; i < p->nwatch; i++) {
		const struct dmx_watch *w = &p->watch[i];

		if (stat(w->path, &st) != 0 ||
		    (unsigned long long)st.st_dev != w->dev ||
		    (unsigned long long)st.st_ino != w->ino ||
		    (long long)st.st_size != w->size ||
		    (long long)st.st_mtim.tv_sec != w->mtime_s ||
		    (long long)st.st_mtim.tv_nsec != w->mtime_ns)
			return 1;
	}
	return 0;
}

static int
host_watch_file(const demux_host *h, const char *path)
{
	return dmx_plugin_watch_add(plugin_of(h), path);
}

dmx_plugin *
dmx_plugin_remote(const dmx_conf_plugin *cp, const char *file,
    const char *name, const char *version, const char *const *methods,
    char *const *watch, char *err, size_t errlen)
{
	dmx_plugin *p = calloc(1, sizeof(*p));

	if (p == NULL) {
		load_fail(err, errlen, file, cp, "out of memory");
		return NULL;
	}
	msgpack_zone_init(&p->cfg_zone, 64);
	p->path = strdup(cp->path);
	dmx_plugin_signature(cp, p->sig, sizeof(p->sig));
	if (p->path == NULL) {
		load_fail(err, errlen, file, cp, "out of memory");
		goto fail;
	}
	if (plugin_common(p, cp, file, name, version, methods, err,
	    errlen) != 0)
		goto fail;
	/* what the child watches, the parent checks on reload: a change
	 * gets new children */
	for (; watch != NULL && *watch != NULL; watch++)
		(void)dmx_plugin_watch_add(p, *watch);
	return p;
fail:
	dmx_plugin_unload(p);
	return NULL;
}

void
dmx_plugin_signature(const dmx_conf_plugin *cp, char *buf, size_t len)
{
	uint64_t h = 1469598103934665603ull;
	struct stat st;
	size_t i;
	int n;

	memset(&st, 0, sizeof(st));
	stat(cp->path, &st);
	for (i = 0; i < cp->config_len; i++)
		h = (h ^ (unsigned char)cp->config[i]) * 1099511628211ull;
	for (i = 0; i < cp->nmethods; i++) {
		const char *m = cp->methods[i].name;

		while (*m)
			h = (h ^ (unsigned char)*m++) * 1099511628211ull;
		h = (h ^ cp->methods[i].timeout_ms) * 1099511628211ull;
	}
	n = snprintf(buf, len, "%s|%s|%llu:%llu:%lld:%lld.%09ld|w%d q%u t%u "
	    "h%016llx|i%d l%d n%u k%u a%u r%llu m%llu b%u-%u u%s g%s",
	    cp->name ? cp->name : "", cp->path,
	    (unsigned long long)st.st_dev, (unsigned long long)st.st_ino,
	    (long long)st.st_size, (long long)st.st_mtim.tv_sec,
	    st.st_mtim.tv_nsec, cp->workers, cp->queue, cp->timeout_ms,
	    (unsigned long long)h, cp->process, cp->inline_never, cp->processes,
	    cp->kill_after_ms, cp->max_abandoned,
	    (unsigned long long)cp->max_requests,
	    (unsigned long long)cp->max_rss_mb, cp->respawn_min_ms,
	    cp->respawn_max_ms, cp->user ? cp->user : "",
	    cp->group ? cp->group : "");
	(void)n;
}

static dmx_plugin *plugin_load(const dmx_conf_plugin *cp, const char *file,
    const char *open_path, char *err, size_t errlen);

dmx_plugin *
dmx_plugin_load(const dmx_conf_plugin *cp, const char *file, char *err,
    size_t errlen)
{
	return plugin_load(cp, file, cp->open ? cp->open : cp->path, err,
	    errlen);
}

dmx_plugin *
dmx_plugin_load_fresh(const dmx_conf_plugin *cp, const char *file,
    char *err, size_t errlen)
{
	static unsigned n;
	char tmp[128], buf[65536];
	dmx_plugin *p;
	ssize_t r;
	int in, out;

	snprintf(tmp, sizeof(tmp), "%s/demuxd-%d-%u.so", getenv("TMPDIR") ?
	    getenv("TMPDIR") : "/tmp", (int)getpid(), ++n);
	in = open(cp->path, O_RDONLY | O_CLOEXEC);
	out = in < 0 ? -1 : open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
	    0700);
	if (in < 0 || out < 0) {
		snprintf(err, errlen, "%s:%d:%d: plugin %s: cannot copy for "
		    "loading: %s", file, cp->line, cp->col, cp->path,
		    strerror(errno));
		if (in >= 0)
			close(in);
		return NULL;
	}
	while ((r = read(in, buf, sizeof(buf))) > 0)
		if (write(out, buf, (size_t)r) != r) {
			r = -1;
			break;
		}
	close(in);
	close(out);
	if (r < 0) {
		unlink(tmp);
		snprintf(err, errlen, "%s:%d:%d: plugin %s: cannot copy for "
		    "loading", file, cp->line, cp->col, cp->path);
		return NULL;
	}
	p = plugin_load(cp, file, tmp, err, errlen);
	unlink(tmp);	/* the mapping stays; the name is not needed */
	return p;
}

static dmx_plugin *
plugin_load(const dmx_conf_plugin *cp, const char *file, const char *open_path,
    char *err, size_t errlen)
{
	demux_plugin_entry_fn entry;
	const demux_plugin *d;
	dmx_plugin *p;
	char ierr[512];
	const char *e;
	void *sym;

	p = calloc(1, sizeof(*p));
	if (p == NULL) {
		load_fail(err, errlen, file, cp, "out of memory");
		return NULL;
	}
	msgpack_zone_init(&p->cfg_zone, 1024);
	p->path = strdup(cp->path);
	if (p->path == NULL) {
		load_fail(err, errlen, file, cp, "out of memory");
		goto fail;
	}
	dmx_plugin_signature(cp, p->sig, sizeof(p->sig));
	dlerror();
	p->handle = dlopen(open_path, RTLD_NOW | RTLD_LOCAL);
	if (p->handle == NULL) {
		e = dlerror();
		load_fail(err, errlen, file, cp, "cannot load: %s",
		    e ? e : "unknown dlopen error");
		goto fail;
	}
	if (dmx_plugin_deps_check(p->handle, open_path, ierr,
	    sizeof(ierr)) != 0) {
		load_fail(err, errlen, file, cp, "%s", ierr);
		goto fail;
	}
	dlerror();
	sym = dlsym(p->handle, DEMUX_PLUGIN_ENTRY_NAME);
	e = dlerror();
	if (sym == NULL || e != NULL) {
		load_fail(err, errlen, file, cp, "does not export %s(): %s",
		    DEMUX_PLUGIN_ENTRY_NAME, e ? e : "symbol is NULL");
		goto fail;
	}
	/* ISO C forbids object-to-function pointer casts; POSIX requires this
	 * one to work. */
	memcpy(&entry, &sym, sizeof(entry));
	d = entry();
	if (d == NULL) {
		load_fail(err, errlen, file, cp, "%s() returned NULL",
		    DEMUX_PLUGIN_ENTRY_NAME);
		goto fail;
	}
	if (d->magic != DEMUX_PLUGIN_MAGIC) {
		load_fail(err, errlen, file, cp, "bad magic 0x%08x (expected "
		    "0x%08x): not a demux plugin", d->magic, DEMUX_PLUGIN_MAGIC);
		goto fail;
	}
	if (d->abi_major != DEMUX_ABI_MAJOR || d->abi_minor > DEMUX_ABI_MINOR) {
		load_fail(err, errlen, file, cp, "built for plugin ABI %u.%u, "
		    "this demuxd provides ABI %u.%u (major must match, minor "
		    "must be at most %u)", d->abi_major, d->abi_minor,
		    DEMUX_ABI_MAJOR, DEMUX_ABI_MINOR, DEMUX_ABI_MINOR);
		goto fail;
	}
	if (d->size < DESC_MIN_SIZE) {
		load_fail(err, errlen, file, cp, "descriptor size %u is smaller "
		    "than ABI %u.%u requires (%zu)", d->size, d->abi_major,
		    d->abi_minor, DESC_MIN_SIZE);
		goto fail;
	}
	if (d->process_transaction == NULL) {
		load_fail(err, errlen, file, cp, "descriptor has no "
		    "process_transaction");
		goto fail;
	}
	if (d->name == NULL || d->name[0] == '\0' || strchr(d->name, '.')) {
		load_fail(err, errlen, file, cp, "descriptor has no valid name");
		goto fail;
	}
	p->desc = d;
	if (d->methods == NULL) {
		load_fail(err, errlen, file, cp, "descriptor has no method list");
		goto fail;
	}
	if (plugin_common(p, cp, file, d->name, d->version, d->methods, err,
	    errlen) != 0)
		goto fail;

	/* the host table */
	p->host.size = sizeof(demux_host);
	p->host.abi_major = DEMUX_ABI_MAJOR;
	p->host.abi_minor = DEMUX_ABI_MINOR;
	p->host.name = p->name;
	p->host.path = p->path;
	p->host.log = host_log;
	p->host.vlog = host_vlog;
	p->config_file = strdup(file ? file : "");
	p->host.config_file = p->config_file;
	p->host.declare_methods = host_declare_methods;
	p->host.watch_file = host_watch_file;
	dmx_host_fill(&p->host);
	if (cp->config != NULL) {
		p->cfg_raw = malloc(cp->config_len);
		if (p->cfg_raw == NULL) {
			load_fail(err, errlen, file, cp, "out of memory");
			goto fail;
		}
		memcpy(p->cfg_raw, cp->config, cp->config_len);
		if (msgpack_unpack(p->cfg_raw, cp->config_len, NULL,
		    &p->cfg_zone, &p->cfg_obj) != MSGPACK_UNPACK_SUCCESS) {
			load_fail(err, errlen, file, cp, "config could not be "
			    "converted");
			goto fail;
		}
		p->host.config = &p->cfg_obj;
		p->host.config_raw = p->cfg_raw;
		p->host.config_len = cp->config_len;
	}
	p->init_cp = cp;
	p->init_file = file;
	if (d->init != NULL) {
		ierr[0] = '\0';
		if (d->init(&p->host, &p->state, ierr, sizeof(ierr)) != 0) {
			p->init_cp = NULL;
			load_fail(err, errlen, file, cp, "init failed: %s",
			    ierr[0] ? ierr : "(the plugin gave no reason)");
			goto fail;
		}
	}
	p->init_cp = NULL;
	p->init_file = NULL;
	p->inited = 1;
	if (p->nmethods == 0) {
		load_fail(err, errlen, file, cp, "its descriptor lists no "
		    "methods and init declared none (demux_declare_methods)");
		goto fail;
	}
	dmx_debug("plugin '%s' %s loaded from %s (%zu methods)", p->name,
	    d->version ? d->version : "", p->path, p->nmethods);
	return p;
fail:
	dmx_plugin_unload(p);
	return NULL;
}

void
dmx_plugin_fini(dmx_plugin *p)
{
	if (p->inited && !p->fini_done && p->desc != NULL &&
	    p->desc->fini != NULL)
		p->desc->fini(p->state);
	p->fini_done = 1;
}

void
dmx_plugin_unload(dmx_plugin *p)
{
	size_t i;

	if (p == NULL)
		return;
	dmx_plugin_fini(p);
	if (p->handle != NULL)
		dlclose(p->handle);
	for (i = 0; i < p->nmethods; i++)
		free(p->methods[i]);
	free(p->methods);
	for (i = 0; i < p->nwatch; i++)
		free(p->watch[i].path);
	free(p->watch);
	free(p->config_file);
	free(p->timeout_ms);
	msgpack_zone_destroy(&p->cfg_zone);
	free(p->cfg_raw);
	free(p->name);
	free(p->version);
	free(p->path);
	free(p);
}
