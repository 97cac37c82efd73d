/*
 * handle.h - the libmux handle's insides, shared by mux.c (the handle, its
 * endpoints, sync calls), async.c (async calls and their delivery) and
 * supervise.c (reconnects, health probes, calls waiting for a connection).
 * Internal: nothing here is exported. See mux.c for the design and locking.
 */
#ifndef MH_HANDLE_H
#define MH_HANDLE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "../common/uri.h"
#include "conn.h"
#include "result.h"
#include "demux/mux.h"

#define MUX_DEFAULT_MAX_FRAME	(64u << 20)

struct mux;

/* The $/health probe of one endpoint; reused, one at a time. */
typedef struct mh_probe {
	mc_call		 call;
	mux_result	 res;
	struct mh_ep	*ep;
	_Atomic int	 busy;
} mh_probe;

typedef struct mh_ep {
	struct mux	*m;
	unsigned	 idx;
	char		*uri;		/* as given; "fd"/"spawn" */
	dmx_uri		 addr;
	int		 can_connect;	/* has an address (not fd/spawn) */
	mc_conn		*conn;		/* eplock; NULL while down */
	unsigned	 gen;		/* eplock: connections made */
	/* supervisor only */
	unsigned	 fails;		/* attempts failed in a row */
	uint64_t	 retry_at;	/* next attempt, ns */
	uint64_t	 health_at;	/* next $/health, ns */
	char		 why[MUX_ERRLEN]; /* eplock: last failure */
	mh_probe	 probe;
	_Atomic int	 health_draining; /* $/health said "draining" */
	/* a refused $/auth (supervisor writes, pickers read under eplock):
	 * not reconnected; calls fail with the server's answer */
	int		 auth_refused;
	int64_t		 auth_code;
	_Atomic uint64_t calls;
	_Atomic uint64_t connects;
	_Atomic uint64_t connect_failures;
} mh_ep;

/* One call's attempts so far. */
typedef struct mh_try {
	int		 skip;		/* endpoint not to pick; -1: none */
	unsigned	 sends;		/* attempts ended */
	int		 retried;	/* sent once more elsewhere already */
} mh_try;
#define MH_TRY_INIT { -1, 0, 0 }

typedef struct mh_async {
	mc_call		 call;		/* first: conn.c hands us this */
	mux_result	 res;
	struct mux	*m;
	mux_callback	 cb;		/* NULL: a notification (method,
					 * params) for the notify callback */
	void		*user;
	int		 rc;
	mh_try		 try;		/* its attempts */
	unsigned	 ep;		/* where it was sent */
	unsigned	 gen;		/* ...and that endpoint's connection */
	mux_token	*tok;		/* the caller's, or NULL */
	uint64_t	 deadline;	/* ns; 0 none */
	struct mh_async *next;		/* parked list, completion queue */
	const char	*method;	/* copies, kept for a resend */
	const void	*params;
	size_t		 len;
	char		 store[];
} mh_async;

struct mux {
	mux_options	 opt;
	unsigned	 nep;
	mh_ep		*ep;
	pthread_rwlock_t eplock;
	_Atomic unsigned rr;		/* rotates ties between endpoints */
	_Atomic int	 closed;
	_Atomic size_t	 max_frame;

	pthread_mutex_t	 mu;
	pthread_cond_t	 cv;		/* kicks the supervisor */
	pthread_cond_t	 up_cv;		/* an endpoint connected; or closed */
	uint64_t	 up_epoch;	/* mu: connections made so far */
	int		 kick;		/* mu */
	int		 stop;		/* mu: the supervisor must exit */
	mh_async	*parked;	/* mu: async calls waiting for a conn */
	pthread_t	 sup;
	int		 sup_started;

	pthread_mutex_t	 qmu;
	pthread_cond_t	 qcv;
	mh_async	*qhead, *qtail;	/* qmu: completions to deliver */
	int		 qstop;		/* qmu: the dispatcher must exit */
	pthread_t	 disp;
	_Atomic int	 disp_started;	/* written under qmu */
	int		 qfd;		/* completion_fd: eventfd, else -1 */

	_Atomic unsigned users;		/* threads inside API calls */
	_Atomic int	 freeing;
	unsigned	 readers;	/* mu: connection readers running */
	pthread_cond_t	 users_cv;	/* mu: users or readers reached 0 */

	_Atomic uint64_t calls, retries, late_retired;
	_Atomic(mux_notify_fn) notify_fn;	/* mux_set_notify */
	void *_Atomic	 notify_user;
	char		*auth_name, *auth_secret;	/* copies, or NULL */
	char		*tls_ca, *tls_cert, *tls_key, *tls_server_name;
	void		*tls_ctx;	/* SSL_CTX *, if an endpoint is tls: */
};

