#!/usr/bin/env bash
# run.sh - `make bench`: demux and every peer in ONE run of the peers' harness
# (../shared/peers/run.sh with EXTRA_CASES), then the report: demux's ratio to
# the best peer and to the raw ceiling per workload, the memory figures, and
# the plots (throughput against client threads, p99 against load).
#
# Knobs (environment): RUNS DUR WARM (as run.sh; defaults 3, 5, 1),
# QUICK=1 (RUNS=1 DUR=2), CURVE=0 (skip the 1..256-thread curves),
# ONLY=regex (as run.sh), PEERS=path to the peers folder,
# PEERS_OUT (default /tmp/demux-peers; run.sh writes only there).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
export PEERS_OUT=${PEERS_OUT:-/tmp/demux-peers}
if [ "${QUICK:-0}" = 1 ]; then
	export RUNS=${RUNS:-1} DUR=${DUR:-2} WARM=${WARM:-1}
fi
export RUNS=${RUNS:-3} DUR=${DUR:-5} WARM=${WARM:-1}
B=$ROOT/build
[ -x "$PEERS/run.sh" ] || { echo "bench: no peers harness at $PEERS"; exit 1; }

# plotting needs gnuplot (Debian); install it like the peers install theirs
if ! command -v gnuplot >/dev/null 2>&1; then
	if [ "$(id -u)" = 0 ]; then
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends gnuplot-nox >/dev/null
	else
		echo "bench: gnuplot missing (apt-get install gnuplot-nox); plots skipped"
	fi
fi

mkdir -p "$PEERS_OUT"
CASES=$PEERS_OUT/demux.cases
SOCK=unix:/tmp/demux-bench.sock
TCP=tcp:127.0.0.1:47111
TLS=tls:127.0.0.1:47112
# a CA and a server certificate for the tls cases (EC P-256, as a
# deployment would use), made once per run
export CERTS=$PEERS_OUT/certs MUX_TLS_CA=$PEERS_OUT/certs/ca.crt
mkdir -p "$CERTS"
if [ ! -s "$CERTS/server.crt" ]; then
	( cd "$CERTS" &&
	  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
	    -nodes -keyout ca.key -out ca.crt -days 30 -subj /CN=bench-ca &&
	  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
	    -keyout server.key -out server.csr -subj /CN=127.0.0.1 &&
	  echo "subjectAltName=IP:127.0.0.1" > san.ext &&
	  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key \
	    -CAcreateserial -out server.crt -days 30 -extfile san.ext
	) >/dev/null 2>&1
fi
SRV="$ROOT/bench/server.sh"
LOAD="$B/bench/mux_load"
PIPE="$B/bench/mux_pipe"
HS="$B/bench/tls_handshake"
RTLS="$ROOT/bench/redis_tls.sh"
RCP="$ROOT/bench/recipe"		# the recipe itself, as a peer
RSOCK=unix:/tmp/demux-bench-recipe.sock
# Sourced by run.sh: $W1 $W1L $W2 $W3 $B(peers) $IPC_ZMQ ... are its own.
cat > "$CASES" <<X
HSARGS="-c $MUX_TLS_CA -T 2 -d \$DUR -w \$WARM"
add "demux,unix,W1"      4 0 1 "$SRV W1 $SOCK"     "$LOAD -u $SOCK \$W1"
add "demux,tcp,W1"       4 0 1 "$SRV W1 $TCP"      "$LOAD -u $TCP \$W1"
add "demux,tls,W1"       4 0 1 "$SRV W1 $TLS"      "$LOAD -u $TLS \$W1"
add "demux,tcp,W2"       4 0 1 "$SRV W2 $TCP"      "$LOAD -u $TCP \$W2"
add "demux,tls,W2"       4 0 1 "$SRV W2 $TLS"      "$LOAD -u $TLS \$W2"
add "demux,tls,handshakes" 4 0 1 "$SRV W1 $TLS"    "$HS -u $TLS \$HSARGS"
add "redis,tls,ping-c32"   1 0 1 "$RTLS server"    "$RTLS client 32 1 0 ping_mbulk ping_mbulk"
add "redis,tls,set-c32-d64" 1 0 1 "$RTLS server"   "$RTLS client 32 1 64 set set"
add "redis,tls,handshakes" 1 0 1 "$RTLS server"    "$HS -u tls:127.0.0.1:47107 -F $PEERS_OUT/redis-tls.pid \$HSARGS"
add "demux,unix,W1-async" 4 0 1 "$SRV W1 $SOCK"    "$LOAD -A -u $SOCK \$W1"
add "demux,unix,W1-lat"  4 0 1 "$SRV W1-lat $SOCK" "$LOAD -u $SOCK \$W1L"
add "demux,unix,W1-process" 4 0 1 "$SRV W1-process $SOCK" "$LOAD -u $SOCK \$W1"
add "demux,unix,W1-lat-process" 4 0 1 "$SRV W1-lat-process $SOCK" "$LOAD -u $SOCK \$W1L"
add "demux,unix,W2"      4 0 1 "$SRV W2 $SOCK"     "$LOAD -u $SOCK \$W2"
add "demux,unix,W2-inplace" 4 0 1 "$SRV W2 $SOCK"  "$LOAD -Z -u $SOCK \$W2"
add "demux,unix,W3"    100 10000 2 "$SRV W3 $SOCK" "$LOAD -u $SOCK -S 10000 \$W3"
add "demux,unix,W4-k1024" 4 0 1 "$SRV W4 $SOCK"    "$PIPE -u $SOCK -k 1024 -b 64 -s 64 -d \$DUR -w \$WARM"
add "demux,unix,W4-k1024-access" 4 0 1 "$SRV W4-access $SOCK" "$PIPE -u $SOCK -k 1024 -b 64 -s 64 -d \$DUR -w \$WARM"
add "demux,unix,W1-python" 4 0 1 "$SRV W1-python $SOCK" "$LOAD -u $SOCK \$W1"
add "demux,unix,W3-python" 100 10000 2 "$SRV W3-python $SOCK" "$LOAD -u $SOCK -S 10000 \$W3"
add "recipe,unix,W1"     4 0 1 "/usr/bin/python3 $RCP/server.py -u $RSOCK -W 4" "/usr/bin/python3 $RCP/client.py -u $RSOCK \$W1"
add "recipe,unix,W3"   100 10000 2 "/usr/bin/python3 $RCP/server.py -u $RSOCK -W 100 -S 10000" "/usr/bin/python3 $RCP/client.py -u $RSOCK \$W3"
X
if [ "${CURVE:-1}" = 1 ]; then
	cat >> "$CASES" <<'X'
