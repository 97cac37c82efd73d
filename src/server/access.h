/*
 * access.h - who may call what: the identity of a connection's caller, the
 * `access:` rules of a configuration, and $/auth tokens. See
 * docs/security.md.
 *
 * An identity is a string: "unix:USER" (the peer of a unix socket, from
 * SO_PEERCRED), "cert:CN" (a verified client certificate), "token:NAME"
 * (after $/auth) or "anonymous". The rules are the configuration's, so a
 * reload (SIGHUP) changes them for every connection's next call.
 */
#ifndef DMX_ACCESS_H
#define DMX_ACCESS_H

#include <stddef.h>
#include <sys/types.h>

#include "config.h"

#define DMX_ANONYMOUS	"anonymous"

/* May identity call method (NUL-terminated)? The first rule whose identity
 * glob matches decides: deny before allow; no rule: no. Without an access:
 * section, yes. $/auth is always allowed. */
int dmx_access_allowed(const dmx_config *cfg, const char *identity,
    const char *method);
/* The same for a method name that is not NUL-terminated. */
int dmx_access_allowed_n(const dmx_config *cfg, const char *identity,
    const char *method, size_t len);

/* $/auth: the token called name whose secret is secret[0..len), compared
 * in constant time; NULL if none matches (unknown name or wrong secret
 * alike). */
const dmx_conf_token *dmx_access_token(const dmx_config *cfg,
    const char *name, size_t nlen, const char *secret, size_t slen);

/* "unix:USER" for uid (its name, or the number), into buf. */
void dmx_access_unix_identity(uid_t uid, char *buf, size_t len);

#endif
