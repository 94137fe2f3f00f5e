#!/usr/bin/env bash
# make demo: the main job on the bundled default.
set -euo pipefail
build=${1:-build}
cd "$(dirname "$0")/.."
bin="$build/vlmtest"
echo "== vlmtest mem"
"$bin" mem
