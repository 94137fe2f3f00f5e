#!/usr/bin/env bash
# scripts/src-hash.sh - a short hash of the sources that the GPU scripts
# build (src/, include/, tools/, tests/gpu/, CMakeLists.txt), independent of
# git: run.sh prints it in its summary, and running this on a checkout says
# whether a GPU log came from that tree.
cd "$(dirname "$0")/.."
find src include tools tests/gpu CMakeLists.txt -type f 2>/dev/null | LC_ALL=C sort |
  xargs cat | sha256sum | cut -c1-12
