#!/usr/bin/env bash
# --device and --gpu-mem-budget on generate and chat on a machine without a
# GPU (a build without CUDA, or with it and no device, as on the CI
# machine): cuda fails with a clear message (exit 1), cpu and auto run on the
# CPU and say so in the plan object, bad values are usage errors (exit 2).
set -euo pipefail
# What is checked here is the machine without a GPU (the CI machine's case):
# on the GPU machine the device is hidden, so the answers stay the same.
export CUDA_VISIBLE_DEVICES=""
: "${VLM_BIN:?}" "${VLM_SOURCE_DIR:?}"
tmp=$(mktemp -d /tmp/vlmtest-device-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
TINY=$VLM_SOURCE_DIR/tests/data/tiny/f32
gen=("$VLM_BIN" generate -m "$TINY" -p "hello" --max-tokens 3 --ignore-eos --threads 1 --ctx 256)

# cuda: refused before anything is loaded, with the reason
rc=0; "${gen[@]}" --device cuda >"$tmp/out" 2>"$tmp/err" || rc=$?
[ "$rc" = 1 ] || fail "generate --device cuda: exit $rc, expected 1"
# no CUDA backend built, or built and no device visible
grep -qE 'device "cuda": (this build has no CUDA backend|no GPU: )' "$tmp/err" ||
    { cat "$tmp/err"; fail "message"; }
[ ! -s "$tmp/out" ] || fail "generate --device cuda printed an answer"
rc=0; printf 'hi\n' | "$VLM_BIN" chat -m "$TINY" --device cuda >/dev/null 2>"$tmp/err" || rc=$?
[ "$rc" = 1 ] || fail "chat --device cuda: exit $rc"
grep -qE "no CUDA backend|no GPU: " "$tmp/err" || fail "chat --device cuda message"

# cpu and auto (with a GPU budget that has no GPU to use): the CPU, the same ids
for dev in cpu auto; do
    "${gen[@]}" --device "$dev" --gpu-mem-budget 24G --json >"$tmp/$dev.json" 2>"$tmp/err" ||
        { cat "$tmp/err"; fail "generate --device $dev"; }
done
python3 - "$tmp/cpu.json" "$tmp/auto.json" <<'PY'
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
for j in (a, b):
    p = j["plan"]
    assert p["device"] == "cpu" and p["gpu_layers"] == 0 and p["n_layers"] == 2, p
    assert p["head_device"] == "cpu" and p["vision_device"] == "cpu", p
    assert p["rung"] == "cpu native" and p["gpu_estimated_bytes"] == 0, p
    assert len(j["ids"]) == 3, j
    assert all(v == 0 for v in j["gpu"].values()), j["gpu"]  # device bytes per phase
assert a["ids"] == b["ids"], (a["ids"], b["ids"])
# auto planned the GPU rungs against 24 GiB, then found no GPU to use
assert b["plan"]["gpu_budget"] == 24 << 30 and a["plan"]["gpu_budget"] == 0, (a["plan"], b["plan"])
PY

# bad values: usage errors, exit 2, naming the option
for bad in "--device gpu" "--device ''" "--gpu-mem-budget lots" "--gpu-mem-budget 0" \
    "--gpu-mem-budget 12Q"; do
    rc=0; eval "\"\${gen[@]}\" $bad" >/dev/null 2>"$tmp/err" || rc=$?
    [ "$rc" = 2 ] || fail "generate $bad: exit $rc, expected 2"
done
grep -q -- "--gpu-mem-budget wants a size" "$tmp/err" || fail "budget message"
rc=0; "${gen[@]}" --device gpu >/dev/null 2>"$tmp/err" || rc=$?
grep -q -- "--device wants cuda, cpu or auto, not 'gpu'" "$tmp/err" || fail "device message"
echo "ok"
