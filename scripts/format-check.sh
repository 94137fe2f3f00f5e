#!/usr/bin/env bash
# Fail if any tracked C file differs from what clang-format makes of it.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=0
while IFS= read -r f; do
  [ -f "$f" ] || continue
  if ! clang-format --dry-run -Werror "$f" >/dev/null 2>&1; then
    echo "format: $f is not clang-formatted (run: make format)" >&2
    bad=1
  fi
done < <(git ls-files --cached --others --exclude-standard '*.c' '*.h' '*.cu')
exit $bad
