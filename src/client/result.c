/*
 * result.c - what a call leaves its caller: mux_strerror, mux_result_free,
 * and filling a caller's err buffer or a failed call's message. The bottom
 * of libmux: every other file may use it, it uses nothing of theirs.
 */
#include <stdarg.h>
#include <stdint.h>
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

/* What the MH_DATA_TAIL bytes after a result's data hold. Copied with
 * memcpy: they have any alignment. */
typedef struct mh_data_tag {
	void	 *base;
	uint64_t  magic;
} mh_data_tag;

#define MH_DATA_MAGIC 0x6d75786461746121ull	/* "muxdata!" */

_Static_assert(sizeof(mh_data_tag) <= MH_DATA_TAIL, "the tag fits");

void
mh_data_adopt(void *base, char *data, size_t len)
{
	mh_data_tag t = { base, MH_DATA_MAGIC };

	memcpy(data + len, &t, sizeof(t));
}

char *
mh_data_new(size_t len)
{
	char *base = malloc(len + MH_DATA_TAIL);

	if (base == NULL)
		return NULL;
	mh_data_adopt(base, base, len);
	return base;
}

void
mux_result_free(mux_result *res)
{
	mh_data_tag t;

	if (res == NULL)
		return;
	if (res->data != NULL) {
		memcpy(&t, res->data + res->len, sizeof(t));
		/* data or len that libmux did not set: a misuse that must not
		 * free a wild pointer quietly */
		if (t.magic != MH_DATA_MAGIC)
			abort();
		free(t.base);
	}
	free(res->message);
	free(res->trace);
	memset(res, 0, sizeof(*res));
}
