#!/usr/bin/env bash
# The memory watch of generate/chat: the plan's alarm threshold
# (VLM_MEM_THRESHOLD, capped by the budget) handed to the monitor's sampler.
# Above it the sampler cleans up, then warns once per crossing; the answer
# is the same as without the alarm. Under the default 12 GiB the demo model
# never crosses it: no warning, no alarm.
set -euo pipefail
bin=${VLM_BIN:?}
src=${VLM_SOURCE_DIR:?}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
args=(generate -m "$src/models/demo" --image "$src/suites/smoke/images/smoke-003.png"
      -p "How many objects can you see?" --max-tokens 8 --threads 2 --json)

"$bin" "${args[@]}" >"$tmp/quiet.json" 2>"$tmp/quiet.err" || fail "default run: $(cat "$tmp/quiet.err")"
[ "$(field "$tmp/quiet.json" "d['plan']['mem_alarms']")" = 0 ] || fail "alarm under 12 GiB"
[ "$(field "$tmp/quiet.json" "d['plan']['alarm_threshold'] > 0")" = True ] || fail "no threshold"
! grep -q "over the threshold" "$tmp/quiet.err" || fail "warning under 12 GiB: $(cat "$tmp/quiet.err")"

VLM_MEM_THRESHOLD=1M "$bin" "${args[@]}" >"$tmp/low.json" 2>"$tmp/low.err" ||
    fail "1 MiB threshold: exit $?: $(cat "$tmp/low.err")"
[ "$(field "$tmp/low.json" "d['plan']['alarm_threshold']")" = 1048576 ] || fail "threshold not the plan's"
[ "$(field "$tmp/low.json" "d['plan']['mem_alarms']")" = 1 ] || fail "alarms: $(field "$tmp/low.json" "d['plan']['mem_alarms']")"
n=$(grep -c "memory: RSS .* is over the threshold of 1.0 MiB; cleanup gave back" "$tmp/low.err" || true)
[ "$n" = 1 ] || fail "$n warning lines: $(cat "$tmp/low.err")"
[ "$(field "$tmp/low.json" "d['ids']")" = "$(field "$tmp/quiet.json" "d['ids']")" ] || fail "ids differ"
echo "ok: one cleanup + warning over a 1 MiB threshold, none under 12 GiB, same ids"
