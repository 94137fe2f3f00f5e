#!/usr/bin/env bash
# A hard limit on the address space (prlimit --as) is a memory budget too:
# `vlmtest generate` on the tiny bf16 fixture under a limit sized between
# the native rung's need and q8_0's picks q8_0 (the ids of a --precision
# q8_0 run); with --allow-degrade under a limit below q4_0 at one crop and
# context 1024 it takes the last rung, q4_0_all (every matrix q4_0, KV cache
# bf16), at the largest context that fits, and finishes with the ids of a
# --precision q4_0_all run; under a limit nothing fits it exits 1 with the
# budget in the message: never killed. The limit is placed from what the
# plan reports: budget = (limit - address space in use at planning) less
# the margin under an address-space limit, 5% of that, at least 128 MiB
# (docs/planner.md); every limit here is small enough for the 128 MiB.
set -euo pipefail
bin=${VLM_BIN:?}
src=${VLM_SOURCE_DIR:?}
model="$src/tests/data/tiny/bf16"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
command -v prlimit >/dev/null || fail "prlimit (util-linux) is missing"
margin=$((128 << 20))

gen() { # out-prefix, limit (bytes), then extra args
    local p=$1 lim=$2; shift 2
    prlimit --as="$lim" "$bin" generate -m "$model" -p "Hello" --max-tokens 8 --ignore-eos \
        --threads 1 --json "$@" >"$tmp/$p.json" 2>"$tmp/$p.err"
}

# 2 GiB: native fits; the address space in use at planning follows from the
# budget (2 GiB less what is in use, 5% of it is below the 128 MiB floor)
big=$((2 << 30))
gen big "$big" || fail "2 GiB limit: $(cat "$tmp/big.err")"
[ "$(field "$tmp/big.json" "d['plan']['precision']")" = native ] || fail "2 GiB: not native"
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

# The last rung. `vlmtest plan` gives every rung's need for the same request
# (one image at the default photo size, context 4096, 1 thread); its fixed
# overhead (the tokenizer measured) differs from the load's (the default)
# by a constant, taken from the native rung.
"$bin" plan "$model" --mem-budget 1 --allow-degrade --threads 1 --json >"$tmp/plan.json" \
    2>"$tmp/plan.err" || true
"$bin" plan "$model" --mem-budget "$big" --threads 1 --json >"$tmp/plan_big.json"
rung() { # precision, context -> the rung's need (its smallest crop group), one crop
    field "$tmp/plan.json" "[r['peak'] for r in d['rungs'] if r['device'] == 'cpu' and \
        r['precision'] == '$1' and r['num_crops'] == 1 and r['context'] == $2][0]"
}
delta=$(($(field "$tmp/big.json" "d['plan']['estimated_bytes']") - \
    $(field "$tmp/plan_big.json" "d['chosen']['peak']")))
q4_1024=$(($(rung q4_0 1024) + delta))
all_2048=$(($(rung q4_0_all 2048) + delta))
all_512=$(($(rung q4_0_all 512) + delta))
[ "$all_2048" -lt "$q4_1024" ] || fail "q4_0_all at 2048 ($all_2048) not below q4_0 at 1024 ($q4_1024)"
img="$src/tests/data/tiny/images/wide.png"
gen allref "$big" --precision q4_0_all --num-crops 1 --ctx 2048 --image "$img" ||
    fail "q4_0_all: $(cat "$tmp/allref.err")"
# the image is decoded before the load plans: it is in the address space then
gen bigimg "$big" --image "$img" || fail "2 GiB limit, image: $(cat "$tmp/bigimg.err")"
used_img=$((big - margin - $(field "$tmp/bigimg.json" "d['plan']['budget']")))
for case in "2048 $((q4_1024 - 1))" "512 $all_512"; do
    set -- $case
    lim=$((used_img + margin + $2))
    gen last "$lim" --allow-degrade --image "$img" ||
        fail "limit $lim (last rung): exit $?: $(cat "$tmp/last.err")"
    [ "$(field "$tmp/last.json" "d['plan']['precision']")" = q4_0_all ] ||
        fail "limit $lim: $(field "$tmp/last.json" "d['plan']['rung']"), not q4_0_all"
    [ "$(field "$tmp/last.json" "d['plan']['context']")" = "$1" ] ||
        fail "limit $lim: context $(field "$tmp/last.json" "d['plan']['context']"), not $1"
    [ "$(field "$tmp/last.json" "d['plan']['kv_dtype']")" = bf16 ] || fail "limit $lim: KV not bf16"
    field "$tmp/last.json" "d['plan']['gave_up']" | grep -q "the q8_0 floor" ||
        fail "gave_up: $(field "$tmp/last.json" "d['plan']['gave_up']")"
    [ "$(field "$tmp/last.json" "len(d['ids'])")" = 8 ] || fail "limit $lim: not 8 ids"
    [ "$(grep -c "warning: loaded at q4_0_all" "$tmp/last.err")" = 1 ] ||
        fail "warning: $(cat "$tmp/last.err")"
done
# context does not change the first 8 greedy ids of a short prompt: the
# 512-context run answers as the 2048 reference does
[ "$(field "$tmp/last.json" "d['ids']")" = "$(field "$tmp/allref.json" "d['ids']")" ] ||
    fail "q4_0_all ids: $(field "$tmp/last.json" "d['ids']") vs $(field "$tmp/allref.json" "d['ids']")"

# nothing fits: exit 1 (not a signal), the message names the budget
set +e
gen none $((used + margin + (1 << 20)))
rc=$?
set -e
[ "$rc" -eq 1 ] || fail "tiny limit: exit $rc: $(cat "$tmp/none.err")"
grep -q "does not fit the memory budget" "$tmp/none.err" || fail "no-fit message: $(cat "$tmp/none.err")"
echo "ok: q8_0 and the last rung under --as limits (address space at planning $used bytes)"
