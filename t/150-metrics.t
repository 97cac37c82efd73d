#!/bin/sh
# 150-metrics.t - $/health, $/stats, the Prometheus endpoint (curl, and
# promtool where Debian's prometheus package provides it) and the access log.
. "$(dirname "$0")/tap.sh"
MUXCALL=$BUILD/muxcall

start() {	# start PORT: demuxd with metrics on PORT; sets pid; 0 if READY
	cat > "$TMP/demux.yaml" <<X
listen: [ "unix:demux.sock" ]
workers: 4
metrics: "tcp:127.0.0.1:$1"
access_log: access.log
plugins:
  - name: echo
    path: $BUILD/plugins/echo.so
  - name: sleep
    path: $BUILD/plugins/sleep.so
X
	rm -f "$TMP/log"; mkfifo "$TMP/log"
	"$DEMUXD" -c "$TMP/demux.yaml" 2> "$TMP/log" &
	pid=$!
	exec 3< "$TMP/log"
	while IFS= read -r line <&3; do
		case $line in *READY*) return 0 ;; esac
	done
	wait $pid
	return 1
}
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$TMP"' EXIT
port=$((30000 + $$ % 20000))
for try in 1 2 3 4 5; do
	start $port && break
	port=$((port + 101))
done
U="unix:$TMP/demux.sock"

run "$MUXCALL" -c "$U" '$/health'
is "$out" '"serving"' '$/health answers "serving"'
for i in 1 2 3 4 5; do "$MUXCALL" -c "$U" echo.echo $i >/dev/null; done
"$MUXCALL" -c "$U" sleep.sleep -1 2>/dev/null
"$MUXCALL" -c "$U" no.such 2>/dev/null

run "$MUXCALL" -c "$U" '$/stats'
like "$out" '"echo.echo": \{"calls": 5, "errors_total": 0' '$/stats counts the 5 echo calls'
like "$out" '"sleep.sleep": \{"calls": 1, "errors_total": 1, "errors": \{"1": 1\}' '...and the sleep error by code'
like "$out" '"latency_us": \{"p50": [0-9]+, "p90": [0-9]+, "p99": [0-9]+, "max": [0-9]+\}' '...with latency percentiles'
like "$out" '"connections_total": [0-9]+' '...and server figures'
like "$out" '"rss_kb": [1-9][0-9]*' "...demuxd's resident memory among them"
like "$out" '"pool": \{"mode": "fixed", "workers": 4' '...and the pool'

run curl -sS "http://127.0.0.1:$port/metrics"
is "$rc" 0 "curl GET /metrics"
like "$out" '^demux_up 1$' "metrics: demux_up"
like "$out" '^demux_method_calls_total\{method="echo.echo"\} 5$' "metrics: calls per method"
like "$out" '^demux_method_errors_total\{method="sleep.sleep",code="1"\} 1$' "metrics: errors per method and code"
like "$out" '^demux_method_latency_seconds_count\{method="echo.echo"\} 5$' "metrics: latency summary"
like "$out" '^# TYPE demux_method_latency_seconds summary$' "metrics: TYPE lines"
like "$out" '^process_resident_memory_bytes [1-9][0-9]+$' "metrics: demuxd's resident memory"
run curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/nope"
is "$out" 404 "other paths are 404"
if command -v promtool >/dev/null 2>&1; then
	curl -sS "http://127.0.0.1:$port/metrics" > "$TMP/m.txt"
	run promtool check metrics < "$TMP/m.txt"
	is "$rc" 0 "promtool check metrics accepts the output"
	[ "$rc" = 0 ] || echo "$out" | sed 's/^/#   /'
else
	echo "ok $((T_N + 1)) # SKIP promtool not installed (Debian package prometheus)"
	T_N=$((T_N + 1))
fi

like "$(cat "$TMP/access.log")" 'conn=[0-9]+ msgid=[0-9]+ method=echo.echo status=ok us=[0-9]+' \
    "the access log has a line per transaction"
like "$(cat "$TMP/access.log")" 'method=sleep.sleep status=1 ' "...with the error code"
like "$(cat "$TMP/access.log")" 'method=no.such status=-32601 ' "...also for unknown methods"
is "$(grep -c 'method=echo.echo' "$TMP/access.log")" 5 "...one line each"

kill -TERM $pid
wait $pid
is "$?" 0 "demuxd stops cleanly"
done_testing
