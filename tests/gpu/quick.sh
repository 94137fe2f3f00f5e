#!/usr/bin/env bash
# tests/gpu/quick.sh - the short loop of GPU work: build (through run.sh),
# ctest -L gpu, the kernel benchmarks (gpubench) under the launch variants
# named in VARIANTS (env assignments separated by ';', "" = defaults), and the
# whole-model benchmark (gpu_model_bench on the full-size synthetic
# checkpoint). Output: $OUT/quick.txt (and the build logs there).
#   OUT=DIR VARIANTS="VLM_CUDA_PDL=0;VLM_GEMV_WS=2" bash tests/gpu/quick.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
LOGS=${OUT:-build-gpu/logs}
mkdir -p "$LOGS"
exec > >(tee "$LOGS/quick.txt") 2>&1
. tests/gpu/prepare.sh
timeout 200 ctest --test-dir build-gpu -L gpu --output-on-failure 2>&1 | tail -25
[ -f "$CK/config.json" ] || timeout 240 build-gpu/mkcheckpoint --out "$CK" --shared "$SHARED" \
  >"$LOGS/mkcheckpoint.log" 2>&1 &
MK=$!
IFS=';' read -r -a VS <<<"${VARIANTS:-}"
VS=("" "${VS[@]}") # the defaults first
for v in "${VS[@]}"; do
  echo "=== gpubench ${v:-(defaults)}"
  env $v timeout 120 build-gpu/gpubench 2>&1 | grep -E "GEMVs/token|decode sweep|attn|gemv BF16"
done
wait $MK
for v in "${VS[@]}"; do
  echo "=== gpu_model_bench ${v:-(defaults)}"
  env $v timeout 200 build-gpu/gpu_model_bench "$CK" 64 800 "${PARTS:-dpv}" 2>&1 | grep -vE '^\{'
done
