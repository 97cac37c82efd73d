#!/bin/sh
# 155-alert-rules.t - conf/prometheus/demux-rules.yml: promtool accepts it,
# its unit tests (t/prometheus/demux-rules-test.yml) pass, every alert has
# a case there, and every metric the rules read is one demuxd exports.
. "$(dirname "$0")/tap.sh"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RULES=$ROOT/conf/prometheus/demux-rules.yml
CASES=$ROOT/t/prometheus/demux-rules-test.yml

alerts=$(sed -n 's/^ *- alert: *//p' "$RULES" | sort)
tested=$(sed -n 's/^ *alertname: *//p' "$CASES" | sort -u)
[ -n "$alerts" ] && [ "$alerts" = "$tested" ]
ok $? "every alert has a promtool test case ($(echo $alerts | wc -w) alerts)"
[ "$alerts" = "$tested" ] || echo "#   alerts: $alerts; tested: $tested"

# the metrics the rules use, against what demuxd's /metrics names
used=$(grep -o 'demux_[a-z_]*' "$RULES" | grep -v '^demux_$' | sort -u)
missing=""
for m in $used; do
	grep -q "\"$m\|$m[ {]" "$ROOT/src/server/metrics.c" || missing="$missing $m"
done
[ -z "$missing" ]
ok $? "every metric the rules read is one demuxd exports${missing:+ (not:$missing)}"

if command -v promtool >/dev/null 2>&1; then
	run promtool check rules "$RULES"
	is "$rc" 0 "promtool check rules accepts the rules"
	[ "$rc" = 0 ] || echo "$out" | sed 's/^/#   /'
	cd "$(dirname "$CASES")" || exit 1
	run promtool test rules "$(basename "$CASES")"
	is "$rc" 0 "promtool test rules: each alert fires on its case and only there"
	[ "$rc" = 0 ] || echo "$out" | sed 's/^/#   /'
else
	echo "ok $((T_N + 1)) # SKIP promtool not installed (Debian package prometheus)"
	T_N=$((T_N + 1))
fi
done_testing
