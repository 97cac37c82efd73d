#!/bin/sh
# 120-readme.t - the plugin and the client shown in README.md compile with the
# commands shown there, load into demuxd and answer from 8 threads.
. "$(dirname "$0")/tap.sh"
ROOT=$(pwd)

# the fenced C blocks, by their first line
readme_block hello.c > "$TMP/hello.c"
readme_block client.c > "$TMP/client.c"
[ -s "$TMP/hello.c" ] && [ -s "$TMP/client.c" ]
ok $? "README.md holds the plugin and the client"

run cc ${SAN_FLAGS:-} -shared -fPIC -fvisibility=hidden -Wl,--no-undefined \
    -Wall -Wextra -Werror -I"$ROOT/include" -o "$TMP/hello.so" "$TMP/hello.c" -lmsgpackc
is "$rc" 0 "the README plugin builds with -Wl,--no-undefined -Wall -Wextra -Werror"
[ "$rc" = 0 ] || echo "$out" | sed 's/^/#   /'
run cc ${SAN_FLAGS:-} -Wall -Wextra -Werror -I"$ROOT/include" -o "$TMP/client" \
    "$TMP/client.c" "$BUILD/libmux.a" -lmsgpackc -lssl -lcrypto -pthread
is "$rc" 0 "the README client builds against libmux.a"
[ "$rc" = 0 ] || echo "$out" | sed 's/^/#   /'

cat > "$TMP/demux.yaml" <<X
listen: [ "unix:demux.sock" ]
workers: 8
plugins:
  - name: hello
    path: hello.so
X
# demuxd logs READY once it serves: wait for that line on a fifo
mkfifo "$TMP/log"
"$DEMUXD" -c "$TMP/demux.yaml" 2> "$TMP/log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$TMP"' EXIT
exec 3< "$TMP/log"
ready=1
while IFS= read -r line <&3; do
	case $line in *READY*) ready=0; break ;; esac
done
ok $ready "demuxd loads the README plugin"

run "$TMP/client" "unix:$TMP/demux.sock"
is "$rc" 0 "the README client exits 0"
n=$(printf '%s\n' "$out" | grep -c '^hello, world$')
is "$n" 8 "8 threads each got 'hello, world' over one connection"

kill -TERM $pid
wait $pid
is "$?" 0 "demuxd stops cleanly"
done_testing
