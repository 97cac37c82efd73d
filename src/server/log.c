/*
 * log.c - see log.h.
 *
 * Threads and locks: any thread logs; each line is formatted into a local
 * buffer and written with one write(2), so lines never interleave and no
 * lock is taken.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/text.h"
#include "log.h"

static atomic_int log_level = DEMUX_LOG_INFO;
static const char *const level_names[] = { "error", "warn", "info", "debug" };

void
dmx_log_set_level(int level)
{
	if (level < DEMUX_LOG_ERROR)
		level = DEMUX_LOG_ERROR;
	if (level > DEMUX_LOG_DEBUG)
		level = DEMUX_LOG_DEBUG;
	atomic_store(&log_level, level);
}

int
dmx_log_get_level(void)
{
	return atomic_load(&log_level);
}

void
dmx_vlog(int level, const char *tag, const char *fmt, va_list ap)
{
	char line[2048];
	struct timespec ts;
	struct tm tm;
	size_t n;
	int r;

	if (level > atomic_load(&log_level))
		return;
	if (level < DEMUX_LOG_ERROR)
		level = DEMUX_LOG_ERROR;
	if (level > DEMUX_LOG_DEBUG)
		level = DEMUX_LOG_DEBUG;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
	r = snprintf(line + n, sizeof(line) - n, ".%03ldZ demuxd[%d] %s: %s%s%s",
	    ts.tv_nsec / 1000000, (int)getpid(), level_names[level],
	    tag ? "<" : "", tag ? tag : "", tag ? "> " : "");
	if (r > 0)
		n += (size_t)r < sizeof(line) - n ? (size_t)r : sizeof(line) - n - 1;
	r = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
	if (r > 0)
		n += (size_t)r < sizeof(line) - n ? (size_t)r : sizeof(line) - n - 1;
	if (n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	/* one write per line; a failing stderr is not worth dying for */
	if (write(STDERR_FILENO, line, n) < 0)
		return;
}

void
dmx_log(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	dmx_vlog(level, NULL, fmt, ap);
	va_end(ap);
}

static int access_fd = -1;

int
dmx_access_open(const char *path, char *err, size_t errlen)
{
	if (strcmp(path, "-") == 0) {
		access_fd = STDERR_FILENO;
		return 0;
	}
	access_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (access_fd < 0) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	return 0;
}

void
dmx_access_close(void)
{
	if (access_fd > STDERR_FILENO)
		close(access_fd);
	access_fd = -1;
}

int
dmx_access_enabled(void)
{
	return access_fd >= 0;
}

void
dmx_access_log(unsigned conn, uint32_t msgid, int notify, const char *method,
    size_t mlen, int errored, int64_t code, uint64_t ns)
{
	char line[1024], status[24], name[900];
	struct timespec ts;
	struct tm tm;
	size_t n;
	int r;

	if (access_fd < 0)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
	if (errored)
		snprintf(status, sizeof(status), "%lld", (long long)code);
	else
		snprintf(status, sizeof(status), "ok");
	/* the name is the peer's: escaped, so that it cannot forge a line */
	dmx_escape(name, sizeof(name), method, mlen, 200);
	r = snprintf(line + n, sizeof(line) - n, ".%03ldZ conn=%u %s%u method="
	    "%s status=%s us=%llu\n", ts.tv_nsec / 1000000, conn,
	    notify ? "notify msgid=" : "msgid=", msgid, name, status,
	    (unsigned long long)(ns / 1000));
	if (r > 0)
		n += (size_t)r < sizeof(line) - n ? (size_t)r :
		    sizeof(line) - n - 1;
	if (write(access_fd, line, n) < 0)
		return;
}
