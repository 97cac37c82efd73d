#!/bin/sh
# 133-muxcall-watch.t - muxcall --watch prints the notifications a call
# causes as JSON lines, in order, before its result; --subscribe keeps
# printing what arrives until interrupted, and then exits 0.
. "$(dirname "$0")/tap.sh"
MUXCALL=$BUILD/muxcall

cat > "$TMP/demux.yaml" <<X
listen: [ "unix:demux.sock" ]
workers: 2
plugins:
  - name: timer
    path: $BUILD/plugins/timer.so
  - name: pubsub
    path: $BUILD/plugins/pubsub.so
X
mkfifo "$TMP/log"
"$DEMUXD" -c "$TMP/demux.yaml" 2> "$TMP/log" &
pid=$!
trap 'kill $pid $spid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$TMP"' EXIT
exec 3< "$TMP/log"
while IFS= read -r line <&3; do case $line in *READY*) break ;; esac; done
cat <&3 > /dev/null &
U="unix:$TMP/demux.sock"

run "$MUXCALL" -c "$U" --watch timer.progress 3 10
is "$rc" 0 "muxcall --watch timer.progress 3 10 exits 0"
is "$(printf '%s\n' "$out" | sed -n '1,3s/.*"params": \[[0-9]*, \([0-9]\), 3\].*/\1/p' | tr -d '\n')" \
    123 "...three notification lines first, i = 1, 2, 3 in order"
like "$(printf '%s\n' "$out" | sed -n 1p)" '^\{"method": "timer.progress", "params": \[[0-9]+, 1, 3\]\}$' \
    "...each one JSON object {\"method\", \"params\"}"
is "$(printf '%s\n' "$out" | sed -n 4p)" 3 "...then the result"

run "$MUXCALL" -c "$U" timer.progress 2 10
is "$out" 2 "without --watch only the result is printed"

# --subscribe: the call's result, then every message until SIGINT
"$MUXCALL" -c "$U" --subscribe pubsub.subscribe '"news"' > "$TMP/sub.out" 2>&1 &
spid=$!
n=0
while [ "$n" != 1 ] && kill -0 $spid 2>/dev/null; do
	n=$("$MUXCALL" -c "$U" pubsub.publish '"news"' '"probe"')
done
is "$n" 1 "a --subscribe muxcall is subscribed"
"$MUXCALL" -c "$U" pubsub.publish '"news"' '{"k": 1}' > /dev/null
"$MUXCALL" -c "$U" pubsub.publish '"news"' '"last"' > /dev/null
# wait for the last line to be printed: it is flushed line by line
i=0
while ! grep -q '"last"' "$TMP/sub.out" && [ $i -lt 500 ]; do
	i=$((i + 1)); sleep 0.01
done
kill -INT $spid
wait $spid; src=$?
is "$src" 0 "...and exits 0 on SIGINT"
# (a publish racing the subscribe's answer may be printed before it: the
# server queued it first)
like "$(cat "$TMP/sub.out")" '^true$' "...having printed the subscribe's result"
like "$(cat "$TMP/sub.out")" '\{"method": "pubsub.message", "params": \["news", \{"k": 1\}\]\}' \
    "...and the messages published meanwhile as JSON lines"
like "$(tail -n 1 "$TMP/sub.out")" '"params": \["news", "last"\]' "...in order"
spid=
done_testing
