/*
 * result.c - what a call leaves its caller: mux_strerror, mux_result_free,
 * and filling a caller's err buffer or a failed call's message. The bottom
 * of libmux: every other file may use it, it uses nothing of theirs.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "result.h"

const char *
mux_strerror(int err)
{
	switch (err) {
#define MUX_XX(name, val, desc) case MUX_##name: return (desc);
	MUX_ERRORS(MUX_XX)
#undef MUX_XX
	default:
		return "unknown error";
	}
}

void
mh_set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

void
mh_set_msg(mux_result *res, const char *fmt, ...)
{
	char buf[2 * MUX_ERRLEN];
	va_list ap;

	if (res->message != NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	res->message = strdup(buf);
}

void
mux_result_free(mux_result *res)
{
	if (res == NULL)
		return;
	free(res->data);
	free(res->message);
	free(res->trace);
	memset(res, 0, sizeof(*res));
}
