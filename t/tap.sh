# tap.sh - TAP helpers for shell tests (sourced; not a test itself).
#
#   . "$(dirname "$0")/tap.sh"
#   run demuxd --check -c x.yaml      # sets $rc, $out (stdout+stderr)
#   is "$rc" 2 "exit code"
#   like "$out" 'x.yaml:3:5: ' "names the position"
#   done_testing

BUILD=${BUILD:-build}
case $BUILD in /*) ;; *) BUILD=$(pwd)/$BUILD ;; esac
DEMUXD=$BUILD/demuxd
T_N=0
T_FAILED=0
TMP=$(mktemp -d /tmp/demux-t.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

ok() {	# ok COND-STATUS DESCRIPTION
	T_N=$((T_N + 1))
	if [ "$1" -eq 0 ]; then
		echo "ok $T_N - $2"
	else
		echo "not ok $T_N - $2"
		T_FAILED=$((T_FAILED + 1))
	fi
}

is() {	# is GOT WANTED DESCRIPTION
	[ "$1" = "$2" ]
	ok $? "$3"
	[ "$1" = "$2" ] || echo "#   got '$1', wanted '$2'"
}

like() {	# like TEXT PATTERN DESCRIPTION (grep -E pattern)
	printf '%s\n' "$1" | grep -Eq -- "$2"
	st=$?
	ok $st "$3"
	[ $st -eq 0 ] || { echo "#   no match for /$2/ in:"; printf '%s\n' "$1" | sed 's/^/#     /'; }
}

run() {	# run CMD...: $out = stdout+stderr, $rc = exit status
	out=$("$@" 2>&1)
	rc=$?
}

done_testing() {
	echo "1..$T_N"
	[ $T_N -gt 0 ] || { echo "not ok - no checks"; exit 1; }
	[ $T_FAILED -eq 0 ]
	exit $?
}

# readme_block FILE [DOC]: the ```c block of DOC (default README.md) whose
# first line is /* FILE ...
readme_block() {
	awk -v want="/* $1" '/^```c$/ {on=1; first=1; next} /^```$/ {on=0; keep=0}
	    on && first {keep = index($0, want) == 1; first=0} on && keep' "${2:-README.md}"
}
