#!/bin/sh
# 110-plugins.t - every stage of loading a plugin that can fail is reported
# with the file, the stage and the reason, and stops demuxd with exit 2.
. "$(dirname "$0")/tap.sh"

load() {	# load NAME PATH [CONFIG]: --check a config with one plugin
	{
		echo "plugins:"
		echo "  - name: $1"
		echo "    path: $2"
		[ -n "${3:-}" ] && echo "    config: $3"
	} > "$TMP/$1.yaml"
	run "$DEMUXD" --check -c "$TMP/$1.yaml"
}

TP=$BUILD/t/plugins

load badabi "$TP/badabi.so"
is "$rc" 2 "a plugin built for another ABI major is refused (exit 2)"
like "$out" "$TMP/badabi.yaml:2:5: plugin 'badabi' $TP/badabi.so: built for plugin ABI 2\.3, this demuxd provides ABI 1\.6" \
    "...naming the file, the version found and the version expected"

# a plugin that uses msgpack-c (kv calls msgpack_pack_object) without linking it: it would load on
# demuxd's own libmsgpackc, which plugins must never lean on
ROOT=$(cd "$(dirname "$0")/.." && pwd)
run cc ${SAN_FLAGS:-} -shared -fPIC -I"$ROOT/include" -o "$TMP/nolink.so" "$ROOT/plugins/kv/kv.c"
[ "$rc" = 0 ] || echo "$out" | sed 's/^/#   /'
load nolink "$TMP/nolink.so"
is "$rc" 2 "a plugin that does not link a library it uses is refused"
like "$out" "plugin 'nolink' $TMP/nolink.so: uses msgpack_[a-z_]+ (\(and [0-9]+ more\) )?without linking the library that provides it: .*libmsgpackc\.so[.0-9]*; link the plugin with -lmsgpackc" \
    "...naming a symbol, where it resolves today, and the flag to add"
run cc ${SAN_FLAGS:-} -shared -fPIC -I"$ROOT/include" -o "$TMP/linked.so" "$ROOT/plugins/kv/kv.c" -lmsgpackc
load linked "$TMP/linked.so"
is "$rc" 0 "...the same plugin linked with -lmsgpackc loads"

load nosym "$TP/nosym.so"
is "$rc" 2 "a shared object without the entry symbol is refused"
like "$out" "plugin 'nosym' $TP/nosym.so: does not export demux_plugin_entry\(\): .*undefined symbol" \
    "...with the stage and the copied dlerror()"

load badmagic "$TP/badmagic.so"
is "$rc" 2 "an entry returning something that is not a descriptor is refused"
like "$out" "badmagic.so: bad magic 0x12345678 \(expected 0x444d5850\): not a demux plugin" \
    "...by its magic, before any other field is read"

load initfail "$TP/initfail.so"
is "$rc" 2 "a plugin whose init fails stops demuxd"
like "$out" "initfail.so: init failed: database unreachable" "...with the plugin's own message"

printf 'not an ELF file\n' > "$TMP/text.so"
load text "$TMP/text.so"
is "$rc" 2 "a file that is not a shared object is refused"
like "$out" "text.so: cannot load: .*(invalid ELF header|file too short)" "...with dlopen's reason"

load kv "$BUILD/plugins/kv.so" "{ capacity: lots }"
is "$rc" 2 "kv refuses a bad capacity in its config"
like "$out" "kv.so: init failed: config: capacity: expected a non-negative integer, got 'lots'" \
    "...through init's error message (demux_config_uint's, naming the key and the value)"
load kv3 "$BUILD/plugins/kv.so" "{ capacity: 0 }"
like "$out" "kv.so: init failed: capacity must be an integer from 1 to" "...and one out of its range"

load kv2 "$BUILD/plugins/kv.so" "{ capacity: 5, colour: blue }"
like "$out" "init failed: config: unknown key 'colour' \(expected one of: capacity\)" \
    "kv refuses unknown config keys (demux_config_keys)"

# plugins export exactly one symbol: the entry point
for p in echo sleep kv; do
	syms=$(nm -D --defined-only "$BUILD/plugins/$p.so" | awk '$2 ~ /^[TDBR]$/ {print $3}' | tr '\n' ' ')
	is "$syms" "demux_plugin_entry " "$p.so exports only demux_plugin_entry"
done

# and leave nothing undefined that the host would have to provide
for p in echo sleep kv; do
	und=$(nm -D --undefined-only "$BUILD/plugins/$p.so" | grep -v -E ' (msgpack_|pthread_|nanosleep|free|malloc|memcpy|memcmp|calloc|snprintf|__|realloc|memset|strlen|_ITM|_Jv)' || true)
	is "$und" "" "$p.so needs nothing from demuxd"
done

done_testing
