#!/bin/sh
# server.sh WORKLOAD [URI] - run demuxd for one benchmark workload: write its
# configuration (echo and sleep plugins; 4 workers, 100 for W3) and exec
# demuxd, so that the pid run.sh measures is demuxd's own. demuxd logs READY
# once it accepts connections.
set -eu
W=${1:?usage: server.sh W1|W1-lat|W2|W3|W4|W4-access|W1-process|W1-lat-process|W1-python|W3-python [URI]}
URI=${2:-unix:/tmp/demux-bench.sock}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
case $W in
W3|W3-python) workers=100 ;;
*) workers=${WORKERS:-4} ;;
esac
# *-process: the echo plugin in a child process (isolation: process), with
# the same 4 worker threads there
iso=""
case $W in
*-process) iso="
    isolation: process
    workers: $workers" ;;
esac
# W4-access: W4 behind a 10-rule access: section whose last rule is the one
# that matches (the bench client is unix:USER), with a deny list checked
# before its allow list: what the access check costs at its worst
access=""
case $W in
*-access) access="access:"
	for t in 1 2 3 4 5 6 7 8 9; do
		access="$access
  - identity: \"cert:team-$t-*\"
    allow: [ \"echo.*\", \"kv.get\" ]"
	done
	access="$access
  - identity: \"unix:*\"
    deny: [ \"kv.del\", \"sleep.*\" ]
    allow: [ \"echo.*\", \"\$/*\" ]" ;;
esac
conf=${TMPDIR:-/tmp}/demux-bench-$W-$$.yaml
# tls: listeners use the certificates run.sh made (CERTS)
tls=""
case $URI in
tls:*) tls="tls:
  cert: $CERTS/server.crt
  key: $CERTS/server.key" ;;
esac
# *-python: echo.echo and sleep.sleep are Python functions (the python
# plugin; bench/recipe/handlers.py), the same calls as the C plugins
plugins="  - name: echo
    path: $BUILD/plugins/echo.so$iso
  - name: sleep
    path: $BUILD/plugins/sleep.so"
case $W in
*-python) plugins="  - name: echo
    path: $BUILD/plugins/python.so
    config: { module: handlers, path: $ROOT/bench/recipe }
  - name: sleep
    path: $BUILD/plugins/python.so
    config: { module: handlers, path: $ROOT/bench/recipe }" ;;
esac
cat > "$conf" <<X
listen: [ "$URI" ]
$tls
$access
workers: $workers
log_level: info
plugins:
$plugins
X
exec "$BUILD/demuxd" -c "$conf"
