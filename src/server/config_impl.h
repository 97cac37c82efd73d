/*
 * config_impl.h - what the configuration loader's files share: the parse
 * context and the checks that name FILE:LINE:COL. config.c reads the file
 * and most keys; config_access.c the security sections (access, auth).
 */
#ifndef DMX_CONFIG_IMPL_H
#define DMX_CONFIG_IMPL_H

#include <msgpack.h>
#include <yaml.h>

#include "config.h"
#include "demux/plugin.h"

typedef struct cfg_ctx {
	const char	*file;
	char		*dir;		/* folder of file, "" for cwd */
	yaml_document_t	 doc;
	char		*err;
	size_t		 errlen;
} cfg_ctx;

/* "FILE:LINE:COL: what" (of node n, or line 1) into the caller's err;
 * returns -1, so that checks read `return cfg_fail(...)`. */
int	 cfg_fail(cfg_ctx *c, const yaml_node_t *n, const char *fmt, ...)
	    DEMUX_PRINTF(3, 4);
/* The text of a scalar node, or NULL. */
const char *cfg_scalar(const yaml_node_t *n);
/* "a scalar", "a list", ... for messages. */
const char *cfg_kind(const yaml_node_t *n);
/* A path relative to the configuration's folder (malloc). */
char	*cfg_resolve(const cfg_ctx *c, const char *p);
/* A non-negative integer (sizes: with K/M/G) at most maxv. */
int	 cfg_uint(cfg_ctx *c, const yaml_node_t *n, const char *key,
	    int sizes, unsigned long long maxv, unsigned long long *out);
/* No key twice in a mapping. */
int	 cfg_check_dup(cfg_ctx *c, yaml_node_t *map);

/* A YAML subtree as msgpack (a plugin's config:). */
int	 cfg_pack_node(cfg_ctx *c, msgpack_packer *pk, yaml_node_t *n,
	    int depth);

/* config_plugins.c: the plugins: list. */
int	 cfg_load_plugins(cfg_ctx *c, dmx_config *cfg, yaml_node_t *v);

/* config_access.c: the top-level access: and auth: sections. */
int	 cfg_load_access(cfg_ctx *c, dmx_config *cfg, yaml_node_t *v);
int	 cfg_load_auth(cfg_ctx *c, dmx_config *cfg, yaml_node_t *v);
int	 cfg_load_tls(cfg_ctx *c, dmx_config *cfg, yaml_node_t *v);

#endif
