#!/bin/sh
# 100-config.t - bad configurations stop demuxd before it listens, with exit
# 2 and FILE:LINE:COL: what; good ones pass --check.
. "$(dirname "$0")/tap.sh"

conf() {	# conf NAME: write stdin to $TMP/NAME.yaml, print its path
	cat > "$TMP/$1.yaml"
	echo "$TMP/$1.yaml"
}

f=$(conf good <<X
listen: [ "unix:demux.sock", "tcp:127.0.0.1:7411" ]
workers: 8
max_frame: 1MiB
max_inflight: 64
max_connections: 100
log_level: warn
plugins:
  - name: echo
    path: $BUILD/plugins/echo.so
  - name: kv
    path: $BUILD/plugins/kv.so
    config: { capacity: 10 }
X
)
run "$DEMUXD" --check -c "$f"
is "$rc" 0 "a valid configuration passes --check"
like "$out" "ok \(2 plugins, 4 methods\)" "--check loads every plugin: $out"

f=$(conf ondemand <<X
workers: on-demand
max_threads: 16
plugins:
  - path: $BUILD/plugins/sleep.so
X
)
run "$DEMUXD" --check -c "$f"
is "$rc" 0 "workers: on-demand, and a plugin named by its descriptor"

f=$(conf syntax <<'X'
listen: [ "unix:demux.sock"
workers: 4
X
)
run "$DEMUXD" -c "$f"
is "$rc" 2 "a YAML syntax error exits 2"
like "$out" "^demuxd: $f:2:1: did not find expected .,. or .\]. \(while parsing a flow sequence at line 1\)" \
    "...naming FILE:LINE:COL of the problem and its context"

f=$(conf unknown <<'X'
listen: "unix:demux.sock"
wrokers: 4
X
)
run "$DEMUXD" -c "$f"
is "$rc" 2 "an unknown key exits 2"
like "$out" "$f:2:1: unknown key 'wrokers'" "...naming the key and where it is"

f=$(conf type <<'X'
listen: "unix:demux.sock"
workers: lots
X
)
run "$DEMUXD" -c "$f"
is "$rc" 2 "a wrong type exits 2"
like "$out" "$f:2:10: workers: expected a pool size" "...at the value's position"

f=$(conf reuse <<'X'
listen: "tcp:127.0.0.1:7411"
reuse_port: yes please
X
)
run "$DEMUXD" --check -c "$f"
like "$out" "$f:2:13: reuse_port: expected true or false" "reuse_port takes a boolean"

f=$(conf size <<'X'
max_frame: 12 parsecs
X
)
run "$DEMUXD" --check -c "$f"
like "$out" "$f:1:12: max_frame: expected a size in bytes" "a bad size names the key"

f=$(conf dupkey <<'X'
workers: 2
workers: 3
X
)
run "$DEMUXD" --check -c "$f"
like "$out" "$f:2:1: duplicate key 'workers' \(first at line 1\)" "a duplicate key is an error"

f=$(conf dupplugin <<X
plugins:
  - name: echo
    path: $BUILD/plugins/echo.so
  - name: echo
    path: $BUILD/plugins/kv.so
X
)
run "$DEMUXD" --check -c "$f"
is "$rc" 2 "a duplicate plugin exits 2"
like "$out" "$f:4:5: duplicate plugin 'echo' \(first at line 2\)" "...naming both places"

f=$(conf dupdefault <<X
plugins:
  - path: $BUILD/plugins/echo.so
  - path: $BUILD/plugins/echo.so
X
)
run "$DEMUXD" --check -c "$f"
is "$rc" 2 "two plugins defaulting to the same name exit 2"
like "$out" "$f:3:5: duplicate plugin 'echo'" "...with the position of the second"

f=$(conf missing <<'X'
plugins:
  - name: ghost
    path: plugins/ghost.so
X
)
run "$DEMUXD" -c "$f"
is "$rc" 2 "a missing plugin file exits 2"
like "$out" "$f:3:11: plugin ghost: $TMP/plugins/ghost.so: No such file or directory" \
    "...naming the path resolved against the file's folder"

f=$(conf nopath <<'X'
plugins:
  - name: ghost
X
)
run "$DEMUXD" -c "$f"
like "$out" "$f:2:5: plugins: entry ghost has no path" "a plugin without path"

f=$(conf pluginkey <<X
plugins:
  - name: echo
    path: $BUILD/plugins/echo.so
    workres: 3
X
)
run "$DEMUXD" -c "$f"
like "$out" "$f:4:5: plugins: unknown key 'workres'" "an unknown plugin key"

f=$(conf badname <<X
plugins:
  - name: "a.b"
    path: $BUILD/plugins/echo.so
X
)
run "$DEMUXD" -c "$f"
like "$out" "$f:2:11: plugins: name must be" "a plugin name with a dot"

f=$(conf badlisten <<'X'
listen: [ "http://0.0.0.0:80" ]
X
)
run "$DEMUXD" -c "$f"
like "$out" "$f:1:11: listen: 'http://0.0.0.0:80': address must start with unix:, tcp: or tls:" \
    "a listen address of an unknown kind"

f=$(conf badfmt <<'X'
listen: [ { address: "unix:demux.sock", error_format: json } ]
X
)
run "$DEMUXD" -c "$f"
like "$out" "$f:1:55: listen: error_format: expected array or string, got 'json'" \
    "a listen entry's error_format other than array or string"
f=$(conf badlistenkey <<'X'
listen: [ { address: "unix:demux.sock", format: string } ]
X
)
run "$DEMUXD" -c "$f"
like "$out" "$f:1:41: listen: unknown key 'format' \(expected address, error_format\)" \
    "...an unknown key in a listen entry"
f=$(conf noaddr <<'X'
listen: [ { error_format: string } ]
X
)
run "$DEMUXD" -c "$f"
like "$out" "$f:1:11: listen: an entry written as a map needs an address" \
    "...and a listen entry without an address"

f=$(conf notmap <<'X'
- workers
X
)
run "$DEMUXD" -c "$f"
like "$out" "$f:1:1: expected a mapping at the top level, got a list" "a top level that is not a mapping"

: > "$TMP/empty.yaml"
run "$DEMUXD" -c "$TMP/empty.yaml"
is "$rc" 2 "an empty file exits 2"
like "$out" "empty configuration" "...saying it is empty"

run "$DEMUXD" -c "$TMP/nonexistent.yaml"
is "$rc" 2 "a missing configuration file exits 2"
like "$out" "$TMP/nonexistent.yaml: No such file or directory" "...naming it"

f=$(conf nodir <<'X'
listen: "unix:no/such/dir/demux.sock"
X
)
run "$DEMUXD" -c "$f"
is "$rc" 1 "a listen address that cannot be bound exits 1 (runtime, not config)"
like "$out" "$f:1:9: listen: unix:$TMP/no/such/dir/demux.sock: bind: No such file" \
    "...naming the configured address and why"

f=$(conf queueonly <<X
plugins:
  - name: echo
    path: $BUILD/plugins/echo.so
    queue: 10
X
)
run "$DEMUXD" --check -c "$f"
like "$out" "$f:2:5: plugins: queue: bounds a plugin's own pool: give it workers: too" \
    "a plugin queue bound without its own pool is refused"

f=$(conf ownpool <<X
queue: 1000
plugins:
  - name: sleep
    path: $BUILD/plugins/sleep.so
    workers: 3
    queue: 10
X
)
run "$DEMUXD" --check -c "$f"
is "$rc" 0 "a plugin with its own workers and queue, and a shared queue bound"

f=$(conf badmethod <<X
plugins:
  - name: sleep
    path: $BUILD/plugins/sleep.so
    methods:
      nap: { timeout_ms: 10 }
X
)
run "$DEMUXD" --check -c "$f"
like "$out" "$f:5:7: plugin 'sleep' has no method 'nap'" "a timeout for a method the plugin does not serve"

# a configuration named without a folder: its plugin paths are relative to
# the current folder (dlopen would otherwise search the library path)
mkdir "$TMP/here" && cp "$BUILD/plugins/echo.so" "$TMP/here/echo.so"
printf 'plugins:\n  - name: echo\n    path: echo.so\n' > "$TMP/here/bare.yaml"
out=$(cd "$TMP/here" && "$DEMUXD" --check -c bare.yaml 2>&1); rc=$?
is "$rc" 0 "-c FILE without a folder: plugin paths resolve next to it ($out)"

run "$DEMUXD" --bogus
is "$rc" 2 "an unknown flag exits 2"
like "$out" "usage: demuxd" "...with usage"

done_testing
