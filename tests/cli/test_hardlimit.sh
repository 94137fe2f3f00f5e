#!/usr/bin/env bash
# A hard limit on the address space (prlimit --as) is a memory budget too:
# `vlmtest generate` on the tiny bf16 fixture under a limit sized between
# the native rung's need and q8_0's picks q8_0 (the ids of a --precision
# q8_0 run), and under a limit nothing fits it exits 1 with the budget in
# the message: never killed. The limit is placed from what the plan reports:
# budget = (limit - address space in use at planning) less the 512 MiB
# floor of the margin (docs/planner.md).
set -euo pipefail
bin=${VLM_BIN:?}
src=${VLM_SOURCE_DIR:?}
model="$src/tests/data/tiny/bf16"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
command -v prlimit >/dev/null || fail "prlimit (util-linux) is missing"
margin=$((512 << 20))

gen() { # out-prefix, limit (bytes), then extra args
    local p=$1 lim=$2; shift 2
    prlimit --as="$lim" "$bin" generate -m "$model" -p "Hello" --max-tokens 8 --ignore-eos \
        --threads 1 --json "$@" >"$tmp/$p.json" 2>"$tmp/$p.err"
}

# 4 GiB: native fits; the address space in use at planning follows from the budget
big=$((4 << 30))
gen big "$big" || fail "4 GiB limit: $(cat "$tmp/big.err")"
[ "$(field "$tmp/big.json" "d['plan']['precision']")" = native ] || fail "4 GiB: not native"
[ "$(field "$tmp/big.json" "d['plan']['budget_source']")" = machine ] || fail "budget source"
used=$((big - margin - $(field "$tmp/big.json" "d['plan']['budget']")))
# (the program and its libraries: ~100 MB, ~700 MB in a CUDA build, where
# cuBLAS and cuBLASLt are mapped)
[ "$used" -gt 0 ] && [ "$used" -lt $((1 << 30)) ] || fail "address space at planning: $used"

# the reference: q8_0 asked for
gen q8 "$big" --precision q8_0 || fail "q8_0: $(cat "$tmp/q8.err")"

# Walk the limit down from native's estimate until the plan leaves native
# (native may first fit by encoding fewer crops at a time).
need=$(field "$tmp/big.json" "d['plan']['estimated_bytes']")
prec=native
for _ in 1 2 3 4 5 6 7 8; do
    lim=$((used + margin + need - 1))
    gen mid "$lim" || fail "limit $lim: exit $?: $(cat "$tmp/mid.err")"
    prec=$(field "$tmp/mid.json" "d['plan']['precision']")
    [ "$prec" = native ] || break
    need=$(field "$tmp/mid.json" "d['plan']['estimated_bytes']")
done
[ "$prec" = q8_0 ] || fail "limit $lim picked $prec, not q8_0"
[ "$(field "$tmp/mid.json" "d['ids']")" = "$(field "$tmp/q8.json" "d['ids']")" ] || fail "q8_0 ids"
grep -q "warning: loaded at q8_0" "$tmp/mid.err" || fail "no warning: $(cat "$tmp/mid.err")"

# nothing fits: exit 1 (not a signal), the message names the budget
set +e
gen none $((used + margin + (1 << 20)))
rc=$?
set -e
[ "$rc" -eq 1 ] || fail "tiny limit: exit $rc: $(cat "$tmp/none.err")"
grep -q "does not fit the memory budget" "$tmp/none.err" || fail "no-fit message: $(cat "$tmp/none.err")"
echo "ok: q8_0 under --as $lim (address space at planning $used bytes)"
