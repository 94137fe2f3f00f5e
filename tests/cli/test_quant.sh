#!/usr/bin/env bash
# The memory plan applied at load, through `vlmtest generate` on the tiny
# bf16 fixture: --precision, --mem-budget (a rung below native, nothing
# fits), the "plan" object of --json, the one warning line, and the
# fallback one rung down after an injected allocation failure in the load
# (the ids must be those of an unfaulted load at that rung).
set -euo pipefail
bin=${VLM_BIN:?}
src=${VLM_SOURCE_DIR:?}
model="$src/tests/data/tiny/bf16"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

gen() { # out-prefix, then extra args
    local p=$1; shift
    "$bin" generate -m "$model" -p "Hello" --max-tokens 8 --ignore-eos --threads 1 --json "$@" \
        >"$tmp/$p.json" 2>"$tmp/$p.err"
}

# native with the machine budget: no warning
gen native
[ "$(field "$tmp/native.json" "d['plan']['precision']")" = native ] || fail "native precision"
[ "$(field "$tmp/native.json" "d['plan']['degraded']")" = False ] || fail "native degraded"
[ ! -s "$tmp/native.err" ] || fail "native printed: $(cat "$tmp/native.err")"

# q8_0 asked for: quantized, one warning line, fewer weight bytes
gen q8 --precision q8_0
[ "$(field "$tmp/q8.json" "d['plan']['precision']")" = q8_0 ] || fail "q8_0 precision"
[ "$(wc -l <"$tmp/q8.err")" -eq 1 ] || fail "q8_0: not one warning line: $(cat "$tmp/q8.err")"
grep -q "warning: loaded at q8_0" "$tmp/q8.err" || fail "q8_0 warning"
nw=$(field "$tmp/native.json" "d['plan']['weight_bytes']")
qw=$(field "$tmp/q8.json" "d['plan']['weight_bytes']")
[ "$qw" -lt "$nw" ] || fail "q8_0 weight bytes $qw !< $nw"

# a budget one byte below native's smallest estimate picks q8_0. Native may
# fit a smaller budget by encoding fewer crops at a time, so walk down: each
# budget is one byte below the estimate of the native plan chosen last.
budget=$(field "$tmp/q8.json" "d['plan']['estimated_bytes']")
prec=native
steps=0
for _ in 1 2 3 4 5 6 7 8; do
    gen mid --mem-budget "$budget"
    prec=$(field "$tmp/mid.json" "d['plan']['precision']")
    [ "$prec" = native ] || break
    steps=$((steps + 1))
    budget=$(($(field "$tmp/mid.json" "d['plan']['estimated_bytes']") - 1))
done
# q8_0's own estimate holds native (with its crops one at a time)
[ "$steps" -ge 1 ] || fail "q8_0's estimate did not fit native"
[ "$prec" = q8_0 ] || fail "budget $budget below native's smallest estimate picked $prec, not q8_0"
[ "$(field "$tmp/mid.json" "d['plan']['budget_source']")" = mem_budget ] || fail "budget source"
[ "$(field "$tmp/mid.json" "d['ids']")" = "$(field "$tmp/q8.json" "d['ids']")" ] || fail "mid ids"

# nothing fits: exit 1, the message names the budget
if "$bin" generate -m "$model" -p "Hello" --max-tokens 1 --mem-budget 1M >"$tmp/no.out" 2>"$tmp/no.err"; then
    fail "1M budget succeeded"
fi
grep -q "does not fit the memory budget of 1048576 bytes" "$tmp/no.err" || fail "no-fit message: $(cat "$tmp/no.err")"

# An allocation failure at the end of the load (the tokenizer), then one in
# the turn: each ends one rung down (q8_0) with the ids of an unfaulted q8_0
# load and one warning line naming the fallback. VLM_FAIL_ALLOC_AT counts
# from the process start: walk back from the run's last allocation
# (VLM_ALLOC_STATS) until each kind of fallback shows.
total=$(VLM_ALLOC_STATS=1 "$bin" generate -m "$model" -p "Hello" --max-tokens 8 --ignore-eos \
        --threads 1 --json 2>&1 >/dev/null | sed -n 's/.*allocations=\([0-9]*\).*/\1/p')
[ "${total:-0}" -gt 200 ] || fail "allocation count: '$total'"
load_fb=0 turn_fb=0
for ((n = total - 4; n > total - 400 && (load_fb == 0 || turn_fb == 0); n -= 6)); do
    if ! VLM_FAIL_ALLOC_AT=$n gen fb; then
        # outside the load and the turn (the session's cache): a clean error
        grep -q "out of memory" "$tmp/fb.err" || fail "N=$n: $(cat "$tmp/fb.err")"
        continue
    fi
    if [ "$(field "$tmp/fb.json" "d['plan']['fallbacks']")" = 0 ]; then
        [ "$(field "$tmp/fb.json" "d['ids']")" = "$(field "$tmp/native.json" "d['ids']")" ] ||
            fail "N=$n: absorbed, but not native's ids"
        continue
    fi
    [ "$(field "$tmp/fb.json" "d['plan']['precision']")" = q8_0 ] || fail "N=$n: fallback precision"
    [ "$(field "$tmp/fb.json" "d['ids']")" = "$(field "$tmp/q8.json" "d['ids']")" ] || fail "N=$n: fallback ids"
    [ "$(wc -l <"$tmp/fb.err")" -eq 1 ] || fail "N=$n: not one line: $(cat "$tmp/fb.err")"
    if [ "$(field "$tmp/fb.json" "'turn_fallback' in d")" = True ]; then
        [ "$(field "$tmp/fb.json" "d['turn_fallback']['from'] + ' ' + d['turn_fallback']['to']")" = "native q8_0" ] ||
            fail "N=$n: turn fallback record"
        grep -q "out of memory in the .* at native; the model was reloaded at q8_0" "$tmp/fb.err" ||
            fail "N=$n: turn fallback warning: $(cat "$tmp/fb.err")"
        turn_fb=$((turn_fb + 1))
    else
        grep -q "after out of memory: native -> q8_0" "$tmp/fb.err" || fail "N=$n: load fallback warning"
        load_fb=$((load_fb + 1))
    fi
done
[ "$load_fb" -gt 0 ] || fail "no load fallback found below N=$total"
[ "$turn_fb" -gt 0 ] || fail "no turn fallback found below N=$total"

# a bad precision is refused
if "$bin" generate -m "$model" -p "Hello" --precision q3 >/dev/null 2>"$tmp/bad.err"; then
    fail "precision q3 accepted"
fi
grep -q 'precision "q3"' "$tmp/bad.err" || fail "bad precision message"
echo "ok"
