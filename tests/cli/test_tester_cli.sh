#!/usr/bin/env bash
# vlmtest run/context/merge/memcheck as users call them: help, bad arguments,
# and bad input (models file, suites) rejected with clear messages and exit
# status 2 before any model is loaded (no run folder is created).
set -euo pipefail
: "${VLM_BIN:?}"
tmp=$(mktemp -d /tmp/vlmtest-cli-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# expect STATUS PATTERN CMD...: exit status and a message on stderr.
expect() {
  local want=$1 pattern=$2
  shift 2
  local rc=0
  "$@" > "$tmp/out" 2> "$tmp/err" || rc=$?
  [ "$rc" -eq "$want" ] || { cat "$tmp/err"; fail "$* -> exit $rc, expected $want"; }
  grep -q -- "$pattern" "$tmp/err" "$tmp/out" || { cat "$tmp/err"; fail "$*: no '$pattern'"; }
}

for c in run context merge memcheck; do
  "$VLM_BIN" "$c" --help | grep -q "usage: vlmtest $c" || fail "$c --help"
done
"$VLM_BIN" --help | grep -q "memcheck" || fail "memcheck not listed"

mkdir -p "$tmp/w" "$tmp/s" "$tmp/ctx"
echo x > "$tmp/w/model.safetensors"
cat > "$tmp/models.json" <<'JSON'
{"models": [{"name": "Tiny-Model", "source": "w", "options": {"device": "cpu"}}]}
JSON
echo '{"name": "s"}' > "$tmp/s/suite.json"
echo '{"id": "a", "prompt": "hi", "expected": "hello", "scorer": "contains"}' > "$tmp/s/cases.jsonl"
echo '{"name": "ctx", "kind": "context"}' > "$tmp/ctx/suite.json"
echo '{"id": "a", "turns": [{"prompt": "hi", "expected": "x", "scorer": "exact"}]}' > "$tmp/ctx/cases.jsonl"
cd "$tmp"

expect 2 "unknown option --frobnicate" "$VLM_BIN" run --frobnicate
expect 2 "expected K/N" "$VLM_BIN" run --shard 0/4
expect 2 "expected seconds" "$VLM_BIN" run --case-timeout soon
expect 2 "models file not found" "$VLM_BIN" run --models nowhere.json --suite s
expect 2 'no model "other"' "$VLM_BIN" run other --models models.json --suite s
expect 2 "suite directory not found" "$VLM_BIN" run --models models.json --suite nope
expect 2 "use \`vlmtest context\`" "$VLM_BIN" run --models models.json --suite ctx
expect 2 "use \`vlmtest run\`" "$VLM_BIN" context --models models.json --suite s
expect 2 "no suites folder" "$VLM_BIN" run --models models.json

echo '{"models": [{"name": "m", "source": "no/such/dir"}]}' > bad-source.json
expect 2 'source "no/such/dir" not found' "$VLM_BIN" run --models bad-source.json --suite s
echo '{"models": [{"name": "m", "source": "w", "options": {"precision": "f8"}}]}' > bad-opt.json
expect 2 '"precision" must be one of' "$VLM_BIN" run --models bad-opt.json --suite s

mkdir -p bad1 bad2 bad3 bad4 bad5
for d in bad1 bad2 bad3 bad4 bad5; do echo "{\"name\": \"$d\"}" > $d/suite.json; done
printf '{"id": "a", "prompt": "x", "expected": "y", "scorer": "exact"}\n{"id": "b",\n' > bad1/cases.jsonl
echo '{"id": "a", "images": ["gone.png"], "prompt": "x", "expected": "y", "scorer": "exact"}' > bad2/cases.jsonl
echo '{"id": "a", "prompt": "x", "expected": "y", "scorer": "similar"}' > bad3/cases.jsonl
printf '{"id": "a", "prompt": "x", "expected": "y", "scorer": "exact"}\n{"id": "a", "prompt": "x", "expected": "y", "scorer": "exact"}\n' > bad4/cases.jsonl
: > bad5/cases.jsonl
expect 2 "bad1/cases.jsonl:2: malformed JSON" "$VLM_BIN" run --models models.json --suite bad1
expect 2 'bad2/cases.jsonl:1: image "gone.png" not found' "$VLM_BIN" run --models models.json --suite bad2
expect 2 'bad3/cases.jsonl:1: unknown scorer "similar"' "$VLM_BIN" run --models models.json --suite bad3
expect 2 'bad4/cases.jsonl:2: duplicate case id "a"' "$VLM_BIN" run --models models.json --suite bad4
expect 2 "bad5/cases.jsonl: the suite has no cases" "$VLM_BIN" run --models models.json --suite bad5
[ ! -e results ] || fail "a run folder was created for bad input"

# Names match without regard to case; the suites default to suites/. The
# source is no model, so the worker's load fails: recorded, exit status 1.
mkdir -p suites && cp -r s suites/s && cp -r ctx suites/ctx
rc=0
"$VLM_BIN" run tiny-model --models models.json --out res --run-id r1 --json > run.json 2> run.err || rc=$?
[ "$rc" -eq 1 ] || { cat run.err; fail "run with a failing load: exit $rc"; }
grep -q '"outcome":[[:space:]]*"load_error"' run.json || fail "--json summary lacks the load_error"
grep -q '"type":"case".*"status":"error"' res/r1/results.jsonl || fail "case not recorded as error"
grep -q '"type":"model".*"outcome":"load_error"' res/r1/results.jsonl || fail "model not recorded"
[ -s res/r1/report.html ] && [ -s res/r1/report.md ] && [ -s res/r1/run.json ] || fail "reports missing"
# Resuming the finished run runs nothing more.
"$VLM_BIN" run tiny-model --models models.json --out res --resume r1 > /dev/null 2> resume.err || true
grep -q "1 cases already recorded, 0 to go" resume.err || { cat resume.err; fail "resume"; }
[ "$(grep -c '"type":"case"' res/r1/results.jsonl)" -eq 1 ] || fail "resume duplicated a case"
expect 2 "already exists" "$VLM_BIN" run --models models.json --out res --run-id r1
expect 2 "no run folder" "$VLM_BIN" run --models models.json --out res --resume r9

expect 2 "usage: vlmtest merge" "$VLM_BIN" merge
expect 2 "no model \"nope\"" "$VLM_BIN" memcheck nope --models models.json
expect 2 "results.jsonl" "$VLM_BIN" merge does-not-exist --out merged
echo PASS
