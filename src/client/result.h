/*
 * result.h - the message helpers of result.c. Internal to libmux.
 */
#ifndef MH_RESULT_H
#define MH_RESULT_H

#include <stddef.h>

#include "demux/mux.h"

/* Write a reason into a caller's err buffer (may be NULL). */
void	 mh_set_err(char *err, size_t errlen, const char *fmt, ...)
	    __attribute__((format(printf, 3, 4)));
/* Set res->message from fmt unless it already has one. */
void	 mh_set_msg(mux_result *res, const char *fmt, ...)
	    __attribute__((format(printf, 2, 3)));

/*
 * A result's bytes (mux_result.data, len) are followed by MH_DATA_TAIL bytes
 * that name the malloc()ed block they sit in, which is what mux_result_free
 * frees. A copied result's block starts at data, so data stays a pointer
 * free() takes (the documented way to keep it from an async callback); with
 * the results_in_place option a large result stays in the very buffer it
 * was read into, its frame's header in front of it, and is not copied.
 */
#define MH_DATA_TAIL 16

/* A new block for len bytes of result, data at its start. NULL on ENOMEM. */
char	*mh_data_new(size_t len);
/* Make the len bytes at data, inside the block base with MH_DATA_TAIL bytes
 * after them, a result's bytes: mux_result_free will free base. */
void	 mh_data_adopt(void *base, char *data, size_t len);

#endif
