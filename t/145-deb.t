#!/bin/sh
# 145-deb.t - `make deb`, then the packages installed into a fresh Debian
# root (mmdebstrap; chroot, no systemd): the system user, the default
# configuration, the installed demuxd called with the installed muxcall,
# and a plugin and a client built against libmux-dev with pkg-config
# alone. Skipped only where it cannot run (not root, no mmdebstrap, under a
# sanitizer: packaging does not change with one), with the reason.
. "$(dirname "$0")/tap.sh"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" != 0 ]; then
	echo "1..0 # SKIP needs root (mmdebstrap --mode=root, chroot)"; exit 0
fi
if ! command -v mmdebstrap >/dev/null 2>&1; then
	echo "1..0 # SKIP mmdebstrap not installed (apt-get install mmdebstrap)"; exit 0
fi
if [ -n "${SAN_FLAGS:-}" ]; then
	echo "1..0 # SKIP packaging is the same with or without a sanitizer: make test runs it"; exit 0
fi
R=$TMP/root
trap 'kill $dpid 2>/dev/null; wait $dpid 2>/dev/null; umount -l "$R/proc" 2>/dev/null; rm -rf --one-file-system "$TMP"' EXIT

run make -s -C "$ROOT" deb BUILD="$BUILD"
is "$rc" 0 "make deb builds the packages"
[ "$rc" = 0 ] || echo "$out" | tail -20 | sed 's/^/#   /'
debs=$(ls "$BUILD"/deb/demux_*.deb "$BUILD"/deb/libmux0_*.deb "$BUILD"/deb/libmux-dev_*.deb 2>/dev/null)
is "$(echo $debs | wc -w)" 3 "...demux, libmux0 and libmux-dev"

# a fresh root with what the packages depend on, and a compiler
run mmdebstrap --variant=apt --mode=root --quiet \
    --include=adduser,libyaml-0-2,libmsgpackc2,libmicrohttpd12,libjansson4,libssl3,libpython3.11,gcc,libc6-dev,pkg-config,libmsgpack-dev,libssl-dev \
    bookworm "$R"
is "$rc" 0 "mmdebstrap makes a fresh Debian root"
[ "$rc" = 0 ] || echo "$out" | tail -10 | sed 's/^/#   /'
mkdir -p "$R/tmp/debs" && cp $debs "$R/tmp/debs/"
run chroot "$R" sh -c 'dpkg -i /tmp/debs/*.deb'
is "$rc" 0 "the three packages install (dpkg -i) into it"
[ "$rc" = 0 ] || echo "$out" | tail -10 | sed 's/^/#   /'
run chroot "$R" getent passwd demux
like "$out" "^demux:" "...and make the demux system user"
like "$(cat "$R/lib/systemd/system/demuxd.service")" "User=demux" \
    "...whose unit runs demuxd as that user"
like "$(cat "$R/lib/systemd/system/demuxd@.service")" "ExecStart=/usr/bin/demuxd -c /etc/demux/%i.yaml" \
    "...and the template unit, demuxd@NAME with /etc/demux/NAME.yaml"
run chroot "$R" /usr/bin/demuxd --check -c /etc/demux/demux.yaml
is "$rc" 0 "the default /etc/demux/demux.yaml loads the installed plugins"
like "$(grep '^listen' "$R/etc/demux/demux.yaml")" '"unix:/run/demux/demux.sock" \]$' \
    "...and listens on /run/demux/demux.sock only"

# the installed demuxd, as the demux user (systemd would make /run/demux)
mount -t proc proc "$R/proc"
mkdir -p "$R/run/demux" && chroot "$R" chown demux:demux /run/demux
mkfifo "$TMP/log"
chroot --userspec=demux:demux "$R" /usr/bin/demuxd -c /etc/demux/demux.yaml 2> "$TMP/log" &
dpid=$!
exec 3< "$TMP/log"
ready=1
while IFS= read -r line <&3; do case $line in *READY*) ready=0; break ;; esac; done
ok $ready "the installed demuxd starts as demux"
run chroot "$R" /usr/bin/muxcall -c unix:/run/demux/demux.sock echo.echo 1 '"two"'
is "$out" '[1, "two"]' "...and the installed muxcall calls it"

# libmux-dev: a plugin and a client built with pkg-config alone
readme_block hello.c "$ROOT/README.md" > "$R/tmp/hello.c"
readme_block client.c "$ROOT/README.md" > "$R/tmp/client.c"
run chroot "$R" sh -c 'cd /tmp && cc -o hello.so hello.c $(pkg-config --cflags --libs demux-plugin)'
is "$rc" 0 "a plugin builds against libmux-dev with pkg-config demux-plugin"
[ "$rc" = 0 ] || echo "$out" | tail -5 | sed 's/^/#   /'
run chroot "$R" sh -c 'cd /tmp && cc -o client client.c $(pkg-config --cflags --libs libmux)'
is "$rc" 0 "...and a client with pkg-config libmux"
[ "$rc" = 0 ] || echo "$out" | tail -5 | sed 's/^/#   /'
printf 'listen: "unix:/tmp/hello.sock"\nplugins:\n  - name: hello\n    path: /tmp/hello.so\n' > "$R/tmp/hello.yaml"
run chroot "$R" /usr/bin/demuxd --check -c /tmp/hello.yaml
is "$rc" 0 "...the installed demuxd loads that plugin"
kill -TERM $dpid
wait $dpid
is "$?" 0 "the installed demuxd stops cleanly"
done_testing
