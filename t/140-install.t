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
done_testing
