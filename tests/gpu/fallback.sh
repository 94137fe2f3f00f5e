#!/usr/bin/env bash
# tests/gpu/fallback.sh - the GPU fallback on a real card (issue 9): a
# full-size synthetic Phi-3.5-vision checkpoint (bf16, 8.3 GB, random
# weights from build/mkcheckpoint), one image and 64 new tokens, with a
# ballast (build/gpuballast) leaving only X GiB of the card free:
#   X = 20 -> everything on the GPU; X = 6 -> quantized or partly offloaded,
#   as the plan says; X = 1 -> the CPU.
# Each run's greedy ids are compared with a CPU run at the same precision
# (the CPU-checked rung), and the device memory after unload with that
# before load. From the repo root on the GPU machine, after tests/gpu/run.sh
# (it reuses build-gpu/ and /tmp/vlmdeps):
#     OUT=/path bash tests/gpu/fallback.sh            (X list: LEAVE="1 20 6")
# (the checkpoint needs the shared reference files: tests/gpu/stage_shared.sh
# copies them into .gpu/shared, which the device run carries)
# Writes gen_X.json, cpu_PRECISION.json and a summary table (printed last).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
BUILD=${BUILD:-build-gpu}
OUT=${OUT:-$ROOT/$BUILD/fallback}
LEAVE=${LEAVE:-"1 20 6"}   # 1 first: its CPU run is the native reference
CK=${CK:-/tmp/vlm-synth-phi35v}   # the checkpoint run.sh makes, reused
mkdir -p "$OUT"
P=/tmp/vlmdeps
MA=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
export PKG_CONFIG_PATH="$P/usr/lib/$MA/pkgconfig:$P/usr/lib/pkgconfig:$P/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export LD_LIBRARY_PATH="$P/usr/lib/$MA:$P/usr/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="/usr/local/cuda/bin:$PATH"

if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVLM_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_C_FLAGS="-I$P/usr/include" \
    -DCMAKE_EXE_LINKER_FLAGS="-Wl,-rpath-link,$P/usr/lib/$MA -Wl,-rpath,$P/usr/lib/$MA" \
    >"$OUT/configure.log" 2>&1
fi
if ! timeout 300 cmake --build "$BUILD" -j "${JOBS:-16}" --target vlmtest gpuballast mkcheckpoint \
    >"$OUT/build.log" 2>&1; then
  tail -30 "$OUT/build.log"; echo "build failed"; exit 1
fi
SHARED=""
for d in "${VLM_SHARED_DIR:-}" "$ROOT/shared" "$ROOT/.gpu/shared" "$ROOT/../shared"; do
  if [ -n "$d" ] && [ -d "$d/models" ]; then SHARED=$(cd "$d" && pwd); break; fi
done
if [ ! -f "$CK/config.json" ]; then
  [ -n "$SHARED" ] || { echo "no shared folder: run tests/gpu/stage_shared.sh and carry .gpu/shared"; exit 1; }
  t=$(date +%s)
  "$BUILD/mkcheckpoint" --out "$CK" --shared "$SHARED" >"$OUT/mkcheckpoint.log" 2>&1 ||
    { tail "$OUT/mkcheckpoint.log"; exit 1; }
  echo "checkpoint: $CK ($(du -sh "$CK" | cut -f1), $(( $(date +%s) - t )) s)"
fi
IMG=tests/data/images/landscape.jpg
COMMON=(-m "$CK" --image "$IMG" -p "Describe the image." --max-tokens 64 --ignore-eos --json)

field() { # field FILE EXPR (python expression over d)
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1" 2>/dev/null || echo "?"
}

declare -a ROWS=()
fail=0
for X in $LEAVE; do
  g="$OUT/gen_$X.json"
  t=$(date +%s)
  timeout 400 "$BUILD/gpuballast" --leave "${X}G" -- "$BUILD/vlmtest" generate "${COMMON[@]}" \
      >"$g" 2>"$OUT/gen_$X.err"
  rc=$?
  secs=$(( $(date +%s) - t ))
  if [ $rc -ne 0 ]; then
    ROWS+=("$X|FAIL rc=$rc|||||||$secs"); fail=1; tail -5 "$OUT/gen_$X.err"; continue
  fi
  prec=$(field "$g" "d['plan']['precision']")
  rung=$(field "$g" "d['plan']['rung']")
  # the CPU-checked rung: the same precision on the CPU (computed once)
  c="$OUT/cpu_$prec.json"
  # a run that ended on the CPU is its own reference
  [ "$(field "$g" "d['plan']['device']")" = cpu ] && [ ! -s "$c" ] && cp "$g" "$c"
  if [ ! -s "$c" ]; then
    cprec=$prec; [ "$cprec" = native ] && cprec=bf16
    timeout 500 "$BUILD/vlmtest" generate "${COMMON[@]}" --device cpu --precision "$cprec" \
        >"$c" 2>"$OUT/cpu_$prec.err" || { echo "cpu reference at $cprec failed"; tail -5 "$OUT/cpu_$prec.err"; }
  fi
  same=$(python3 - "$g" "$c" <<'PY'
import json, sys
a = json.load(open(sys.argv[1]))["ids"]
try:
    b = json.load(open(sys.argv[2]))["ids"]
except Exception:
    print("no cpu run"); sys.exit()
n = 0
while n < min(len(a), len(b)) and a[n] == b[n]:
    n += 1
print(f"{n}/{len(a)} (first {n} equal)" if n < len(a) else f"{n}/{len(a)}")
PY
)
  leak=$(field "$g" "'%.0f MiB' % ((d['teardown']['gpu_free_before_load'] - d['teardown']['gpu_free_after_unload']) / 2**20)")
  acc=$(field "$g" "d['teardown']['gpu_accounted_after_unload']")
  dev=$(field "$g" "'%s %d/%d layers, head %s, vision %s' % (d['plan']['device'], d['plan']['gpu_layers'], d['plan']['n_layers'], d['plan']['head_device'], d['plan']['vision_device'])")
  tps=$(field "$g" "'%.1f' % d['timings']['decode_tokens_per_s']")
  fb=$(field "$g" "d['plan']['fallbacks']")
  ROWS+=("$X|$rung|$dev|$prec|$fb|$tps|$same|$leak / $acc B|$secs")
done
echo
echo "=== tests/gpu/fallback.sh ($(git rev-parse --short HEAD 2>/dev/null), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))"
printf '%-5s %-40s %-44s %-7s %-4s %-8s %-22s %-22s %s\n' "free" "rung" "placement" "prec" "fb" "tok/s" "ids = cpu" "left after unload" "secs"
for r in "${ROWS[@]}"; do
  IFS='|' read -r a b c d e f g h i <<<"$r"
  printf '%-5s %-40s %-44s %-7s %-4s %-8s %-22s %-22s %s\n' "${a}G" "$b" "$c" "$d" "$e" "$f" "$g" "$h" "$i"
done
exit $fail
