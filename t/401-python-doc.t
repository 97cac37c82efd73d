#!/bin/sh
# 401-python-doc.t - docs/python.md as a user would follow it: its module
# and its YAML, taken from the page, served by demuxd, and every muxcall
# line of the page run, printing what the page shows.
. "$(dirname "$0")/tap.sh"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DOC=$ROOT/docs/python.md
MUXCALL=$BUILD/muxcall

block() {	# block LANG FIRSTLINE: the ```LANG block that starts so
	awk -v lang="$1" -v want="$2" '$0 == "```" lang {on=1; first=1; next}
	    /^```$/ {on=0; keep=0} on && first {keep = ($0 == want); first=0}
	    on && keep' "$DOC"
}
mkdir -p "$TMP/handlers"
block python "# handlers/calc.py" > "$TMP/handlers/calc.py"
block yaml "# demux.yaml" | sed "s|\.\./build/plugins/python.so|$BUILD/plugins/python.so|" > "$TMP/demux.yaml"
[ -s "$TMP/handlers/calc.py" ] && [ -s "$TMP/demux.yaml" ]
ok $? "docs/python.md holds the module and its YAML"

mkfifo "$TMP/log"
(cd "$TMP" && exec "$DEMUXD" -c demux.yaml) 2> "$TMP/log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$TMP"' EXIT
exec 3< "$TMP/log"
while IFS= read -r line <&3; do
	case $line in *READY*) break ;; *error*) echo "# $line" ;; esac
done
cat <&3 > /dev/null &

# each "$ muxcall ..." line of the console block, and the line after it
awk '/^```console$/ {on=1; next} /^```$/ {on=0} on' "$DOC" > "$TMP/console"
n=0
while IFS= read -r cmd; do
	IFS= read -r want
	args=${cmd#\$ muxcall -c unix:demux.sock }
	got=$(cd "$TMP" && eval "\"$MUXCALL\" -c unix:demux.sock $args" 2>&1 | head -1)
	is "$got" "$want" "the page's \`muxcall $args\` prints what it shows"
	n=$((n + 1))
done < "$TMP/console"
[ $n -ge 4 ]
ok $? "...all $n of them"
kill $pid; wait $pid
is "$?" 0 "demuxd stops cleanly"
trap 'rm -rf "$TMP"' EXIT
done_testing
