#!/usr/bin/env bash
# The tester on the real engine (the libvlm worker backend) with the tiny
# fixture models of tests/data/tiny (f32 and bf16):
#   - a model whose worker aborts (test_crash) is recorded as crashed, its
#     cases as not_run, and the next model still runs all its cases;
#   - memcheck passes on tiny/f32 and bf16 and fails (exit 1) on a deliberate leak;
#   - a context suite keeps one session per conversation (every turn answered);
#   - --resume after kill -9 of the parent: every case exactly once, and the
#     same answers as an uninterrupted run (greedy decoding is deterministic);
#   - shards 1/3 + 2/3 + 3/3 merged give the unsharded run's case ids and answers;
#   - the HTML report of these real results opens in headless Chromium with
#     one summary row and one memory timeline per model.
set -euo pipefail
# What is checked here is the machine without a GPU (the CI machine's case):
# on the GPU machine the device is hidden, so the answers stay the same.
export CUDA_VISIBLE_DEVICES=""
: "${VLM_BIN:?}" "${VLM_SOURCE_DIR:?}"
src=$VLM_SOURCE_DIR
tmp=$(mktemp -d /tmp/vlmtest-engine-XXXXXX)
bgpid=
cleanup() {
  [ -z "$bgpid" ] || kill -9 "$bgpid" 2> /dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
cd "$tmp"

cat > models.json <<JSON
{"models": [
  {"name": "tiny-crash", "source": "$src/tests/data/tiny/bf16", "options": {"test_crash": "abort"}},
  {"name": "Tiny-F32", "source": "$src/tests/data/tiny/f32", "options": {"n_threads": 1}},
  {"name": "tiny-bf16", "source": "$src/tests/data/tiny/bf16", "options": {"n_threads": 1}},
  {"name": "tiny-leak", "source": "$src/tests/data/tiny/f32",
   "options": {"test_crash": "leak_bytes", "test_leak_bytes": "96M"}}
]}
JSON

# --- records: case_id -> answer (or status) for one model, from results.jsonl files.
answers() { # FILE... -> "model suite case_id status answer" lines, sorted
  python3 - "$@" <<'PY'
import json, sys
seen = {}
for path in sys.argv[1:]:
    for line in open(path):
        r = json.loads(line)
        if r.get("type") == "case":
            seen.setdefault((r["model"], r["suite"], r["case_id"]), []).append(
                (r["status"], r.get("answer", "")))
for k in sorted(seen):
    for st, a in seen[k]:
        print("\t".join(k), st, json.dumps(a), sep="\t")
PY
}

# --- 1. a crashing model, then good ones
rc=0
"$VLM_BIN" run tiny-crash tiny-f32 --models models.json --suite "$src/suites/colors" \
  --out res --run-id crash --device cpu > crash.log 2>&1 || rc=$?
[ "$rc" -eq 1 ] || { cat crash.log; fail "run with a crashing model: exit $rc, expected 1"; }
python3 - res/crash/results.jsonl <<'PY' || { cat crash.log; fail "crash run records"; }
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
models = {r["model"]: r for r in recs if r["type"] == "model"}
cases = [r for r in recs if r["type"] == "case"]
crash = models["tiny-crash"]
assert crash["outcome"] == "crashed", crash["outcome"]
assert "signal 6" in crash["detail"], crash["detail"]
assert crash.get("mem_after_load", 0) > 0
good = models["Tiny-F32"]
assert good["outcome"] == "ok", good
cfg = good["config"]
assert cfg["backend"] == "libvlm" and cfg["arch"] == "Phi3VForCausalLM" and cfg["dtype"] == "f32", cfg
assert cfg["n_threads"] == 1 and cfg["num_crops"] == 4 and cfg["weight_bytes"] > 0, cfg
assert good["mem_after_load"] > good["mem_before_load"]
assert good["mem_peak"] >= good["mem_after_load"]
crashed = [c for c in cases if c["model"] == "tiny-crash"]
assert len(crashed) == 9 and all(c["status"] in ("not_run", "crashed") for c in crashed)
ran = [c for c in cases if c["model"] == "Tiny-F32"]
assert len(ran) == 9, len(ran)
for c in ran:
    assert c["status"] == "ok", c
    assert c["tokens_out"] > 0 and c["tokens_in"] > c["image_tokens"] > 0, c
    assert c["image_ms"] > 0 and c["prefill_ms"] > 0 and c["total_ms"] > 0, c
    # Per-case memory: the peak RSS of the case window, and the accounted
    # peak by category (the KV cache and the activations are accounted).
    assert c["peak_rss"] > 0 and c["peak_accounted"] > 0, c
    assert sum(c["peak_cat"].values()) >= c["peak_accounted"] > 0, c["peak_cat"]
    assert c["peak_cat"]["kv_cache"] > 0, c["peak_cat"]
# Where each part ran (--device cpu: everything on the CPU), device memory
# per phase (0 without a GPU), no fallback.
assert good["options"]["device"] == "cpu", good["options"]
assert cfg["device"] == "cpu" and cfg["gpu_layers"] == 0 and cfg["vision_device"] == "cpu", cfg
assert cfg["plan"]["gpu_estimated_bytes"] == 0 and cfg["plan"]["first_rung"] == "cpu native", cfg
assert good["gpu_peak_load"] == 0 and good["gpu_used_load"] == 0, good
for c in ran:
    pl = c["placement"]
    assert pl["device"] == "cpu" and pl["gpu_layers"] == 0 and pl["n_layers"] == 2, pl
    assert pl["head_device"] == "cpu" and pl["vision_device"] == "cpu", pl
    assert pl["precision"] == "native" and pl["rung"] == "cpu native", pl
    for k in ("peak_accounted", "peak_device"):
        g = c["gpu"][k]
        assert set(g) == {"load", "image", "prefill", "decode", "case"}, g
        assert all(v == 0 for v in g.values()), g
    assert c["fallbacks"] == [], c["fallbacks"]
# The timeline draws each case with its peak bytes per category.
starts = [e for e in good["timeline"]["events"] if e["ev"] == "case_start"]
assert len(starts) == 9 and all(e.get("cat_is_peak") for e in starts), starts[:2]
assert all(sum(e["cat"].values()) > 0 for e in starts), starts[:2]
PY

# The summary, the Markdown table and the HTML say where it ran.
python3 - res/crash <<'PY' || fail "device fields in the reports"
import json, sys, os
d = sys.argv[1]
rep = json.load(open(os.path.join(d, "report.json")))
m = {x["model"]: x for x in rep["models"]}["Tiny-F32"]
assert m["device"] == "cpu" and m["max_case_gpu_peak"] == 0 and m["max_case_gpu_used"] == 0, m
assert m["fallbacks"] == 0, m
md = open(os.path.join(d, "report.md")).read()
assert "| device | GPU peak | GPU in use | fallbacks |" in md
row = [l for l in md.splitlines() if l.startswith("| Tiny-F32 |")][0]
assert row.endswith("| cpu | 0 B | 0 B | 0 |"), row
html = open(os.path.join(d, "report.html")).read()
assert "<th>GPU peak</th>" in html and "Device per case" in html
# 9 cases of Tiny-F32 and the crashed model's 9 (never placed): no row
assert "18 case(s) ran on the CPU without a fallback (device peak 0)" in html
assert 'class="device-case"' not in html
PY

# --device cuda without a GPU: the load fails with a clear message
# and the run exits 1; a bad --device or --gpu-mem-budget is a usage error.
rc=0
"$VLM_BIN" run tiny-f32 --models models.json --suite "$src/suites/colors" --out res \
  --run-id cuda --device cuda > cuda.log 2>&1 || rc=$?
[ "$rc" -eq 1 ] || { cat cuda.log; fail "run --device cuda: exit $rc, expected 1"; }
python3 - res/cuda/results.jsonl <<'PY' || { cat cuda.log; fail "run --device cuda records"; }
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
m = [r for r in recs if r["type"] == "model"][0]
# no CUDA backend built, or built and no device visible
assert m["outcome"] == "load_error", m
assert "no CUDA backend" in m["detail"] or "no GPU: " in m["detail"], m
assert m["options"]["device"] == "cuda", m["options"]
PY
for bad in "--device tpu" "--gpu-mem-budget lots" "--gpu-mem-budget 0"; do
  rc=0
  # shellcheck disable=SC2086
  "$VLM_BIN" run tiny-f32 --models models.json --out res $bad > bad.log 2>&1 || rc=$?
  [ "$rc" -eq 2 ] || { cat bad.log; fail "run $bad: exit $rc, expected 2"; }
done

# --- 2. memcheck
for m in tiny-f32 TINY-BF16; do
  "$VLM_BIN" memcheck "$m" --models models.json > mc.log 2>&1 || { cat mc.log; fail "memcheck $m"; }
  grep -q '^PASS' mc.log || { cat mc.log; fail "memcheck $m: no PASS"; }
  grep -q '"arch":"Phi3VForCausalLM"' mc.log || { cat mc.log; fail "memcheck $m: no config"; }
done
rc=0
"$VLM_BIN" memcheck tiny-leak --models models.json > mc.log 2>&1 || rc=$?
[ "$rc" -eq 1 ] || { cat mc.log; fail "memcheck of a leaking worker: exit $rc, expected 1"; }
grep -q '^FAIL' mc.log || { cat mc.log; fail "memcheck tiny-leak: no FAIL"; }

# --- 3. a context suite: three turns in one session
"$VLM_BIN" context tiny-bf16 --models models.json --suite "$src/suites/colors-context" \
  --out res --run-id ctx > ctx.log 2>&1 || [ $? -eq 1 ] || { cat ctx.log; fail "context run"; }
python3 - res/ctx/results.jsonl <<'PY' || fail "context records"
import json, sys
cases = [json.loads(l) for l in open(sys.argv[1])]
cases = [c for c in cases if c["type"] == "case"]
assert len(cases) == 2, len(cases)
for c in cases:
    assert c["status"] == "ok", c
    assert len(c["turns"]) == 3 and c["turns_scored"] == 2, c
    assert all(t["tokens_out"] > 0 for t in c["turns"]), c["turns"]
    # Later turns prefill only their new tokens: the history stays in the KV cache.
    t = c["turns"]
    assert t[2]["tokens_in"] < t[0]["tokens_in"] + t[1]["tokens_in"], t
PY

# --- 4. a longer suite for resume and shards: 27 cases over the colour images
mkdir -p long
ln -s "$src/suites/colors/img" long/img
echo '{"name": "long", "defaults": {"max_tokens": 6, "temperature": 0}}' > long/suite.json
for i in $(seq 1 9); do
  for c in red blue red_green; do
    echo "{\"id\": \"c$i-$c\", \"images\": [\"img/$c.png\"], \"prompt\": \"Colour $i?\", \"expected\": \"$c\", \"scorer\": \"contains\"}"
  done
done > long/cases.jsonl

"$VLM_BIN" run tiny-f32 tiny-bf16 --models models.json --suite long --out res --run-id full \
  > full.log 2>&1 || [ $? -eq 1 ] || { cat full.log; fail "full run"; }
answers res/full/results.jsonl > full.txt
[ "$(wc -l < full.txt)" -eq 54 ] || { cat full.txt; fail "full run: $(wc -l < full.txt) cases, expected 54"; }
if grep -vq $'\tok\t' full.txt; then cat full.txt; fail "full run: a case did not run"; fi

# Kill the parent (kill -9: no cleanup of any kind) once a few cases are in.
"$VLM_BIN" run tiny-f32 tiny-bf16 --models models.json --suite long --out res --run-id kill \
  > kill.log 2>&1 &
bgpid=$!
for _ in $(seq 1 600); do
  n=$(grep -c '"type":"case"' res/kill/results.jsonl 2> /dev/null || true)
  [ "${n:-0}" -ge 5 ] && break
  sleep 0.05
done
kill -9 "$bgpid"
wait "$bgpid" 2> /dev/null || true
bgpid=
before=$(grep -c '"type":"case"' res/kill/results.jsonl)
[ "$before" -ge 5 ] && [ "$before" -lt 54 ] || fail "kill: $before cases recorded before the kill"
"$VLM_BIN" run tiny-f32 tiny-bf16 --models models.json --suite long --out res --resume kill \
  > resume.log 2>&1 || [ $? -eq 1 ] || { cat resume.log; fail "resume"; }
grep -q "$before cases already recorded, $((54 - before)) to go" resume.log ||
  { cat resume.log; fail "resume did not skip the $before recorded cases"; }
answers res/kill/results.jsonl > resumed.txt
diff full.txt resumed.txt || fail "resumed run differs from the uninterrupted one (duplicates, losses or answers)"

# --- 5. shards
for k in 1 2 3; do
  "$VLM_BIN" run tiny-f32 tiny-bf16 --models models.json --suite long --out res \
    --run-id "s$k" --shard "$k/3" > "s$k.log" 2>&1 || [ $? -eq 1 ] || { cat "s$k.log"; fail "shard $k"; }
  n=$(grep -c '"type":"case"' "res/s$k/results.jsonl")
  [ "$n" -gt 0 ] && [ "$n" -lt 54 ] || fail "shard $k/3 ran $n cases"
done
"$VLM_BIN" merge res/s1 res/s2 res/s3 --out merged > merge.log 2>&1 || [ $? -eq 1 ] ||
  { cat merge.log; fail "merge"; }
answers merged/results.jsonl > merged.txt
diff full.txt merged.txt || fail "merged shards differ from the unsharded run"
[ -s merged/report.html ] && [ -s merged/report.md ] || fail "merge wrote no reports"

# --- 6. the HTML report of real results (the crash run: two models) in Chromium
html=$tmp/res/crash/report.html
command -v chromium > /dev/null || fail "chromium is not installed (scripts/deps.sh installs it)"
chrome=(chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run
  --disable-background-networking --disable-component-update --disable-sync
  --user-data-dir="$tmp/profile" --window-size=1280,2000)
timeout 120 "${chrome[@]}" --screenshot="$tmp/shot.png" "file://$html" > chrome.log 2>&1 ||
  { cat chrome.log; fail "chromium screenshot failed"; }
timeout 120 "${chrome[@]}" --dump-dom "file://$html" > dom.html 2> chrome2.log ||
  { cat chrome2.log; fail "chromium --dump-dom failed"; }
read -r w h colours nonwhite < <(python3 "$src/tests/cli/png_stats.py" shot.png)
echo "screenshot ${w}x${h}: $colours colours, non-white fraction $nonwhite"
[ "$colours" -ge 8 ] || fail "screenshot looks blank ($colours colours)"
python3 -c "import sys; sys.exit(0 if float('$nonwhite') > 0.01 else 1)" ||
  fail "screenshot is almost all white ($nonwhite)"
for m in tiny-crash Tiny-F32; do
  grep -q "<tr class=\"model-row[^\"]*\" data-model=\"$m\"" dom.html || fail "no summary row for $m"
  grep -q "<svg class=\"timeline\" data-model=\"$m\"" dom.html || fail "no timeline for $m"
done
[ "$(grep -o '<tr class="model-row' dom.html | wc -l)" -eq 2 ] || fail "summary rows != 2"
grep -q '<tr class="model-row bad" data-model="tiny-crash"' dom.html || fail "crash row not marked"
echo PASS
