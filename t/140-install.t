#!/bin/sh
# 140-install.t - `make install` into a temporary DESTDIR, then an
# out-of-tree plugin and an out-of-tree client built with nothing but
# pkg-config; the installed demuxd loads the plugin and the client calls it.
. "$(dirname "$0")/tap.sh"
ROOT=$(pwd)
DEST=$TMP/root
P=/usr/local

run make -s -C "$ROOT" install BUILD="$BUILD" PREFIX=$P DESTDIR="$DEST"
is "$rc" 0 "make install PREFIX=$P DESTDIR=... succeeds"
[ "$rc" = 0 ] || echo "$out" | sed 's/^/#   /'
for f in bin/demuxd bin/muxcall lib/libmux.a lib/libmux.so lib/pkgconfig/libmux.pc \
	lib/pkgconfig/demux-plugin.pc include/demux/plugin.h include/demux/mux.h \
	share/man/man1/muxcall.1 share/man/man3/libmux.3 share/man/man5/demux.yaml.5 \
	share/man/man8/demuxd.8 share/demux/demuxd.service lib/demux/plugins/echo.so; do
	[ -e "$DEST$P/$f" ]
	ok $? "installed $f"
done
soname=$(objdump -p "$DEST$P/lib/libmux.so" 2>/dev/null | awk '/SONAME/ {print $2}')
is "$soname" "libmux.so.0" "libmux.so has the SONAME libmux.so.0"

export PKG_CONFIG_PATH="$DEST$P/lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$DEST"
readme_block hello.c > "$TMP/hello.c"
readme_block client.c > "$TMP/client.c"
mkdir "$TMP/out" && cd "$TMP/out" || exit 1
run cc ${SAN_FLAGS:-} -o hello.so "$TMP/hello.c" $(pkg-config --cflags --libs demux-plugin)
is "$rc" 0 "an out-of-tree plugin builds with pkg-config demux-plugin alone"
[ "$rc" = 0 ] || echo "$out" | sed 's/^/#   /'
run cc ${SAN_FLAGS:-} -o client "$TMP/client.c" $(pkg-config --cflags --libs libmux)
is "$rc" 0 "an out-of-tree client builds with pkg-config libmux alone"
[ "$rc" = 0 ] || echo "$out" | sed 's/^/#   /'

cat > demux.yaml <<X
listen: [ "unix:demux.sock" ]
plugins:
  - name: hello
    path: hello.so
X
mkfifo log
"$DEST$P/bin/demuxd" -c demux.yaml 2> log &
# (the log goes to the fifo; on failure it is shown below)
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; cd /; rm -rf "$TMP"' EXIT
exec 3< log
ready=1
while IFS= read -r line <&3; do case $line in *READY*) ready=0; break ;; esac; done
ok $ready "the installed demuxd loads the out-of-tree plugin"
[ $ready = 0 ] || echo "#   $line"
LD_LIBRARY_PATH="$DEST$P/lib" run ./client "unix:$TMP/out/demux.sock"
is "$(printf '%s\n' "$out" | grep -c '^hello, world$')" 8 \
    "the out-of-tree client (libmux.so) calls it from 8 threads"
run "$DEST$P/bin/muxcall" -c "unix:$TMP/out/demux.sock" hello.greet '"installed"'
is "$out" '"hello, installed"' "the installed muxcall calls it too"
kill -TERM $pid
wait $pid
is "$?" 0 "demuxd stops cleanly"

# a second install to another prefix, after the first: everything that
# names a prefix names the new one
Q=/opt/demux-t
DEST2=$TMP/root2
run make -s -C "$ROOT" install BUILD="$BUILD" PREFIX=$Q DESTDIR="$DEST2"
is "$rc" 0 "make install PREFIX=$Q after an install to $P"
like "$(cat "$DEST2$Q/lib/pkgconfig/libmux.pc" "$DEST2$Q/lib/pkgconfig/demux-plugin.pc")" \
    "^prefix=$Q\$" "...its .pc files name $Q"
! grep -q "$P" "$DEST2$Q/lib/pkgconfig/libmux.pc" "$DEST2$Q/lib/pkgconfig/demux-plugin.pc"
ok $? "...and never $P"
like "$(grep ExecStart "$DEST2$Q/share/demux/demuxd.service" "$DEST2$Q/share/demux/demuxd@.service")" \
    "ExecStart=$Q/bin/demuxd" "...its systemd units run $Q/bin/demuxd"
! grep -q "@PREFIX@\|/usr/local" "$DEST2$Q/share/demux/demuxd.service" "$DEST2$Q/share/demux/demuxd@.service"
ok $? "...with no other prefix left in them"
like "$(grep 'path:' "$DEST2$Q/share/demux/demux.yaml")" "path: $Q/lib/demux/plugins/echo.so" \
    "...its example configuration loads the installed plugins"
! grep -q "build/" "$DEST2$Q/share/demux/demux.yaml"
ok $? "...and nothing from the build tree"

# libmux.so under a prefix the dynamic linker does not search: the rpath
# pkg-config gives, and LD_LIBRARY_PATH, both work; without either it fails
export PKG_CONFIG_PATH="$DEST2$Q/lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$DEST2"
cat > "$TMP/both.c" <<'X'
#include <msgpack.h>
#include <demux/mux.h>
int main(void) {
	msgpack_sbuffer b;
	msgpack_sbuffer_init(&b);	/* msgpack-c itself, beside libmux */
	msgpack_sbuffer_destroy(&b);
	return mux_strerror(MUX_OK) == 0;
}
X
run cc ${SAN_FLAGS:-} -o "$TMP/both" "$TMP/both.c" $(pkg-config --cflags --libs libmux)
is "$rc" 0 "a client using msgpack-c itself links with pkg-config --libs libmux alone"
[ "$rc" = 0 ] || echo "$out" | sed 's/^/#   /'
run cc ${SAN_FLAGS:-} -o "$TMP/rp" "$TMP/both.c" $(pkg-config --cflags --libs libmux) \
    -Wl,-rpath,"$DEST2$Q/lib"
is "$rc" 0 "...and with the run path (here the staged $DEST2$Q/lib; installed, pkg-config --variable=rpath libmux)"
like "$(pkg-config --variable=rpath libmux)" "^-Wl,-rpath,.*$Q/lib\$" \
    "pkg-config --variable=rpath libmux names the library's folder"
run "$TMP/rp"
is "$rc" 0 "...a client linked with it runs without LD_LIBRARY_PATH"
if ldconfig -p 2>/dev/null | grep -q 'libmux\.so\.0 '; then
	ok 0 "# SKIP a libmux.so.0 is installed system-wide here"
else
	run "$TMP/both"
	[ "$rc" != 0 ]
	ok $? "...without it, and without LD_LIBRARY_PATH, it cannot start (libmux.so.0 not found)"
fi
LD_LIBRARY_PATH="$DEST2$Q/lib" run "$TMP/both"
is "$rc" 0 "...with LD_LIBRARY_PATH it runs"
done_testing
