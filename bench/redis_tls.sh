#!/usr/bin/env bash
# redis_tls.sh - Redis over TLS for the tls cases, measured as the peers'
# harness measures Redis over TCP (redis-benchmark, the same warm-up that
# calibrates -n for a DUR-second run, the same RESULT line).
#
#   redis_tls.sh server
#       runs redis-server with a tls-port (47107; the certificates run.sh
#       made in CERTS; no client certificates asked for, as demux's bench
#       listener) until SIGTERM, logging READY once Redis accepts
#   redis_tls.sh client CONNS PIPELINE SIZE WARMTESTS TESTS -P PID -L LABEL
#       one redis-benchmark --tls run against it
set -euo pipefail
PORT=47107
DIR=${PEERS_OUT:-/tmp/demux-peers}
PIDF=$DIR/redis-tls.pid
case ${1:-} in
server)
	log=$DIR/redis-tls.log
	: >"$log"
	redis-server --port 0 --tls-port $PORT --bind 127.0.0.1 \
	    --tls-cert-file "$CERTS/server.crt" --tls-key-file "$CERTS/server.key" \
	    --tls-ca-cert-file "$CERTS/ca.crt" --tls-auth-clients no \
	    --save '' --appendonly no --daemonize no --dir "$DIR" \
	    --logfile "$log" --io-threads 1 >/dev/null 2>&1 &
	rpid=$!
	echo $rpid >"$PIDF"
	trap 'kill $rpid 2>/dev/null; wait $rpid 2>/dev/null; rm -f "$PIDF"; exit 0' TERM INT
	for _ in $(seq 1 200); do
		grep -q "Ready to accept" "$log" && break
		kill -0 $rpid 2>/dev/null || { cat "$log"; exit 1; }
		sleep 0.05	# redis-server's log is its only readiness signal
	done
	echo READY
	wait $rpid
	;;
client)
	shift
	c=$1 p=$2 d=$3 wt=$4 t=$5 label=redis,tls
	shift 5
	while [ $# -gt 0 ]; do
		case $1 in
		-L) label=$2; shift 2 ;;
		-P) shift 2 ;;		# the wrapper's pid: Redis's is in PIDF
		*) shift ;;
		esac
	done
	spid=$(cat "$PIDF")
	conn="--tls --cacert $CERTS/ca.crt -h 127.0.0.1 -p $PORT"
	cpu_us() { awk -v t="$(getconf CLK_TCK)" '{printf "%.0f", ($14+$15)*1e6/t}' "/proc/$1/stat"; }
	guess=20000
	[ "$p" -gt 1 ] && guess=300000
	wn=$(awk -v g=$guess -v w="${WARM:-1}" 'BEGIN{printf "%d", g*w}')
	# shellcheck disable=SC2086
	rps=$(redis-benchmark $conn -c "$c" -P "$p" -d "$d" -n "$wn" -t "$wt" --csv 2>/dev/null |
	    tail -1 | tr -d '"' | cut -d, -f2)
	n=$(awk -v r="${rps:-$guess}" -v d="${DUR:-5}" 'BEGIN{printf "%d", r*d}')
	s0=$(cpu_us "$spid")
	TIMEFORMAT='%3U %3S'
	out=$(mktemp)
	# shellcheck disable=SC2086
	{ time redis-benchmark $conn -c "$c" -P "$p" -d "$d" -n "$n" -t "$t" --csv \
	    >"$out" 2>/dev/null; } 2>"$out.time"
	s1=$(cpu_us "$spid")
	tail -1 "$out" | tr -d '"' | awk -F, -v n="$n" -v c="$c" -v d="$d" \
	    -v key="$label" -v s0="$s0" -v s1="$s1" -v ct="$(cat "$out.time")" '{
		split(ct, a, " "); rps=$2; secs=n/rps;
		printf "RESULT peer=redis label=%s T=%d size=%d ncalls=0 tx=%d errors=0 secs=%.3f txps=%.0f MBps=%.1f p50_us=%.1f p99_us=%.1f max_us=%.1f cli_cpu_us_tx=%.2f srv_cpu_us_tx=%.2f wall_ms=%.1f\n",
		  key, c, d, n, secs, rps, rps*d/1e6, $5*1000, $7*1000, $8*1000,
		  (a[1]+a[2])*1e6/n, (s1-s0)/n, secs*1000 }'
	rm -f "$out" "$out.time"
	;;
*)
	echo "usage: redis_tls.sh server | client CONNS PIPELINE SIZE WARMTESTS TESTS [-P pid] [-L label]" >&2
	exit 2
	;;
esac
