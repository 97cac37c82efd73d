/*
 * watch.c - see watch.h.
 *
 * The call is made with mux_call_async so that its result is delivered by
 * the same libmux thread, through the same queue, as the notifications
 * before it: printed in the order the server sent them, one whole line at
 * a time (stdout is shared under out_mu).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json.h"
#include "watch.h"

static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static int done, done_rc, pretty_out;

static void
on_note(void *user, const char *method, const char *params, size_t len)
{
	json_t *o = json_object(), *p = mj_from_bytes(params, len);
	char *s;

	(void)user;
	json_object_set_new(o, "method", json_string(method));
	json_object_set_new(o, "params", p != NULL ? p : json_null());
	s = json_dumps(o, pretty_out ? JSON_INDENT(2) : 0);
	pthread_mutex_lock(&out_mu);
	if (s != NULL) {
		fputs(s, stdout);
		fputc('\n', stdout);
		fflush(stdout);	/* a line as soon as it comes: for pipes */
	}
	pthread_mutex_unlock(&out_mu);
	free(s);
	json_decref(o);
}

static void
on_result(void *user, int rc, mux_result *r)
{
	const char *method = user;
	char why[256];

	pthread_mutex_lock(&out_mu);
	if (rc == MUX_OK) {
		if (mj_print(stdout, r->data, r->len, pretty_out, why,
		    sizeof(why)) != 0)
			fprintf(stderr, "muxcall: %s: %s\n", method, why);
		fflush(stdout);
	} else if (rc == MUX_EREMOTE) {
		fprintf(stderr, "error %lld: %s\n", (long long)r->code,
		    r->message ? r->message : "");
		if (r->trace)
			fprintf(stderr, "%s\n", r->trace);
	} else {
		fprintf(stderr, "muxcall: %s: %s\n", method, r->message ?
		    r->message : mux_strerror(rc));
	}
	done = 1;
	done_rc = rc;
	pthread_cond_signal(&done_cv);
	pthread_mutex_unlock(&out_mu);
}

/* Until SIGINT or SIGTERM (0), or the connection is lost (-1). */
static int
follow_until_signal(mux_t *m)
{
	struct timespec tick = { 0, 200 * 1000000L };
	mux_endpoint_info info;
	sigset_t set;
	int sig;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	for (;;) {
		sig = sigtimedwait(&set, NULL, &tick);
		if (sig == SIGINT || sig == SIGTERM)
			return 0;
		if (mux_endpoint(m, 0, &info) == MUX_OK && !info.connected) {
			fprintf(stderr, "muxcall: connection lost%s%s\n",
			    info.why[0] ? ": " : "", info.why);
			return -1;
		}
	}
}

void
mc_watch_block_signals(void)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
}

int
mc_watch(mux_t *m, const char *method, const void *params, size_t len,
    int timeout_ms, int follow, int pretty)
{
	int rc;

	pretty_out = pretty;
	mux_set_notify(m, on_note, NULL);
	rc = mux_call_async(m, method, params, len, on_result, (void *)method,
	    timeout_ms);
	if (rc != MUX_OK) {
		fprintf(stderr, "muxcall: %s: %s\n", method, mux_strerror(rc));
		return rc;
	}
	pthread_mutex_lock(&out_mu);
	while (!done)
		pthread_cond_wait(&done_cv, &out_mu);
	rc = done_rc;
	pthread_mutex_unlock(&out_mu);
	if (rc == MUX_OK && follow && follow_until_signal(m) != 0)
		rc = MUX_ECONN;
	mux_set_notify(m, NULL, NULL);
	return rc;
}
