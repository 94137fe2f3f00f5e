#!/usr/bin/env bash
# make demo: the bundled demo model (models/demo, named "demo-phi3v" in
# vlmtest.models.json) on the smoke suite (vlmtest run) and the context suite
# (vlmtest context), the two runs merged into one report.
set -euo pipefail
build=${1:-build}
cd "$(dirname "$0")/.."
bin="$build/vlmtest"
id=demo-$(date -u +%Y%m%dT%H%M%SZ)
out=results

# Exit status 1 means "some case failed", which the partly trained demo model
# does; 2 and above are real errors.
step() {
  local rc=0
  "$@" || rc=$?
  [ "$rc" -le 1 ] || { echo "demo: '$*' failed (exit $rc)" >&2; exit "$rc"; }
}

echo "== vlmtest run demo-phi3v --suite suites/smoke"
step "$bin" run demo-phi3v --suite suites/smoke --out "$out" --run-id "$id-smoke"
echo
echo "== vlmtest context demo-phi3v --suite suites/context"
step "$bin" context demo-phi3v --suite suites/context --out "$out" --run-id "$id-context"
echo
echo "== vlmtest merge (both runs, one report)"
step "$bin" merge "$out/$id-smoke" "$out/$id-context" --out "$out/$id"
echo
# The per-suite and per-tag tables of the merged report (context: whole
# conversations and turns; the tags are the question and dialogue types).
sed -n '/^## Summary per suite/,/^## Models/p' "$out/$id/report.md" | sed '$d'
echo "report: $out/$id/report.html"
