#!/bin/sh
# 115-plugin-helpers.t - the plugin of docs/plugins.md's "Reading params
# and config" (demux_params, demux_config_*), built from the page itself:
# its config read with sizes and durations, bad config refused naming the
# key, and every -32602 answer the page shows.
. "$(dirname "$0")/tap.sh"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MUXCALL=$BUILD/muxcall

readme_block greet.c "$ROOT/docs/plugins.md" > "$TMP/greet.c"
[ -s "$TMP/greet.c" ]
ok $? "docs/plugins.md holds greet.c"
run cc ${SAN_FLAGS:-} -shared -fPIC -fvisibility=hidden -Wl,--no-undefined \
    -Wall -Wextra -Werror -I"$ROOT/include" -o "$TMP/greet.so" "$TMP/greet.c" -lmsgpackc
is "$rc" 0 "...and it builds with -Wall -Wextra -Werror -Wl,--no-undefined"
[ "$rc" = 0 ] || echo "$out" | sed 's/^/#   /'

conf() {	# conf NAME CONFIG: a one-plugin configuration
	printf 'listen: "unix:%s.sock"\nplugins:\n  - name: greet\n    path: %s\n    config: %s\n' \
	    "$1" "$TMP/greet.so" "$2" > "$TMP/$1.yaml"
}
conf bad1 '{ max_name: big }'
run "$DEMUXD" --check -c "$TMP/bad1.yaml"
like "$out" "init failed: config: max_name: expected a size \(65536 or 64KiB\), got 'big'" \
    "demux_config_size refuses a value that is not a size, naming the key"
conf bad2 '{ pause: soon }'
run "$DEMUXD" --check -c "$TMP/bad2.yaml"
like "$out" "init failed: config: pause: expected a duration" "...demux_config_ms one that is not a duration"
conf bad3 '{ colour: blue }'
run "$DEMUXD" --check -c "$TMP/bad3.yaml"
like "$out" "init failed: config: unknown key 'colour' \(expected one of: greeting max_name pause\)" \
    "...demux_config_keys an unknown key"
conf bad4 '{ greeting: 7 }'
run "$DEMUXD" --check -c "$TMP/bad4.yaml"
like "$out" "init failed: config: greeting: expected a string, got an integer" \
    "...demux_config_str a value that is not a string"

conf good '{ greeting: hi, max_name: 1KiB, pause: 20ms }'
mkfifo "$TMP/log"
"$DEMUXD" -c "$TMP/good.yaml" 2> "$TMP/log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$TMP"' EXIT
exec 3< "$TMP/log"
while IFS= read -r line <&3; do case $line in *READY*) break ;; esac; done
U="unix:$TMP/good.sock"

run "$MUXCALL" -c "$U" greet.hello '"ann"'
is "$out" '"hi, ann"' "config greeting read; an optional parameter absent"
run "$MUXCALL" -c "$U" greet.hello '"bo"' 2
is "$out" '"hi, bohi, bo"' "...and given"
big=$(printf '%01100d' 0)
run "$MUXCALL" -c "$U" greet.hello "\"$big\""
like "$out" "name: at most 1024 bytes" "max_name: 1KiB read as 1024 bytes"
run "$MUXCALL" -c "$U" greet.hello 42
like "$out" "error -32602: greet.hello: parameter 1 \(name\) must be a string, got an integer" \
    "a parameter of the wrong type: -32602 naming it"
run "$MUXCALL" -c "$U" greet.hello '"a"' 99
like "$out" "error -32602: greet.hello: parameter 2 \(times\) must be from 1 to 10, got 99" \
    "...one out of its range"
run "$MUXCALL" -c "$U" greet.hello
like "$out" "error -32602: greet.hello: expects \[name, times\?\], got 0 parameters" \
    "...a required one missing"
run "$MUXCALL" -c "$U" greet.hello '"a"' 1 2
like "$out" "error -32602: greet.hello: expects \[name, times\?\], got 3 parameters" \
    "...one too many"
kill -TERM $pid
wait $pid
is "$?" 0 "demuxd stops cleanly"

# the client of docs/client.md's helpers, against the example kv plugin
readme_block helpers.c "$ROOT/docs/client.md" > "$TMP/helpers.c"
run cc ${SAN_FLAGS:-} -Wall -Wextra -Werror -I"$ROOT/include" -o "$TMP/helpers" \
    "$TMP/helpers.c" "$BUILD/libmux.a" -lmsgpackc -lssl -lcrypto -pthread
is "$rc" 0 "docs/client.md's helpers.c builds against libmux.a"
[ "$rc" = 0 ] || echo "$out" | sed 's/^/#   /'
printf 'listen: "unix:kv.sock"\nplugins:\n  - name: kv\n    path: %s\n' \
    "$BUILD/plugins/kv.so" > "$TMP/kv.yaml"
mkfifo "$TMP/log2"	# (the first fifo is at its end: its writer left)
"$DEMUXD" -c "$TMP/kv.yaml" 2> "$TMP/log2" &
pid=$!
exec 4< "$TMP/log2"
while IFS= read -r line <&4; do case $line in *READY*) break ;; esac; done
run "$TMP/helpers" "unix:$TMP/kv.sock"
is "$rc" 0 "...and runs"
like "$out" "^pair = \[1, 2\]$" "...mux_callf and mux_unpack of an array"
like "$out" "^server serving, [1-9][0-9]* requests$" "...a map read by key, nested"
like "$out" "^no_such_key: none$" "...and an optional key absent"
kill -TERM $pid
wait $pid
is "$?" 0 "demuxd stops cleanly"
done_testing