/* A cancellation token's value: endpoint + 1 (16 bits), its connection's
 * generation (16 bits) and the msgid; 0 means no call. */
static inline unsigned long long
mh_token(unsigned ep, unsigned gen, uint32_t msgid)
{
	return (unsigned long long)(ep + 1) << 48 |
	    (unsigned long long)(gen & 0xffff) << 32 | msgid;
}

static inline void
mh_token_set(mux_token *tok, unsigned long long v)
{
	if (tok != NULL)
		__atomic_store_n(&tok->opaque, v, __ATOMIC_RELEASE);
}

/* ---- mux.c ---- */


/* ---- endpoint.c ---- */

/* Count a thread in and out of the API (mux_free waits for none). */
void	 mh_enter(mux_t *m);
void	 mh_leave(mux_t *m);
/* MUX_OK, or MUX_EINVAL/MUX_ETOOBIG with a reason in res (if not NULL). */
int	 mh_check_args(mux_t *m, const char *method, const void *params,
	    size_t len, mux_result *res);

/* The open, non-draining connection with the fewest calls in flight, other
 * than endpoint skip (-1: none), referenced; or NULL with *why. */
mc_conn	*mh_pick(mux_t *m, int skip, unsigned *idx, unsigned *gen, int *why,
	    mux_result *res);
/* Do calls wait for a connection (wait_connected, with a supervisor)? */
int	 mh_can_wait(mux_t *m);
/* Connections made so far, and waiting for the next one (0), or until *dl
 * (-1: timed out; NULL: no limit), or until the handle closes (0). */
uint64_t mh_up_epoch(mux_t *m);
int	 mh_wait_up(mux_t *m, uint64_t e0, const struct timespec *dl);

enum {
	MH_DONE,	/* the answer stands */
	MH_ELSEWHERE,	/* not executed: once more, avoiding t->skip */
	MH_AGAIN,	/* never sent: pick again (any endpoint) */
};
/* After an attempt on endpoint ep ended with rc (and res): what next. The
 * only place that decides; sync, async and parked calls all ask it. */
int	 mh_next_attempt(mux_t *m, mh_try *t, unsigned ep, int rc,
	    const mux_result *res);
/* The retry elsewhere could not be sent (rc): the first answer stands. */
int	 mh_first_stands(const mh_try *t, int rc);

/* ---- async.c ---- */

/* Send a where its attempts allow; MUX_OK once in flight. */
int	 mh_async_send(mux_t *m, mh_async *a, int *no_endpoint);
/* Queue a finished call for its callback. */
void	 mh_deliver(mh_async *a, int rc);
/* A connection's notification (mc_note_fn; arg: the handle). */
void	 mh_on_notify(void *arg, const char *method, size_t mlen,
	    const uint8_t *params, size_t plen);
void	 mh_async_finish(mux_t *m);

/* ---- tls.c ---- */

/* The client context of tls: endpoints; -1 with why in err. */
int	 mh_tls_init(mux_t *m, char *err, size_t errlen);
void	 mh_tls_fini(mux_t *m);
/* TLS over a connected fd (taken) to ep: handshake done, the server's
 * certificate and name verified; NULL with why in err. */
dmx_xport *mh_tls_connect(mux_t *m, mh_ep *ep, int fd, char *err,
	    size_t errlen);

/* ---- supervise.c ---- */

/* A connection for ep over fds it takes, its reader counted in. */
mc_conn	*mh_conn_start(mux_t *m, mh_ep *ep, int rfd, int wfd, pid_t child,
	    char *err, size_t errlen);
mc_conn	*mh_conn_start_x(mux_t *m, mh_ep *ep, dmx_xport *x, char *err,
	    size_t errlen);
mc_conn	*mh_ep_connect(mux_t *m, mh_ep *ep, char *err, size_t errlen);
/* Make c the endpoint's connection (NULL: down); returns the old one. */
mc_conn	*mh_ep_swap(mux_t *m, mh_ep *ep, mc_conn *c, const char *why);
uint64_t mh_backoff_ns(const mux_options *o, unsigned fails);
/* Send or fail the parked calls; returns the next deadline, 0 if none. */
uint64_t mh_service_parked(mux_t *m, uint64_t now);
int	 mh_supervisor_start(mux_t *m, char *err, size_t errlen);
void	 mh_supervisor_stop(mux_t *m);

#endif
