#!/bin/sh
# 132-muxcall-top.t - muxcall --top driven in tmux (send-keys,
# capture-pane): the screen shows the methods and their figures change
# under load; q quits with status 0. Not a terminal: one table per
# interval. The last screen is kept as build/t/muxcall-top.txt.
. "$(dirname "$0")/tap.sh"
MUXCALL=$BUILD/muxcall
if ! command -v tmux >/dev/null 2>&1; then
	echo "1..0 # SKIP tmux not installed (Debian package tmux)"
	exit 0
fi
TM="tmux -L demux-t$$"

cat > "$TMP/demux.yaml" <<X
listen: [ "unix:demux.sock" ]
workers: 4
plugins:
  - name: echo
    path: $BUILD/plugins/echo.so
  - name: sleep
    path: $BUILD/plugins/sleep.so
X
mkfifo "$TMP/log"
"$DEMUXD" -c "$TMP/demux.yaml" 2> "$TMP/log" &
pid=$!
trap '$TM kill-server 2>/dev/null; kill $pid $lpid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$TMP"' EXIT
exec 3< "$TMP/log"
while IFS= read -r line <&3; do case $line in *READY*) break ;; esac; done
U="unix:$TMP/demux.sock"

# not a terminal: plain tables, one per interval
run "$MUXCALL" -c "$U" --top --interval 100 -n 3
is "$rc" 0 "--top with stdout not a terminal exits 0 after -n 3 tables"
is "$(printf '%s\n' "$out" | grep -c '^METHOD ')" 3 "...three plain tables"
like "$out" "^echo\.echo " "...with a row per method"

# in tmux, under load
"$MUXCALL" -c "$U" -n 100000000 -P 2 echo.echo 1 > /dev/null 2>&1 &
lpid=$!
$TM new-session -d -x 110 -y 30 "$MUXCALL -c $U --top --interval 200; echo EXIT=\$? > $TMP/exit; sleep 30"
screen() { $TM capture-pane -p; }
calls() {	# the CALLS column of echo.echo on the screen
	screen | awk '$1 == "echo.echo" { print $5 }'
}
first=""
for i in $(seq 100); do		# polling the screen: what a user sees
	first=$(calls)
	[ -n "$first" ] && [ "$first" != 0 ] && break
	sleep 0.05
done
[ -n "$first" ]
ok $? "the screen shows echo.echo with its figures ($first calls)"
like "$(screen)" "^METHOD +CALLS/S +ERRORS/S" "...under the column heads"
like "$(screen)" "^demuxd serving" "...and the server line"
second=$first
for i in $(seq 100); do
	second=$(calls)
	[ -n "$second" ] && [ "$second" != "$first" ] && break
	sleep 0.05
done
[ "$second" != "$first" ]
ok $? "...refreshed in place: the calls went from $first to $second"
lines=$(screen | grep -c '^METHOD ')
is "$lines" 1 "...one view, redrawn (not scrolled)"
screen > "$BUILD/t/muxcall-top.txt"
$TM send-keys q
for i in $(seq 100); do
	[ -s "$TMP/exit" ] && break
	sleep 0.05
done
is "$(cat "$TMP/exit" 2>/dev/null)" "EXIT=0" "q quits with status 0"
kill $lpid 2>/dev/null
wait $lpid 2>/dev/null

kill -TERM $pid
wait $pid
is "$?" 0 "demuxd stops cleanly"
done_testing
