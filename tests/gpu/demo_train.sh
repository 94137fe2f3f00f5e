#!/usr/bin/env bash
# tests/gpu/demo_train.sh - the demo model's training on one GPU, in three
# calls of at most 10 minutes each (docs/demo.md, "How it is made"):
#   PHASE=checks  the trainer's checks where transformers and tokenizers are
#                 installed: --self-test, --cpu-smoke with the demo's CLIP
#                 tower (20 steps, one thread), --bench-data 100 (worker cost
#                 with tokenizing, the training mix and answer priors);
#                 $OUT/checks.txt
#   PHASE=train   the training command of docs/demo.md (about 8 minutes);
#                 $OUT/train.txt, and the run folder ($RUN: demo/,
#                 train_log.json, loss.png) copied to $OUT/run
#   PHASE=eval    the held-out evaluation of what the run exported (the run
#                 folder stays on the machine between calls while it is
#                 held); $OUT/eval.txt, $OUT/run/{eval_stats.json,
#                 pytorch_answers.jsonl}
#   OUT=DIR PHASE=train bash tests/gpu/demo_train.sh
# TIME_LIMIT (default 540, the shipped model's) is its --time-limit in
# seconds (--auto-steps lays the schedule over the steps that fit it).
# REL_WEIGHT (default 1, the shipped model's) is train_demo.py's
# --rel-weight (0: no relational heads). PACKED_RULE (default answer) is its --packed-rule;
# BALANCED_DIALOGUES=1 adds --balanced-dialogues, RECALL_DIALOGUES=1
# --recall-dialogues (more turns answered from the dialogue's text); PACKED_MODE (default turns)
# is its --packed-mode (branched: the packed questions as branches, each
# seeing the image and itself only). The defaults (PACKED_RULE answer, no
# BALANCED_DIALOGUES, PACKED_MODE turns) are the shipped model's mix, sample
# for sample. LM_LAYERS (default 4, the shipped model's) is its --lm-layers,
# STEP_IMPL (default fast, the shipped model's) its --step-impl. IMAGES
# (default front, the shipped model's) is its --images in both the train and
# the eval phase (after: each turn's question before its images).
# ROPE_THETA (default 10000, the shipped model's) is its --rope-theta,
# VISION_WIDTH (default 192, the shipped model's) its --vision-width.
# REF_WEIGHT (default 1, the shipped model's; 0: none) is its --ref-weight
# (the referent loss), REF_LAYERS (default 0,1) its --ref-layers, REF_HEADS
# (default 4) its --ref-heads, REF_ANCHOR (default word) its --ref-anchor,
# REF_GLOBAL_HEADS (default 2) its --ref-global-heads, PROBE_WEIGHT
# (unset: train_demo.py's default, 0.3 with the referent loss, the shipped
# model's) its --ref-probe-weight (the word probe); PROBE_NO_YESNO=1 adds
# --ref-probe-no-yesno (no probe labels in yes/no turns). WEIGHTS (default
# none) is a list of TYPE=W, each its --weight (a question or dialogue type's
# weight in the mix, e.g. WEIGHTS="two_image_count=2.5 two_image_text=2.5"; commas
# also part them, for demo_sweep.sh's SWEEP, whose words are one VAR=val each).
# NOPE_PAIRS (default 0) is its --rope-nope-pairs. SEED (default 1) is its
# --seed, WORKERS (default 15) its --workers (data worker processes).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/demo-train-out}
RUN=${RUN:-/tmp/demo-run}
mkdir -p "$OUT" "$RUN"
T=reference/train_demo.py
case "${PHASE:-}" in
checks)
  {
    python3 $T --self-test &&
      python3 $T --cpu-smoke 20 --batch 2 --lr 2e-3 --rel-weight 1 &&
      python3 $T --bench-data 100
  } >"$OUT/checks.txt" 2>&1
  rc=$?
  tail -40 "$OUT/checks.txt"
  exit $rc
  ;;
train)
  gen=()
  [ "${BALANCED_DIALOGUES:-0}" = 1 ] && gen=(--balanced-dialogues)
  [ "${PROBE_NO_YESNO:-0}" = 1 ] && gen+=(--ref-probe-no-yesno)
  [ "${RECALL_DIALOGUES:-0}" = 1 ] && gen+=(--recall-dialogues)
  ws=${WEIGHTS:-}
  for w in ${ws//,/ }; do gen+=(--weight "$w"); done
  python3 $T --steps 3300 --auto-steps --time-limit "${TIME_LIMIT:-540}" \
    --batch 128 --lr 2e-3 \
    --workers "${WORKERS:-15}" --compile --seed "${SEED:-1}" --char-weight 2 --rel-weight "${REL_WEIGHT:-1}" \
    --packed-rule "${PACKED_RULE:-answer}" --packed-mode "${PACKED_MODE:-turns}" \
    --lm-layers "${LM_LAYERS:-4}" --step-impl "${STEP_IMPL:-fast}" \
    --images "${IMAGES:-front}" --rope-theta "${ROPE_THETA:-10000}" \
    --vision-width "${VISION_WIDTH:-192}" \
    --ref-weight "${REF_WEIGHT:-1}" --ref-layers "${REF_LAYERS:-0,1}" \
    --ref-heads "${REF_HEADS:-4}" --ref-anchor "${REF_ANCHOR:-word}" \
    --ref-global-heads "${REF_GLOBAL_HEADS:-2}" \
    ${PROBE_WEIGHT:+--ref-probe-weight "$PROBE_WEIGHT"} \
    --rope-nope-pairs "${NOPE_PAIRS:-0}" \
    ${gen[@]+"${gen[@]}"} \
    --no-eval --out "$RUN" >"$OUT/train.txt" 2>&1
  rc=$?
  mkdir -p "$OUT/run"
  cp -r "$RUN/demo" "$RUN/train_log.json" "$RUN/loss.png" "$OUT/run/" 2>/dev/null
  grep -E "check:|auto steps|^step [0-9]+ |rel loss|ref loss|probe loss|by type|trained|exported|total|Error" "$OUT/train.txt" |
    tail -40
  exit $rc
  ;;
eval)
  [ -f "$RUN/demo/model.safetensors" ] || {
    echo "no $RUN/demo: run PHASE=train on this machine first" >&2
    exit 1
  }
  # SUITES (default suites) is the folder of smoke/ and context/ to answer;
  # EVAL_OUT (default $RUN) where eval_stats.json and pytorch_answers.jsonl go.
  EVAL_OUT=${EVAL_OUT:-$RUN}
  mkdir -p "$EVAL_OUT"
  python3 $T --eval-only --init "$RUN/demo" --suites "${SUITES:-suites}" \
    --images "${IMAGES:-front}" --out "$EVAL_OUT" >"$OUT/eval.txt" 2>&1
  rc=$?
  mkdir -p "$OUT/run"
  cp "$EVAL_OUT/eval_stats.json" "$EVAL_OUT/pytorch_answers.jsonl" "$OUT/run/" 2>/dev/null
  tail -5 "$OUT/eval.txt"
  exit $rc
  ;;
*)
  echo "PHASE=checks|train|eval" >&2
  exit 2
  ;;
esac
