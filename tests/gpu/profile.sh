#!/usr/bin/env bash
# tests/gpu/profile.sh - where the whole model's GPU time goes, by kernel:
#   OUT=DIR bash tests/gpu/profile.sh [parts=dpv]
# Builds through run.sh (ONLY_BUILD=1), makes the full-size synthetic
# checkpoint, runs gpu_model_bench once plainly (wall-clock figures), then
# under Nsight Compute (ncu, kernel durations only, clocks left alone) once
# per part: d = decode of 8 tokens, p = prefill of 800 tokens, v = the vision
# tower for 1 + 4 and 1 + 16 crops. Per-kernel summaries go to
# $OUT/ncu-PART.txt (CTEST=1 runs ctest -L gpu first); the sum of kernel time against the wall time says how
# much is launch gaps and host work. A measurement, not a test.
set -uo pipefail
cd "$(dirname "$0")/../.."
LOGS=${OUT:-build-gpu/logs}
mkdir -p "$LOGS"
PARTS=${1:-dpv}
. tests/gpu/prepare.sh
[ -f "$CK/config.json" ] || timeout 240 build-gpu/mkcheckpoint --out "$CK" --shared "$SHARED" \
  >"$LOGS/mkcheckpoint.log" 2>&1 || { tail "$LOGS/mkcheckpoint.log"; exit 1; }
[ -n "${CTEST:-}" ] && timeout 200 ctest --test-dir build-gpu -L gpu --output-on-failure 2>&1 | tail -30 | tee "$LOGS/ctest.txt"
timeout 200 build-gpu/gpu_model_bench "$CK" 64 800 "$PARTS" 2>&1 | tee "$LOGS/bench.txt"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "no ncu"; exit 0; }
for p in $(echo "$PARTS" | grep -o .); do
  timeout 200 "$NCU" --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv \
    build-gpu/gpu_model_bench "$CK" 8 800 "$p" >"/tmp/ncu-raw-$p.txt" 2>&1
  # per kernel name: launches, total and mean duration (the CSV has one row
  # per launch and metric)
  python3 - "/tmp/ncu-raw-$p.txt" >"$LOGS/ncu-$p.txt" <<'PY'
import csv, sys
tot, cnt = {}, {}
lines = [l for l in open(sys.argv[1], errors="replace") if l.startswith('"')]
for r in csv.DictReader(lines):
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    f = {"msecond": 1000.0, "usecond": 1.0, "nsecond": 0.001, "second": 1e6}.get(r["Metric Unit"], 1.0)
    v = float(r["Metric Value"].replace(",", "")) * f
    n = r["Kernel Name"][:140]
    tot[n] = tot.get(n, 0.0) + v
    cnt[n] = cnt.get(n, 0) + 1
T = sum(tot.values())
print(f"total kernel time {T/1000:.2f} ms over {sum(cnt.values())} launches")
for n in sorted(tot, key=lambda k: -tot[k])[:40]:
    print(f"{tot[n]/1000:9.3f} ms {100*tot[n]/max(T,1e-9):5.1f}% {cnt[n]:7d} x {tot[n]/cnt[n]:9.2f} us  {n}")
PY
  head -45 "$LOGS/ncu-$p.txt"
  grep -m3 -i "error" "/tmp/ncu-raw-$p.txt"
  head -c 3000 "/tmp/ncu-raw-$p.txt" >"$LOGS/ncu-head-$p.txt"
done
