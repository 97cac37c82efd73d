/*
 * loop.c - epoll, an eventfd for wake-ups and attention, and the deadline
 * heap (timer.c); see loop.h.
 *
 * Lock order: an owner's lock (a connection's mu), then attn_mu. attn_mu is
 * a leaf: nothing is called while it is held.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "../common/clock.h"
#include "log.h"
#include "loop.h"
#include "timer.h"

#define SCRATCH		(256u << 10)	/* one read */
#define MAX_EVENTS	256

struct dmx_loop {
	int		 epfd;
	int		 wakefd;	/* eventfd: attention or a wake-up */
	dmx_io		 wake_io;	/* its registration (no owner) */
	_Atomic int	 woken;		/* dmx_loop_wake since the last poll */
	dmx_loop_expire_fn expire;
	dmx_timers	 timers;	/* I/O thread */
	dmx_buf		 scratch;	/* I/O thread */

	pthread_mutex_t	 attn_mu;
	dmx_io		*attn_head;	/* asked for (attn_mu) */
	dmx_io		*attn_run;	/* being served now (attn_mu) */
};

static void
wake_fd(dmx_loop *l)
{
	uint64_t one = 1;

	if (write(l->wakefd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		dmx_warn("eventfd write: %s", strerror(errno));
}

dmx_loop *
dmx_loop_new(dmx_loop_expire_fn expire, char *err, size_t errlen)
{
	dmx_loop *l = calloc(1, sizeof(*l));

	if (l == NULL || dmx_buf_reserve(&l->scratch, SCRATCH) != 0) {
		free(l);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	l->expire = expire;
	pthread_mutex_init(&l->attn_mu, NULL);
	l->epfd = epoll_create1(EPOLL_CLOEXEC);
	l->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	l->wake_io.rfd = l->wake_io.wfd = l->wakefd;
	if (l->epfd < 0 || l->wakefd < 0 ||
	    dmx_loop_watch(l, &l->wake_io, EPOLLIN) != 0) {
		snprintf(err, errlen, "epoll/eventfd: %s", strerror(errno));
		dmx_loop_free(l);
		return NULL;
	}
	return l;
}

void
dmx_loop_free(dmx_loop *l)
{
	dmx_timer t;

	if (l == NULL)
		return;
	/* a pending deadline holds a claim on its job's owner: let it go */
	while (dmx_timers_pop_due(&l->timers, UINT64_MAX, &t))
		l->expire(t.job, t.seq, t.timeout_ms);
	dmx_timers_free(&l->timers);
	if (l->epfd >= 0)
		close(l->epfd);
	if (l->wakefd >= 0)
		close(l->wakefd);
	dmx_buf_release(&l->scratch);
	pthread_mutex_destroy(&l->attn_mu);
	free(l);
}

static int
reg_fd(dmx_loop *l, int fd, uint32_t old, uint32_t want, dmx_io *io)
{
	struct epoll_event ev;
	int op;

	if (old == want)
		return 0;
	memset(&ev, 0, sizeof(ev));
	ev.events = want;
	ev.data.ptr = io;
	op = old == 0 ? EPOLL_CTL_ADD : want == 0 ? EPOLL_CTL_DEL :
	    EPOLL_CTL_MOD;
	return epoll_ctl(l->epfd, op, fd, &ev);
}

int
dmx_loop_watch(dmx_loop *l, dmx_io *io, uint32_t events)
{
	int rc;

	if (io->rfd == io->wfd) {
		rc = reg_fd(l, io->rfd, io->events, events, io);
	} else {
		rc = reg_fd(l, io->rfd, io->events & EPOLLIN, events & EPOLLIN,
		    io);
		if (rc == 0)
			rc = reg_fd(l, io->wfd, io->events & EPOLLOUT,
			    events & EPOLLOUT, io);
	}
	if (rc == 0)
		io->events = events;
	return rc;
}

void
dmx_loop_attn(dmx_loop *l, dmx_io *io)
{
	int first;

	pthread_mutex_lock(&l->attn_mu);
	if (io->attn) {
		pthread_mutex_unlock(&l->attn_mu);
		return;
	}
	io->attn = 1;
	first = l->attn_head == NULL;
	io->attn_next = l->attn_head;
	l->attn_head = io;
	pthread_mutex_unlock(&l->attn_mu);
	if (first)
		wake_fd(l);
}

static void
unlink_io(dmx_io **pp, dmx_io *io)
{
	for (; *pp != NULL; pp = &(*pp)->attn_next)
		if (*pp == io) {
			*pp = io->attn_next;
			return;
		}
}

void
dmx_loop_attn_cancel(dmx_loop *l, dmx_io *io)
{
	pthread_mutex_lock(&l->attn_mu);
	if (io->attn) {
		unlink_io(&l->attn_head, io);
		unlink_io(&l->attn_run, io);
		io->attn = 0;
	}
	pthread_mutex_unlock(&l->attn_mu);
}

void
dmx_loop_wake(dmx_loop *l)
{
	if (!atomic_exchange(&l->woken, 1))
		wake_fd(l);
}

void
dmx_loop_attend(dmx_loop *l)
{
	dmx_io *io;

	pthread_mutex_lock(&l->attn_mu);
	l->attn_run = l->attn_head;
	l->attn_head = NULL;
	/* one at a time off attn_run, so that on_attn may free its own
	 * owner and dmx_loop_attn_cancel finds any other still queued */
	while ((io = l->attn_run) != NULL) {
		l->attn_run = io->attn_next;
		io->attn = 0;	/* asked again from now on: served again */
		pthread_mutex_unlock(&l->attn_mu);
		io->on_attn(io);
		pthread_mutex_lock(&l->attn_mu);
	}
	pthread_mutex_unlock(&l->attn_mu);
}

int
dmx_loop_deadline_add(dmx_loop *l, dmx_job *j, uint64_t at)
{
	return dmx_timers_add(&l->timers, j, at, j->route->timeout_ms);
}

int
dmx_loop_deadline_del(dmx_loop *l, dmx_job *j)
{
	return dmx_timers_del(&l->timers, j);
}

int
dmx_loop_deadlines(dmx_loop *l)
{
	uint64_t now = dmx_now_ns();
	dmx_timer t;

	while (dmx_timers_pop_due(&l->timers, now, &t))
		l->expire(t.job, t.seq, t.timeout_ms);
	return dmx_timers_next_ms(&l->timers, now);
}

int
dmx_loop_poll(dmx_loop *l, int timeout_ms)
{
	struct epoll_event evs[MAX_EVENTS];
	uint64_t v;
	int n, i;

	n = epoll_wait(l->epfd, evs, MAX_EVENTS, timeout_ms);
	if (n < 0) {
		if (errno != EINTR) {
			dmx_error("epoll_wait: %s", strerror(errno));
			return -1;
		}
		n = 0;
	}
	for (i = 0; i < n; i++) {
		dmx_io *io = evs[i].data.ptr;

		if (io == &l->wake_io) {
			if (read(l->wakefd, &v, sizeof(v)) < 0 &&
			    errno != EAGAIN)
				dmx_warn("eventfd read: %s", strerror(errno));
			continue;	/* the attention list is read below */
		}
		io->on_ready(io, evs[i].events);
	}
	dmx_loop_attend(l);
	return atomic_exchange(&l->woken, 0);
}

dmx_buf *
dmx_loop_scratch(dmx_loop *l)
{
	return &l->scratch;
}
