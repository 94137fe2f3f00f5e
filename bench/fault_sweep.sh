#!/usr/bin/env bash
# The fault-injection sweep of issue 7: every N from FROM to TO (step STEP)
# over load + one image + 16 new tokens on tests/data/tiny/f32, each run
# with allocation N failing (tests/unit/test_engine_faults.c,
# test_alloc_sweep). Every run must complete (possibly on a lower rung, with
# the ids of an unfaulted run at that rung) or end in VLM_ERR_NOMEM, leaving
# nothing allocated; under the ASan build leaks and memory errors abort.
#
#   bench/fault_sweep.sh [BUILD_DIR] [SLICES]      (default build-asan, 2)
#   FROM=1 TO=5000 STEP=1 bench/fault_sweep.sh build 2
#
# The range is split into SLICES processes run side by side; at the end one
# summary adds their counts up: "sweep N=A..B: R runs: C completed (L on a
# lower rung), M out of memory; rungs seen: ...; S s". The full range (350
# allocations since the load's JSON trees are parsed into arenas) takes about
# 2 minutes on 2 slices, optimised or under ASan.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build-asan}
slices=${2:-2}
bin="$here/$build/test_engine_faults"
[ -x "$bin" ] || { echo "no $bin (make build / make asan)" >&2; exit 2; }
from=${FROM:-1}
step=${STEP:-1}
if [ -z "${TO:-}" ]; then
    # the workload's allocation count: an unfaulted slice of one point
    TO=$(VLM_SWEEP_FROM=1 VLM_SWEEP_TO=0 "$bin" 2>&1 | sed -n 's/.*: \([0-9]*\) allocations.*/\1/p')
fi
to=$TO
echo "sweep N=$from..$to step $step in $slices slices ($build)"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
span=$(( (to - from + slices) / slices ))
pids=()
logs=()
for ((k = 0; k < slices; k++)); do
    a=$(( from + k * span ))
    b=$(( a + span - 1 < to ? a + span - 1 : to ))
    [ "$a" -le "$b" ] || continue
    log=$(mktemp)
    logs+=("$log")
    VLM_SWEEP_FROM=$a VLM_SWEEP_TO=$b VLM_SWEEP_STEP=$step "$bin" >"$log" 2>&1 &
    pids+=($!)
done
rc=0
start=$SECONDS
runs=0 ok=0 lower=0 nomem=0 rungs=""
for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then rc=1; echo "slice $i FAILED:"; tail -20 "${logs[$i]}"; fi
    line=$(grep -h "alloc sweep" "${logs[$i]}" || true)
    if [ -n "$line" ]; then
        read -r r c l m <<<"$(sed -n 's/.* \([0-9]*\) runs: \([0-9]*\) completed (\([0-9]*\) on a lower rung), \([0-9]*\) out of memory.*/\1 \2 \3 \4/p' <<<"$line")"
        runs=$((runs + r)) ok=$((ok + c)) lower=$((lower + l)) nomem=$((nomem + m))
        rungs="$rungs $(sed -n 's/.*rungs seen: //p' <<<"$line")"
    else
        rc=1
        echo "slice $i printed no summary"
    fi
    rm -f "${logs[$i]}"
done
rungs=$(tr ' ' '\n' <<<"$rungs" | sed '/^$/d' | sort -u | tr '\n' ' ')
echo "sweep N=$from..$to: $runs runs: $ok completed ($lower on a lower rung), $nomem out of memory;" \
     "rungs seen: ${rungs% }; $((SECONDS - start)) s$([ $rc = 0 ] || echo "; FAILED")"
exit $rc
