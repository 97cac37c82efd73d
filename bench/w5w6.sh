#!/usr/bin/env bash
# w5w6.sh - the deferred-reply and notification workloads, run by run.sh
# after the harness (or alone: bench/w5w6.sh [OUTDIR]):
#
#   W5 fan-out: 1 publisher, 100 subscriber connections, 64 B messages,
#      32 publishes in flight: delivered messages/s, demuxd's pubsub plugin
#      against Redis PUBLISH/SUBSCRIBE (redis-server from Debian), both over
#      a unix socket, driven by the same raw-socket client (fanout.c), in
#      turns, RUNS times each; medians and their ratio.
#   W6 deferred: 10,000 open timer.after calls on one connection: demuxd's
#      extra RSS per open call beyond its request (a fresh demuxd: the cold
#      figure; then again on the same one: job records reused), and
#      completions per second when they all fire at once.
#
# Prints RESULT lines and a summary; writes OUTDIR/w5w6.txt.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${BUILD:-$ROOT/build}
OUT=${1:-${PEERS_OUT:-/tmp/demux-peers}}
RUNS=${RUNS:-3} DUR=${DUR:-5} WARM=${WARM:-1}
D=$(mktemp -d /tmp/demux-w5w6.XXXXXX)
pids=""
trap 'for p in $pids; do kill $p 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$D"' EXIT
mkdir -p "$OUT"
command -v redis-server >/dev/null || {
	[ "$(id -u)" = 0 ] && apt-get install -y -qq redis-server >/dev/null; }

start_demuxd() {	# start_demuxd CONF: sets $dpid once READY
	mkfifo "$D/log.$$.$1"
	"$B/demuxd" -c "$D/$1.yaml" 2> "$D/log.$$.$1" > /dev/null &
	dpid=$!
	pids="$pids $dpid"
	while IFS= read -r line; do
		case $line in *READY*) break ;; esac
	done < "$D/log.$$.$1"
	cat "$D/log.$$.$1" > /dev/null &
}

cat > "$D/ps.yaml" <<X
listen: [ "unix:$D/ps.sock" ]
workers: 4
plugins:
  - name: pubsub
    path: $B/plugins/pubsub.so
X
cat > "$D/tm.yaml" <<X
listen: [ "unix:$D/tm.sock" ]
workers: 4
max_inflight: 20000
plugins:
  - name: timer
    path: $B/plugins/timer.so
X
start_demuxd ps
redis-server --port 0 --unixsocket "$D/redis.sock" --save '' \
    --appendonly no --io-threads 1 > "$D/redis.log" 2>&1 < /dev/null &
pids="$pids $!"
for _ in $(seq 1 200); do [ -S "$D/redis.sock" ] && break; sleep 0.05; done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
: > "$D/w5.demux"; : > "$D/w5.redis"
start_demuxd tm
tpid=$dpid
R=$OUT/w5w6.txt
: > "$R"
for r in $(seq 1 "$RUNS"); do
	"$B/bench/fanout" -m demux -u "unix:$D/ps.sock" -d "$DUR" -w "$WARM" |
	    tee -a "$D/w5.raw" | sed -n 's/.*msgs_per_s=\([0-9]*\).*/\1/p' >> "$D/w5.demux"
	"$B/bench/fanout" -m redis -u "unix:$D/redis.sock" -d "$DUR" -w "$WARM" |
	    tee -a "$D/w5.raw" | sed -n 's/.*msgs_per_s=\([0-9]*\).*/\1/p' >> "$D/w5.redis"
done
cat "$D/w5.raw" >> "$R"
dm=$(median < "$D/w5.demux"); rm=$(median < "$D/w5.redis")
echo "W5 fan-out (1 publisher, 100 subscribers, 64 B): demux $dm msgs/s, Redis $rm msgs/s: $(awk -v a="$dm" -v b="$rm" 'BEGIN {printf "%.2fx", a / b}') Redis (goal >= 1x)" >> "$R"
"$B/bench/mux_deferred" -u "unix:$D/tm.sock" -p "$tpid" -n 10000 2>/dev/null |
    sed 's/^RESULT /RESULT w6=cold /' >> "$R"
for r in $(seq 1 "$RUNS"); do
	"$B/bench/mux_deferred" -u "unix:$D/tm.sock" -p "$tpid" -n 10000 2>/dev/null |
	    sed 's/^RESULT /RESULT w6=warm /' >> "$R"
done
cat "$R"
