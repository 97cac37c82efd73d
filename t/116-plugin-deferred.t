#!/bin/sh
# 116-plugin-deferred.t - the two plugins of docs/plugins.md's "Answering
# later" and "Talking back", built from the page itself: later.c answers
# from a thread of its own with no worker held (two calls on a pool of one
# overlap), ticker.c's notifications come before its answer, as the page
# shows them.
. "$(dirname "$0")/tap.sh"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MUXCALL=$BUILD/muxcall

for p in later ticker; do
	readme_block $p.c "$ROOT/docs/plugins.md" > "$TMP/$p.c"
	[ -s "$TMP/$p.c" ]
	ok $? "docs/plugins.md holds $p.c"
	run cc ${SAN_FLAGS:-} -shared -fPIC -fvisibility=hidden -Wl,--no-undefined \
	    -Wall -Wextra -Werror -I"$ROOT/include" -o "$TMP/$p.so" "$TMP/$p.c" \
	    -lmsgpackc -pthread
	is "$rc" 0 "...and it builds with -Wall -Wextra -Werror -Wl,--no-undefined"
	[ "$rc" = 0 ] || echo "$out" | sed 's/^/#   /'
done

cat > "$TMP/demux.yaml" <<X
listen: [ "unix:demux.sock" ]
workers: 1
plugins:
  - name: later
    path: $TMP/later.so
  - name: ticker
    path: $TMP/ticker.so
X
mkfifo "$TMP/log"
"$DEMUXD" -c "$TMP/demux.yaml" 2> "$TMP/log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$TMP"' EXIT
exec 3< "$TMP/log"
while IFS= read -r line <&3; do case $line in *READY*) break ;; esac; done
cat <&3 > /dev/null &
U="unix:$TMP/demux.sock"

run "$MUXCALL" -c "$U" later.after 200 '"hi"'
is "$out" '"hi"' "later.after 200 \"hi\" answers \"hi\""
# with one worker, a call that held it would make these take 10 x 300 ms
run "$MUXCALL" -c "$U" -n 10 -P 10 later.after 300 '"x"'
like "$out" ", 0 errors" "...ten at once on a pool of one: no errors"
# (a worker held per call: 10 x 300 ms, over 3 s)
like "$out" "in [0-2]\.[0-9]* s" "...done long before ten 300 ms waits one after another: no worker is held"
run "$MUXCALL" -c "$U" later.after 70000 '"x"'
like "$out" "parameter 1 \(ms\) must be from 0 to 60000" "...a bad ms is -32602, naming it"

run "$MUXCALL" -c "$U" --watch ticker.count 3
is "$out" '{"method": "ticker.tick", "params": [1]}
{"method": "ticker.tick", "params": [2]}
{"method": "ticker.tick", "params": [3]}
3' "muxcall --watch ticker.count 3 prints what the page shows"
kill $pid
wait $pid
is "$?" 0 "demuxd stops cleanly"
done_testing
