#!/usr/bin/env bash
# Phase times of one answer on a full-size synthetic Phi-3.5-vision checkpoint
# (bf16, random weights, 8.3 GB): one 336x336 image + a 32-token question,
# 32 new tokens (no early stop), through `vlmtest generate --json`.
#
# usage: bench/phase_times.sh [BUILD_DIR] [WORK_DIR]
#   BUILD_DIR  holds vlmtest and mkcheckpoint (default build)
#   WORK_DIR   scratch folder for the checkpoint (default /tmp/vlm-phase-times;
#              removed afterwards unless KEEP=1)
#   THREADS    threads (default 2), CTX KV tokens (default 1024)
#   MKARGS     extra mkcheckpoint options (e.g. "--layers 2" for a smoke run)
set -euo pipefail
build=${1:-build}
work=${2:-/tmp/vlm-phase-times}
threads=${THREADS:-2}
ctx=${CTX:-1024}
mkdir -p "$work"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT

if [ ! -f "$work/ck/model.safetensors.index.json" ]; then
  echo "writing the checkpoint to $work/ck ..." >&2
  /usr/bin/time -f "mkcheckpoint: %e s wall" "$build/mkcheckpoint" --out "$work/ck" --random 1 ${MKARGS:-} >&2
fi

# A 336x336 RGB PNG (a colour gradient), written with zlib alone.
python3 - "$work/img336.png" <<'PY'
import struct, sys, zlib
w = h = 336
rows = b"".join(b"\0" + bytes(v for x in range(w) for v in (x * 255 // w, y * 255 // h, 128))
                for y in range(h))
def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
       chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b""))
open(sys.argv[1], "wb").write(png)
PY

# 32 tokens of question text (the chat template adds its own tokens).
prompt="Describe this picture in detail: the colours, the shapes, the light, and anything written in it, then say what it most probably shows and why."
echo "prompt tokens: $(printf '%s\n' "$prompt" | "$build/vlmtest" tokenize --tokenizer "$work/ck" | tr ',' '\n' | wc -l)" >&2

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "commit: $(git -C "$(dirname "$0")/.." rev-parse --short HEAD 2>/dev/null || echo unknown)" >&2
/usr/bin/time -f "generate: %e s wall, %U s user, %S s system, max RSS %M KB" \
  "$build/vlmtest" generate -m "$work/ck" --image "$work/img336.png" -p "$prompt" \
  --max-tokens 32 --ignore-eos --threads "$threads" --ctx "$ctx" --json