for T in 1 2 4 8 16 32 64 128 256; do
    add "demux,unix,W1-T$T" 4 0 1 "DEMUX_SRV W1 DEMUX_SOCK" "DEMUX_LOAD -u DEMUX_SOCK -T $T -s 64 -d $DUR -w $WARM"
done
for T in 4 16 64 256; do
    C="-T $T -s 64 -d $DUR -w $WARM"
    add "zmq,ipc,C-T$T"    4 0 1 "$B/zmq_server -u $IPC_ZMQ -W 4" "$B/zmq_client -u $IPC_ZMQ $C"
    add "nng,ipc,C-T$T"    4 0 1 "$B/nng_server -u $IPC_NNG -W 4" "$B/nng_client -u $IPC_NNG $C"
    add "grpc,unix,C-T$T"  4 0 1 "$B/grpc_server -u $UNIX_GRPC -W 4" "$B/grpc_client -u $UNIX_GRPC $C"
done
X
	sed -i "s|DEMUX_SRV|$SRV|; s|DEMUX_SOCK|$SOCK|g; s|DEMUX_LOAD|$LOAD|" "$CASES"
fi

echo "== demux cases: $CASES"
before=$(ls -1d "$PEERS_OUT"/results/* 2>/dev/null | tail -1 || true)
EXTRA_CASES=$CASES "$PEERS/run.sh"
out=$(ls -1d "$PEERS_OUT"/results/* | tail -1)
[ "$out" != "$before" ] || { echo "bench: run.sh produced no results"; exit 1; }

echo "== memory"
"$B/bench/mux_mem" "$B/demuxd" "$ROOT/bench/server.sh" | tee "$out/memory.txt"

echo "== the cost of a crash (isolation: process)"
"$B/bench/mux_crash" "$B/demuxd" "$B/t/plugins/crashy.so" | tee "$out/crash.txt"

echo "== W5 fan-out and W6 deferred replies"
BUILD=$B "$ROOT/bench/w5w6.sh" "$out"

echo "== report"
if [ "${ONLY:-.}" != . ]; then
	# a partial run must not replace the full run's results and plots
	/usr/bin/python3 "$ROOT/bench/report.py" "$out" "$out" | tee "$out/report.md"
	echo "== partial run (ONLY=$ONLY): results and plots in $out only"
	exit 0
fi
/usr/bin/python3 "$ROOT/bench/report.py" "$out" "$ROOT/docs/img" | tee "$out/report.md"
mkdir -p "$ROOT/bench/results"
cp "$out/raw.txt" "$ROOT/bench/results/raw.txt"
cp "$out/report.md" "$ROOT/bench/results/report.md"
cp "$out/machine.txt" "$ROOT/bench/results/machine.txt"
cp "$out/memory.txt" "$ROOT/bench/results/memory.txt"
cp "$out/w5w6.txt" "$ROOT/bench/results/w5w6.txt"
echo "== results in $out and bench/results/; plots in docs/img/"
