#!/usr/bin/env bash
# The memory planner's estimate against a real run on a full-size synthetic
# Phi-3.5-vision checkpoint (bf16, random weights, 8.3 GB): build/plan_check
# loads it through the public API, answers one turn of a few tokens, unloads,
# and prints the accounted peak + mapped bytes next to the plan's peak for the
# same setting (one JSON object per case).
#
# usage: bench/plan_vs_measured.sh [BUILD_DIR] [WORK_DIR]
#   BUILD_DIR  holds plan_check and mkcheckpoint (default build)
#   WORK_DIR   scratch folder for the checkpoint (default /tmp/vlm-plan-check;
#              removed afterwards unless KEEP=1)
#   THREADS    threads (default 2); TOKENS new tokens per case (default 2)
#   CASES      which cases: "text ctx4096 crops4 crops16" (default "text ctx4096";
#              the image cases run the full CLIP tower, 17-30 s per crop here)
set -euo pipefail
build=${1:-build}
work=${2:-/tmp/vlm-plan-check}
threads=${THREADS:-2}
tokens=${TOKENS:-2}
cases=${CASES:-text ctx4096}
mkdir -p "$work"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT

if [ ! -f "$work/ck/model.safetensors.index.json" ]; then
  echo "writing the checkpoint to $work/ck ..." >&2
  "$build/mkcheckpoint" --out "$work/ck" --random 1 ${MKARGS:-} >&2
fi

# A 1344x672 RGB PNG (a colour gradient; 2x1 tiles at num_crops 4), zlib alone.
python3 - "$work/img.png" <<'PY'
import struct, sys, zlib
w, h = 1344, 672
rows = b"".join(b"\0" + bytes(v for x in range(w) for v in (x * 255 // w, y * 255 // h, 128))
                for y in range(h))
def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
       chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b""))
open(sys.argv[1], "wb").write(png)
PY

for c in $cases; do
  case $c in
    text)    args=(--ctx 1024) ;;
    ctx4096) args=(--ctx 4096) ;;
    crops4)  args=(--ctx 4096 --num-crops 4 --image "$work/img.png") ;;
    crops16) args=(--ctx 4096 --num-crops 16 --image "$work/img.png") ;;
    *) echo "unknown case $c" >&2; exit 2 ;;
  esac
  echo "case $c ..." >&2
  "$build/plan_check" "$work/ck" --threads "$threads" --tokens "$tokens" "${args[@]}"
done
