#!/usr/bin/env bash
# The demo model in C against PyTorch (issue 8's acceptance), on the whole of
# suites/smoke (130 cases) and suites/context (42 conversations, 130 turns):
#   - the greedy answers of `vlmtest run` / `vlmtest context` equal those of
#     reference/train_demo.py evaluate() (float32 compute from the bf16
#     weights, the reference preprocessing, the history kept per turn as the C
#     session keeps it) in tests/data/demo/pytorch_answers.jsonl, every turn,
#     on at least 99% of the cases;
#   - the pass counts (cases, and turns for context) are within one of
#     PyTorch's (tests/data/demo/eval_stats.json).
# The full suites, not a sample: about 3 minutes of 2 cores (docs/tester.md).
# VLM_DEMO_DEVICE=cuda runs the C side on the GPU (tests/gpu/run.sh does;
# ctest here runs it on the CPU).
set -euo pipefail
: "${VLM_BIN:?}" "${VLM_SOURCE_DIR:?}"
src=$VLM_SOURCE_DIR
tmp=$(mktemp -d /tmp/vlmtest-demo-eq-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
cd "$tmp"

cat > models.json <<JSON
{"models": [{"name": "demo-phi3v", "source": "$src/models/demo", "options": {"device": "${VLM_DEMO_DEVICE:-cpu}"}}]}
JSON
# Exit status 1 is "some case failed" (the demo model is partly trained).
rc=0
"$VLM_BIN" run --models models.json --suite "$src/suites/smoke" --out res --run-id smoke \
  > smoke.log 2>&1 || rc=$?
[ "$rc" -le 1 ] || { tail -20 smoke.log; fail "vlmtest run: exit $rc"; }
rc=0
"$VLM_BIN" context --models models.json --suite "$src/suites/context" --out res --run-id context \
  > context.log 2>&1 || rc=$?
[ "$rc" -le 1 ] || { tail -20 context.log; fail "vlmtest context: exit $rc"; }

python3 - "$src/tests/data/demo" res/smoke/results.jsonl res/context/results.jsonl <<'PY'
import json, sys
ref_dir, *paths = sys.argv[1:]
ref = {}
for line in open(ref_dir + "/pytorch_answers.jsonl"):
    r = json.loads(line)
    ref[(r["suite"], r["id"])] = r
stats = json.load(open(ref_dir + "/eval_stats.json"))

got = {}
for path in paths:
    for line in open(path):
        r = json.loads(line)
        if r["type"] == "case":
            key = (r["suite"], r["case_id"])
            assert key not in got, "case recorded twice: %s" % (key,)
            got[key] = r
missing = sorted(set(ref) - set(got))
assert not missing, "cases PyTorch answered that C did not run: %s" % missing[:5]

same_cases = 0
diffs = []
c_stats = {}
for key, p in sorted(ref.items()):
    c = got[key]
    assert c["status"] == "ok", "%s: %s %s" % (key, c["status"], c.get("reason"))
    c_turns = c["turns"] if c.get("turns") else [c]
    c_answers = [t["answer"] for t in c_turns]
    p_answers = [t["answer"] for t in p["turns"]]
    if c_answers == p_answers:
        same_cases += 1
    else:
        diffs.append((key, c_answers, p_answers))
    s = c_stats.setdefault(key[0], {"cases": 0, "passed": 0, "turns": 0, "turns_passed": 0})
    s["cases"] += 1
    s["passed"] += bool(c["passed"])
    s["turns"] += c["turns_scored"]
    s["turns_passed"] += c["turns_passed"]

n = len(ref)
print("same greedy answers (every turn): %d / %d cases" % (same_cases, n))
for key, ca, pa in diffs[:10]:
    print("  differs %s/%s: C %s, PyTorch %s" % (key[0], key[1], json.dumps(ca), json.dumps(pa)))
for suite in sorted(stats):
    print("%-8s C %s   PyTorch %s" % (suite, json.dumps(c_stats[suite]), json.dumps(stats[suite])))
ok = same_cases >= 0.99 * n
for suite, ps in stats.items():
    cs = c_stats[suite]
    assert cs["cases"] == ps["cases"] and cs["turns"] == ps["turns"], (suite, cs, ps)
    if abs(cs["passed"] - ps["passed"]) > 1:
        print("FAIL: %s: C passes %d cases, PyTorch %d" % (suite, cs["passed"], ps["passed"]))
        ok = False
    if abs(cs["turns_passed"] - ps["turns_passed"]) > 1:
        print("FAIL: %s: C passes %d turns, PyTorch %d" % (suite, cs["turns_passed"],
                                                          ps["turns_passed"]))
        ok = False
sys.exit(0 if ok else 1)
PY
echo PASS
