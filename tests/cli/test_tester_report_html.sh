#!/usr/bin/env bash
# The HTML report of a sweep (three models, one of them crashing) opens in
# headless Chromium: the screenshot is not blank, and the rendered DOM has one
# summary row and one memory-timeline SVG per model. The file is
# self-contained: no scripts, stylesheets, fonts or images from elsewhere.
set -euo pipefail
: "${VLM_BUILD_DIR:?}" "${VLM_SOURCE_DIR:?}"
runner="$VLM_BUILD_DIR/test_tester_run" # the vlmtest commands on a test backend
tmp=$(mktemp -d /tmp/vlmtest-html-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

command -v chromium >/dev/null || fail "chromium is not installed (scripts/deps.sh installs it)"

mkdir -p "$tmp/weights" "$tmp/suite/img"
echo weights > "$tmp/weights/model.safetensors"
printf 'png' > "$tmp/suite/img/a.png"
cat > "$tmp/models.json" <<'JSON'
{"models": [
  {"name": "alpha", "source": "weights"},
  {"name": "beta-wrong", "source": "weights", "options": {"num_crops": 4}},
  {"name": "gamma <crash>", "source": "weights", "options": {"test_crash": "abort"}}
]}
JSON
cat > "$tmp/suite/suite.json" <<'JSON'
{"name": "html", "description": "report fixture"}
JSON
cat > "$tmp/suite/cases.jsonl" <<'JSON'
{"id": "one", "images": ["img/a.png"], "prompt": "SLEEP:0.2 ECHO:a cat", "expected": "cat", "scorer": "contains"}
{"id": "two", "prompt": "SLEEP:0.2 ECHO:B", "expected": "B", "scorer": "choice"}
{"id": "three", "prompt": "SLEEP:0.2 ECHO:4 apples", "expected": 4, "scorer": "number"}
JSON

rc=0
"$runner" --as-cli run --models "$tmp/models.json" --suite "$tmp/suite" --out "$tmp/out" \
  --run-id r1 > "$tmp/run.log" 2>&1 || rc=$?
[ "$rc" -eq 1 ] || { cat "$tmp/run.log"; fail "run exit status $rc, expected 1 (failures)"; }
html="$tmp/out/r1/report.html"
[ -s "$html" ] || fail "no report.html"

# Self-contained: nothing fetched from elsewhere (the SVG namespace is a name, not a fetch).
if grep -Eio '<script|<link|<img|<iframe|src=|@import|url\(|@font-face' "$html"; then
  fail "report.html refers to external resources"
fi
if grep -Eo 'https?://[^" ]+' "$html" | grep -v '^http://www.w3.org/2000/svg$'; then
  fail "report.html contains URLs"
fi

chrome=(chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run
  --disable-background-networking --disable-component-update --disable-sync
  --user-data-dir="$tmp/profile" --window-size=1280,2000)
timeout 120 "${chrome[@]}" --screenshot="$tmp/shot.png" "file://$html" > "$tmp/chrome.log" 2>&1 ||
  { cat "$tmp/chrome.log"; fail "chromium screenshot failed"; }
[ -s "$tmp/shot.png" ] || { cat "$tmp/chrome.log"; fail "no screenshot"; }
timeout 120 "${chrome[@]}" --dump-dom "file://$html" > "$tmp/dom.html" 2> "$tmp/chrome2.log" ||
  { cat "$tmp/chrome2.log"; fail "chromium --dump-dom failed"; }

read -r w h colours nonwhite < <(python3 "$VLM_SOURCE_DIR/tests/cli/png_stats.py" "$tmp/shot.png")
echo "screenshot ${w}x${h}: $colours colours, non-white fraction $nonwhite"
[ "$w" -eq 1280 ] || fail "screenshot width $w"
[ "$colours" -ge 8 ] || fail "screenshot looks blank ($colours colours)"
python3 -c "import sys; sys.exit(0 if float('$nonwhite') > 0.01 else 1)" ||
  fail "screenshot is almost all white ($nonwhite)"

# The DOM as the browser built it: one summary row and one timeline per model.
rows=$(grep -o '<tr class="model-row[^"]*" data-model="[^"]*"' "$tmp/dom.html" | wc -l)
[ "$rows" -eq 3 ] || fail "$rows summary rows in the DOM, expected 3"
svgs=$(grep -o '<svg class="timeline" data-model="[^"]*"' "$tmp/dom.html" | wc -l)
[ "$svgs" -eq 3 ] || fail "$svgs timeline SVGs in the DOM, expected 3"
for m in alpha beta-wrong 'gamma &lt;crash&gt;'; do
  grep -q "<svg class=\"timeline\" data-model=\"$m\"" "$tmp/dom.html" || fail "no timeline for $m"
  grep -q "<tr class=\"model-row[^\"]*\" data-model=\"$m\"" "$tmp/dom.html" || fail "no row for $m"
done
# The crashed model's row is marked, and its timeline has an RSS line.
grep -q '<tr class="model-row bad" data-model="gamma &lt;crash&gt;"' "$tmp/dom.html" ||
  fail "crashed model row not marked"
[ "$(grep -o '<polyline class="rss"' "$tmp/dom.html" | wc -l)" -eq 3 ] || fail "missing RSS lines"
grep -q 'class="chart pass-rate"' "$tmp/dom.html" || fail "no pass-rate chart"
grep -q 'class="chart latency"' "$tmp/dom.html" || fail "no latency chart"
grep -q 'class="chart memory"' "$tmp/dom.html" || fail "no memory chart"
echo "PASS"
