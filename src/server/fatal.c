/*
 * fatal.c - the fatal-signal report (fatal.h).
 *
 * The handler uses only write(2), strlen and backtrace_symbols_fd (glibc
 * loads libgcc's unwinder on the first backtrace(), so that is done at
 * install time, not in the handler). It runs on an alternate stack where
 * one was set up, which is what makes a stack overflow reportable.
 */
#define _GNU_SOURCE
#include <execinfo.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fatal.h"

#define ALT_STACK	(64u << 10)

__thread const char *dmx_fatal_plugin, *dmx_fatal_method;
static const char *fatal_who = "demuxd", *fatal_consequence = "";
static __thread void *alt_stack;

static void
say(const char *s)
{
	(void)!write(2, s, strlen(s));
}

static void
on_fatal(int sig)
{
	const char *ab = sigabbrev_np(sig), *pl = dmx_fatal_plugin,
	    *m = dmx_fatal_method;
	void *frames[64];
	int n;

	say(fatal_who);
	say(": fatal signal SIG");
	say(ab != NULL ? ab : "?");
	if (pl != NULL) {
		say(" in plugin '");
		say(pl);
		say("', method ");
		say(m != NULL ? m : "?");
		say(fatal_consequence);
	} else {
		say(" outside any plugin (a bug in demuxd: please report it "
		    "with this backtrace)");
	}
	say("; backtrace:\n");
	n = backtrace(frames, 64);
	backtrace_symbols_fd(frames, n, 2);
	signal(sig, SIG_DFL);
	raise(sig);		/* delivered with the default action on return */
}

void
dmx_fatal_install(const char *who, const char *consequence)
{
	static const int sigs[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT,
	    SIGSYS };
	struct sigaction sa;
	void *warm[1];
	size_t i;

	fatal_who = who;
	fatal_consequence = consequence;
	backtrace(warm, 1);	/* loads the unwinder now, not in the handler */
	dmx_fatal_thread_begin();
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_fatal;
	sa.sa_flags = SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	for (i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaction(sigs[i], &sa, NULL);
}

void
dmx_fatal_thread_begin(void)
{
	stack_t ss;

	if (alt_stack != NULL || (alt_stack = malloc(ALT_STACK)) == NULL)
		return;		/* without one, most faults still report */
	memset(&ss, 0, sizeof(ss));
	ss.ss_sp = alt_stack;
	ss.ss_size = ALT_STACK;
	if (sigaltstack(&ss, NULL) != 0) {
		free(alt_stack);
		alt_stack = NULL;
	}
}

void
dmx_fatal_thread_end(void)
{
	stack_t ss;

	if (alt_stack == NULL)
		return;
	memset(&ss, 0, sizeof(ss));
	ss.ss_flags = SS_DISABLE;
	if (sigaltstack(&ss, NULL) == 0) {
		free(alt_stack);
		alt_stack = NULL;
	}
}
