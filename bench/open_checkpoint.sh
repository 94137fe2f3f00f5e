#!/usr/bin/env bash
# Benchmark (not a test): write a full-size synthetic Phi-3.5-vision
# checkpoint (8.3 GB, bf16, the published two-shard layout) to a scratch
# folder, then time opening it and measure the RSS it adds before any tensor
# is touched, warm and cold (shards evicted from the page cache).
#
#   bench/open_checkpoint.sh [BUILD_DIR] [SCRATCH_DIR]
#
# Needs ~8.3 GB free in SCRATCH_DIR (default /tmp/vlm-bench-ckpt, removed at
# the end unless KEEP=1). Acceptance: open < 1 s, RSS delta < 50 MB.
set -euo pipefail
BUILD=${1:-build}
DIR=${2:-/tmp/vlm-bench-ckpt}
[ -x "$BUILD/mkcheckpoint" ] && [ -x "$BUILD/stbench" ] || { echo "build first (make build)" >&2; exit 1; }
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$DIR"; }
trap cleanup EXIT

echo "machine: $(uname -m), $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ ! -f "$DIR/model.safetensors.index.json" ]; then
    start=$(date +%s.%N)
    "$BUILD/mkcheckpoint" --out "$DIR" --random 1
    echo "write_s=$(echo "$(date +%s.%N) - $start" | bc)"
fi
du -sb "$DIR" | awk '{printf "on_disk_gb=%.3f\n", $1/1e9}'
echo "# warm (page cache holds the files)"
"$BUILD/stbench" "$DIR" --runs 5
echo "# cold (shards evicted before each open)"
"$BUILD/stbench" "$DIR" --runs 3 --cold
echo "# vlmtest info (whole command, headers only)"
/usr/bin/time -f "info_wall_s=%e info_max_rss_kb=%M" "$BUILD/vlmtest" info "$DIR" --json >"$DIR.info.json"
python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); p=j['parameters']
print('parameters:', p)
assert abs(p['total'] / 1e9 - 4.15) <= 0.01, 'expected 4.15 B parameters'" "$DIR.info.json"
rm -f "$DIR.info.json"
