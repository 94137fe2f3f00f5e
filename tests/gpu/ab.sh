#!/usr/bin/env bash
# tests/gpu/ab.sh - the whole model's speed under launch variants, taken in
# turns on one card (REPS rounds of every variant, so drift of the card's
# clocks falls on all alike), and with NSYS=1 where the decode step's time
# goes by kernel (Nsight Systems, graph nodes traced; kernels overlap under
# programmatic dependent launch, so the sum can exceed the wall time).
#   OUT=DIR VARIANTS="VLM_CUDA_FUSE=0;VLM_CUDA_PREFETCH=0" REPS=3 PARTS=d bash tests/gpu/ab.sh
# A measurement, not a test. Output: $OUT/ab.txt.
set -uo pipefail
cd "$(dirname "$0")/../.."
LOGS=${OUT:-build-gpu/logs}
mkdir -p "$LOGS"
exec > >(tee "$LOGS/ab.txt") 2>&1
. tests/gpu/prepare.sh
[ -f "$CK/config.json" ] || timeout 240 build-gpu/mkcheckpoint --out "$CK" --shared "$SHARED" \
  >"$LOGS/mkcheckpoint.log" 2>&1 || { tail "$LOGS/mkcheckpoint.log"; exit 1; }
IFS=';' read -r -a VS <<<"${VARIANTS:-}"
VS=("" "${VS[@]}")
for r in $(seq "${REPS:-2}"); do
  for v in "${VS[@]}"; do
    echo "=== round $r: ${v:-(defaults)}"
    env $v timeout 200 build-gpu/gpu_model_bench "$CK" 64 800 "${PARTS:-d}" 2>&1 |
      grep -E "decode|prefill|vision"
  done
done
if [ -n "${NSYS:-}" ]; then
  NS=$(command -v nsys || ls /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda/bin/nsys 2>/dev/null | head -1)
  if [ -z "$NS" ]; then echo "no nsys"; exit 0; fi
  timeout 200 "$NS" profile -o /tmp/vlm-dec --force-overwrite true --cuda-graph-trace=node \
    build-gpu/gpu_model_bench "$CK" 64 800 d >/dev/null 2>&1
  timeout 120 "$NS" stats -r cuda_gpu_kern_sum -f csv /tmp/vlm-dec.nsys-rep 2>/dev/null |
    python3 -c '
import csv, sys
rows = [r for r in csv.DictReader(l for l in sys.stdin if l.count(",") > 3)]
tot = sum(float(r["Total Time (ns)"]) for r in rows)
print("%-8s %-7s %-9s %s" % ("share", "calls", "mean us", "kernel"))
for r in rows[:25]:
    t = float(r["Total Time (ns)"])
    print("%5.1f%%  %7s %9.2f  %s" % (100 * t / tot, r["Instances"], float(r["Avg (ns)"]) / 1e3, r["Name"][:110]))
'
fi
