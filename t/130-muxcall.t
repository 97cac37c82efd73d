#!/bin/sh
# 130-muxcall.t - the muxcall command line against a real demuxd: JSON in and
# out, errors on stderr with distinct exit codes, --list, --stats, --batch,
# --spawn and the load mode.
. "$(dirname "$0")/tap.sh"
MUXCALL=$BUILD/muxcall

cat > "$TMP/demux.yaml" <<X
listen: [ "unix:demux.sock" ]
workers: 8
plugins:
  - name: echo
    path: $BUILD/plugins/echo.so
  - name: sleep
    path: $BUILD/plugins/sleep.so
  - name: kv
    path: $BUILD/plugins/kv.so
  - name: crashy
    path: $BUILD/t/plugins/crashy.so
    workers: 1
    timeout_ms: 100
  - name: pcrashy
    path: $BUILD/t/plugins/crashy.so
    isolation: process
X
mkfifo "$TMP/log"
"$DEMUXD" -c "$TMP/demux.yaml" 2> "$TMP/log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$TMP"' EXIT
exec 3< "$TMP/log"
while IFS= read -r line <&3; do case $line in *READY*) break ;; esac; done
U="unix:$TMP/demux.sock"

run "$MUXCALL" -c "$U" echo.echo 1 '"two"' '{"k":[3]}'
is "$rc" 0 "a call exits 0"
is "$out" '[1, "two", {"k": [3]}]' "each ARG is a JSON value; the result prints as JSON"

run "$MUXCALL" -c "$U" -p echo.echo '{"a":1}'
like "$out" '^\[$' "-p pretty-prints"

run "$MUXCALL" -c "$U" sleep.sleep -5
is "$rc" 1 "a remote error exits 1"
like "$out" '^error 1: sleep.sleep: negative duration -5 ms$' "...and says code and message on stderr"
like "$out" 'sleep.so' "...with the trace"

run "$MUXCALL" -c "$U" no.such
is "$rc" 1 "an unknown method exits 1"
like "$out" "^error -32601: method 'no.such' not found" "...with -32601"

run "$MUXCALL" -c "$U" echo.echo '{bad json'
is "$rc" 2 "an argument that is not JSON exits 2"
like "$out" "argument 1 is not JSON" "...naming the argument"

run "$MUXCALL" -c "unix:$TMP/nothing.sock" echo.echo 1
is "$rc" 3 "no server exits 3"
like "$out" "connect: No such file" "...with the reason"

# no -c and no DEMUX_URI: the default address, and a hint when it fails
run env -u DEMUX_URI "$MUXCALL" echo.echo 1
if [ "$rc" = 3 ]; then
	like "$out" "no -c, and DEMUX_URI is not set" "a refused default \
address says no -c was given and DEMUX_URI is unset"
else
	ok 0 "# SKIP something answers on tcp:127.0.0.1:7411 here"
fi
run env DEMUX_URI="unix:$TMP/nothing.sock" "$MUXCALL" echo.echo 1
like "$out" "from DEMUX_URI" "an address from DEMUX_URI is named as such"

run "$MUXCALL" -c "$U" -t 100 sleep.sleep 2000
is "$rc" 4 "a timeout exits 4"

run "$MUXCALL" --bogus
is "$rc" 2 "a bad flag exits 2"

run "$MUXCALL" -c "$U" echo.echo '{"$base64":"AAEC"}' 9007199254740993 -1.5
is "$out" '[{"$base64": "AAEC"}, 9007199254740993, -1.5]' \
    "binary travels as {\"\$base64\"}; integers beyond 2^53 stay exact"

run "$MUXCALL" -c "$U" --list
like "$out" '"kv.get"' "--list shows \$/methods"

run "$MUXCALL" -c "$U" --stats
is "$rc" 0 "--stats exits 0"
like "$out" '^server +serving' "--stats shows the server line"
like "$out" 'echo.echo +[0-9]+ ' "...and a row per method"
like "$out" 'sleep.sleep +[0-9]+ +[1-9]' "...with errors counted"
like "$out" '^server .*RSS [0-9]+\.[0-9] MB' "...demuxd's resident memory"
like "$out" 'pcrashy +process +[a-z]+ +[0-9]+ +[0-9]+ +[0-9]+ +[0-9]+ +[0-9]+\.[0-9]' \
    "...and a process-mode plugin's children's"

# a worker past its call's timeout_ms is stuck, in the plugin's own pool:
# the call is answered -32011 at 100 ms, the handler naps on to 1.5 s
run "$MUXCALL" -c "$U" -t 3000 crashy.nap 1500
is "$rc" 1 "a call past its timeout_ms is answered (-32011)"
run "$MUXCALL" -c "$U" --stats
like "$out" 'crashy +thread +own +1 +0 +0 +1 +-' "--stats shows the \
plugin's stuck worker, in its own pool (not the shared pool's 0)"

printf '%s\n' '["echo.echo", 1]' '{"method": "echo.echo", "params": [2]}' \
    'not json' '["sleep.sleep", -1]' | "$MUXCALL" -c "$U" --batch > "$TMP/batch.out" 2>&1
brc=$?
is "$brc" 2 "--batch exits with the worst status (2: a line was not JSON)"
like "$(cat "$TMP/batch.out")" '"id": 1, "result": \[1\]|"result": \[1\], "id": 1' "--batch answers line 1"
like "$(cat "$TMP/batch.out")" '"result": \[2\]' "...line 2 (object form)"
like "$(cat "$TMP/batch.out")" '"code": -32600' "...line 3 as an invalid request"
like "$(cat "$TMP/batch.out")" '"code": 1' "...line 4 with the handler's error"
is "$(wc -l < "$TMP/batch.out" | tr -d ' ')" 4 "...one JSON line per request"

run "$MUXCALL" -c "$U" -n 2000 -P 8 echo.echo 1
is "$rc" 0 "load mode exits 0"
like "$out" '2000 calls from 8 threads in .* calls/s, 0 errors' "load mode prints throughput"
like "$out" 'latency us: p50 [0-9.]+ +p90 [0-9.]+ +p99' "...and latency percentiles"

DEMUXD=$DEMUXD run env DEMUXD="$DEMUXD" "$MUXCALL" --spawn "$TMP/demux.yaml" echo.echo '"spawned"'
is "$out" '["spawned"]' "--spawn starts demuxd --stdio itself"

# the README runs muxcall right after `make run`: make run builds it
run make -s -n run BUILD="$TMP/fresh"
like "$out" "$TMP/fresh/muxcall" "make run builds muxcall too"

# a server that closes under a call without $/drain (killed, crashed): a
# stand-in that takes the request and closes says what that means
mkfifo "$TMP/fake"
/usr/bin/python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1]); s.listen()
print("READY", flush=True)
c, _ = s.accept(); c.recv(100); c.close()' "$TMP/fake.sock" > "$TMP/fake" &
fpid=$!
read -r _ < "$TMP/fake"
run "$MUXCALL" -c "unix:$TMP/fake.sock" echo.echo 1
wait $fpid
like "$out" "closed it without a drain notice: killed or crashed" "a server \
gone under a call: the message says it stopped unannounced"

kill -TERM $pid
wait $pid
is "$?" 0 "demuxd stops cleanly"
done_testing
