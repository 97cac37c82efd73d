/*
 * plugin_deps.h - does a loaded plugin resolve every symbol it uses
 * through its own dependencies?
 *
 * A plugin built without -lmsgpackc still loads into demuxd, because
 * demuxd's own libmsgpackc satisfies it from the global scope; it then
 * breaks on the day demuxd links msgpack differently, or in a host that
 * does not. docs/plugins.md promises that plugins never resolve symbols
 * from demuxd: this check makes the promise true, at load time, with a
 * message naming the symbol and the library to link.
 */
#ifndef DMX_PLUGIN_DEPS_H
#define DMX_PLUGIN_DEPS_H

#include <stddef.h>

/* 0 if every strong undefined symbol of the ELF file at path resolves in
 * handle's own scope (the plugin and its DT_NEEDED libraries); else -1
 * with why ("uses msgpack_pack_array ... link it with -lmsgpackc"). A
 * file that cannot be read as a native ELF object passes: dlopen already
 * accepted it, and this check only adds a clearer refusal. */
int dmx_plugin_deps_check(void *handle, const char *path, char *why,
    size_t len);

#endif
