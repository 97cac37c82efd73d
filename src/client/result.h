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

#endif
