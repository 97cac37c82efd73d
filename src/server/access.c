/*
 * access.c - applying the access: rules and checking $/auth tokens; see
 * access.h. fnmatch(3) without flags: `*` matches dots too, so "kv.*" is
 * every method of kv and "*" is everything.
 */
#include <fnmatch.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "access.h"

static int
any_match(char *const *globs, size_t n, const char *s)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (fnmatch(globs[i], s, 0) == 0)
			return 1;
	return 0;
}

int
dmx_access_allowed(const dmx_config *cfg, const char *identity,
    const char *method)
{
	size_t i;

	if (!cfg->has_access || strcmp(method, "$/auth") == 0)
		return 1;
	for (i = 0; i < cfg->naccess; i++) {
		const dmx_conf_rule *r = &cfg->access[i];

		if (fnmatch(r->identity, identity, 0) != 0)
			continue;
		if (any_match(r->deny, r->ndeny, method))
			return 0;
		return any_match(r->allow, r->nallow, method);
	}
	return 0;
}

int
dmx_access_allowed_n(const dmx_config *cfg, const char *identity,
    const char *method, size_t len)
{
	char name[512];

	if (!cfg->has_access)
		return 1;
	if (len >= sizeof(name))
		return 0;	/* no method has such a name */
	memcpy(name, method, len);
	name[len] = '\0';
	return dmx_access_allowed(cfg, identity, name);
}

/* Equal, in time that depends only on the lengths. */
static int
same(const char *a, size_t alen, const char *b, size_t blen)
{
	volatile unsigned char d = (unsigned char)(alen != blen);
	size_t i, n = alen > blen ? alen : blen;

	for (i = 0; i < n; i++)
		d |= (unsigned char)((i < alen ? a[i] : 0) ^
		    (i < blen ? b[i] : 0));
	return d == 0;
}

const dmx_conf_token *
dmx_access_token(const dmx_config *cfg, const char *name, size_t nlen,
    const char *secret, size_t slen)
{
	const dmx_conf_token *found = NULL;
	size_t i;

	/* every token's secret is compared, whatever the name: the time says
	 * nothing about which names exist */
	for (i = 0; i < cfg->ntokens; i++) {
		const dmx_conf_token *t = &cfg->tokens[i];
		int ok_secret = same(secret, slen, t->secret, t->secret_len);
		int ok_name = strlen(t->name) == nlen &&
		    memcmp(t->name, name, nlen) == 0;

		if (ok_secret && ok_name)
			found = t;
	}
	return found;
}

void
dmx_access_unix_identity(uid_t uid, char *buf, size_t len)
{
	struct passwd pw, *res = NULL;
	char tmp[1024];

	if (getpwuid_r(uid, &pw, tmp, sizeof(tmp), &res) == 0 && res != NULL)
		snprintf(buf, len, "unix:%s", res->pw_name);
	else
		snprintf(buf, len, "unix:%u", (unsigned)uid);
}
