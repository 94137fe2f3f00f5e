#!/usr/bin/env bash
# tests/gpu/demo_sweep.sh - several demo-model recipes at once on a machine of
# several GPUs, one recipe a GPU, each run exactly as tests/gpu/demo_train.sh
# runs it on a machine of one (same time limit, same data workers a run).
#
#   SWEEP="name VAR=val ...;name VAR=val ..." OUT=DIR PHASE=train bash tests/gpu/demo_sweep.sh
#   SWEEP=... OUT=DIR PHASE=heldout HELDOUT=DIR bash tests/gpu/demo_sweep.sh
#
# SWEEP lists the runs, separated by ';': a name (letters, digits, '-', '_')
# and the demo_train.sh variables that make it differ from the shipped recipe
# (TIME_LIMIT, REF_HEADS, SEED, ...). Run i gets GPU i (CUDA_VISIBLE_DEVICES)
# and its own torch.compile cache, so that no run waits on another's.
#   PHASE=train    trains every run (its folder: /tmp/sweep/NAME), answers
#                  the committed suites, and writes $OUT/NAME.tgz: demo/,
#                  train_log.json, loss.png, eval_stats.json,
#                  pytorch_answers.jsonl and the logs (train.txt, eval.txt).
#   PHASE=heldout  answers the suites in HELDOUT (smoke/ and context/, as
#                  reference/scenes.py writes them) with every run's model left
#                  on the machine by PHASE=train; $OUT/NAME-heldout.tgz.
# Runs side by side are slower than a run alone (four on four H200s: 3.7
# steps/s against 6.0; docs/demo.md), so their results compare with one
# another, not with a run made alone.
# One line per run in $OUT/sweep.txt: the name, the exit status, what it
# printed last. Exit status: the number of runs that failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/demo-sweep-out}
BASE=${SWEEP_DIR:-/tmp/sweep}
mkdir -p "$OUT" "$BASE"
[ -n "${SWEEP:-}" ] || {
  echo "SWEEP is empty: name VAR=val ...;name ..." >&2
  exit 2
}
IFS=';' read -ra RUNS <<<"$SWEEP"
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
[ "${#RUNS[@]}" -le "$ngpu" ] || {
  echo "${#RUNS[@]} runs for $ngpu GPUs" >&2
  exit 2
}
# Data workers a run: SWEEP_WORKERS, else the cores shared out less one for
# each main process, at most 15 (a run alone uses 15).
cores=$(nproc)
workers=${SWEEP_WORKERS:-$((cores / ${#RUNS[@]} - 1))}
[ "$workers" -gt 15 ] && workers=15
[ "$workers" -lt 2 ] && workers=2

one() { # index, then the run's words
  local i=$1 name=$2
  shift 2
  local dir=$BASE/$name logs=$BASE/$name-logs
  mkdir -p "$dir" "$logs"
  case "$PHASE" in
  train)
    env CUDA_VISIBLE_DEVICES="$i" TORCHINDUCTOR_CACHE_DIR="$BASE/$name-inductor" \
      TORCHINDUCTOR_COMPILE_THREADS="$workers" WORKERS="$workers" RUN="$dir" OUT="$logs" \
      "$@" PHASE=train bash tests/gpu/demo_train.sh >"$logs/phase-train.txt" 2>&1 &&
      env CUDA_VISIBLE_DEVICES="$i" RUN="$dir" OUT="$logs" "$@" PHASE=eval \
        bash tests/gpu/demo_train.sh >"$logs/phase-eval.txt" 2>&1
    local rc=$?
    tar czf "$OUT/$name.tgz" -C "$dir" demo train_log.json loss.png eval_stats.json \
      pytorch_answers.jsonl -C "$logs" train.txt eval.txt 2>/dev/null
    echo "$name rc=$rc $(grep -h -E '^(trained|eval:)' "$logs/train.txt" "$logs/eval.txt" \
      2>/dev/null | tr '\n' ' ')" >"$logs/status"
    ;;
  heldout)
    [ -d "${HELDOUT:-}/smoke" ] || {
      echo "$name rc=2 HELDOUT has no smoke/" >"$logs/status"
      return
    }
    env CUDA_VISIBLE_DEVICES="$i" RUN="$dir" OUT="$logs/heldout" EVAL_OUT="$dir/heldout" \
      SUITES="$HELDOUT" "$@" PHASE=eval bash tests/gpu/demo_train.sh \
      >"$logs/phase-heldout.txt" 2>&1
    local rc=$?
    tar czf "$OUT/$name-heldout.tgz" -C "$dir/heldout" eval_stats.json \
      pytorch_answers.jsonl 2>/dev/null
    echo "$name rc=$rc $(grep '^eval:' "$logs/heldout/eval.txt" 2>/dev/null)" >"$logs/status"
    ;;
  *)
    echo "PHASE=train|heldout" >&2
    exit 2
    ;;
  esac
}

i=0
names=()
for r in "${RUNS[@]}"; do
  read -ra words <<<"$r"
  [ "${#words[@]}" -gt 0 ] || continue
  names+=("${words[0]}")
  one "$i" "${words[@]}" &
  i=$((i + 1))
done
wait
fail=0
: >"$OUT/sweep.txt"
for n in "${names[@]}"; do
  line=$(cat "$BASE/$n-logs/status" 2>/dev/null || echo "$n rc=? no status")
  echo "$line" | tee -a "$OUT/sweep.txt"
  case "$line" in *" rc=0 "*) ;; *) fail=$((fail + 1)) ;; esac
done
exit "$fail"
