#!/usr/bin/env bash
# vlmtest generate / eval-logits / chat on the tiny reference models
# (tests/data/tiny, fixtures from reference/phi3v_ref.py): greedy ids and
# input ids as transformers gave them, the output files' shapes, a chat
# over a pipe, and clear errors.
set -euo pipefail
: "${VLM_BIN:?}" "${VLM_SOURCE_DIR:?}"
tmp=$(mktemp -d /tmp/vlmtest-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
tiny="$VLM_SOURCE_DIR/tests/data/tiny"
ref="$tiny/ref/f32"
py() { /usr/bin/env python3 "$@"; }
field() { # FILE KEY -> the value as JSON
  py -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))[sys.argv[2]]))' "$1" "$2"
}
fail() { echo "FAIL: $*" >&2; exit 1; }

# --- generate --json with the reference's raw prompt: greedy ids ----------
for c in text_only one_image; do
  prompt=$(py -c 'import json,sys; print(json.load(open(sys.argv[1]))["prompt"], end="")' "$ref/$c.json")
  args=()
  for img in $(py -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["images"]))' "$ref/$c.json"); do
    args+=(--image "$tiny/images/$img")
  done
  "$VLM_BIN" generate -m "$tiny/f32" "${args[@]}" --raw-prompt "$prompt" --max-tokens 64 \
    --ignore-eos --threads 2 --json > "$tmp/$c.json"
  [ "$(field "$tmp/$c.json" ids)" = "$(field "$ref/$c.json" greedy_ids)" ] || fail "$c: greedy ids"
  [ "$(field "$tmp/$c.json" tokens_in)" = "$(field "$ref/$c.json" n_tokens)" ] || fail "$c: tokens_in"
  [ "$(field "$tmp/$c.json" tokens_out)" = 64 ] || fail "$c: tokens_out"
  [ "$(field "$tmp/$c.json" stop_reason)" = '"max_tokens"' ] || fail "$c: stop_reason"
  py - "$tmp/$c.json" <<'PY'
import json, sys
o = json.load(open(sys.argv[1]))
t = o["timings"]
assert set(t) >= {"image_ms", "prefill_ms", "first_token_ms", "decode_tokens_per_s"}, t
assert t["prefill_ms"] > 0 and t["first_token_ms"] >= t["prefill_ms"] and t["decode_tokens_per_s"] > 0
assert isinstance(o["answer"], str) and len(o["answer"]) > 0
PY
done
[ "$(field "$tmp/one_image.json" image_tokens)" = 457 ] || fail "one_image: image_tokens"

# --- the streamed text is the --json answer ---------------------------------
"$VLM_BIN" generate -m "$tiny/f32" -p "What is the capital of France?" --max-tokens 20 \
  --json > "$tmp/p.json"
"$VLM_BIN" generate -m "$tiny/f32" -p "What is the capital of France?" --max-tokens 20 \
  > "$tmp/p.txt"
py - "$tmp/p.json" "$tmp/p.txt" <<'PY'
import json, sys
a = json.load(open(sys.argv[1]))["answer"]
t = open(sys.argv[2], encoding="utf-8", errors="surrogateescape").read()
assert t == a + "\n", (t, a)
PY

# --- eval-logits: shapes and ids --------------------------------------------
prompt=$(py -c 'import json,sys; print(json.load(open(sys.argv[1]))["prompt"], end="")' "$ref/one_image.json")
"$VLM_BIN" eval-logits -m "$tiny/f32" --image "$tiny/images/wide.png" --raw-prompt "$prompt" \
  --out "$tmp/el"
n=$(field "$ref/one_image.json" n_tokens)
[ "$(stat -c %s "$tmp/el.f32")" = $((n * 32064 * 4)) ] || fail "eval-logits: file size"
[ "$(field "$tmp/el.json" ids)" = "$(field "$ref/one_image.json" input_ids)" ] || fail "eval-logits ids"
[ "$(field "$tmp/el.json" image_sizes)" = "$(field "$ref/one_image.json" image_sizes)" ] || fail "image_sizes"
[ "$(field "$tmp/el.json" num_img_tokens)" = "$(field "$ref/one_image.json" num_img_tokens)" ] || fail "num_img_tokens"
[ "$(field "$tmp/el.json" vocab)" = 32064 ] || fail "vocab"
# the logits at the reference's columns (every position) within 1e-4
py - "$tmp/el.f32" "$ref/one_image.logits_cols.f32" "$tiny/logit_cols.json" "$n" <<'PY'
import json, struct, sys
n, V = int(sys.argv[4]), 32064
cols = json.load(open(sys.argv[3]))
raw = open(sys.argv[1], "rb").read()
ref = struct.unpack("<%df" % (n * len(cols)), open(sys.argv[2], "rb").read())
worst = 0.0
for t in range(n):
    row = struct.unpack_from("<%df" % V, raw, t * V * 4)
    for j, c in enumerate(cols):
        worst = max(worst, abs(row[c] - ref[t * len(cols) + j]))
assert worst <= 1e-4, worst
PY
# -p wraps one user turn: the same ids as the raw text_only prompt
"$VLM_BIN" eval-logits -m "$tiny/f32" -p "What is the capital of France?" --out "$tmp/el2"
[ "$(field "$tmp/el2.json" ids)" = "$(field "$ref/text_only.json" input_ids)" ] || fail "-p ids"

# --- chat over a pipe: turn 1 answers as generate -p does; turns go on ------
"$VLM_BIN" generate -m "$tiny/f32" --image "$tiny/images/portrait.png" -p "What shape is this?" \
  --max-tokens 8 --json > "$tmp/g.json"
printf '/image %s\nWhat shape is this?\nAnd what colour is it?\n/reset\nHello\n/quit\nnot read\n' \
  "$tiny/images/portrait.png" | "$VLM_BIN" chat -m "$tiny/f32" --max-tokens 8 > "$tmp/chat.txt"
py - "$tmp/g.json" "$tmp/chat.txt" <<'PY'
import json, sys
a = json.load(open(sys.argv[1]))["answer"]
out = open(sys.argv[2], encoding="utf-8", errors="surrogateescape").read()
turns = out.split("\n\n")
assert out.startswith(a + "\n\n"), (out, a)
assert "[reset]" in out
assert out.endswith("\n\n")
PY
# an unreadable image is reported and the chat goes on
printf '/image %s/nope.png\nHi\n' "$tmp" | "$VLM_BIN" chat -m "$tiny/f32" --max-tokens 2 \
  > "$tmp/chat2.txt" 2> "$tmp/chat2.err"
grep -q "nope.png" "$tmp/chat2.err" || fail "chat: missing image not reported"
[ -s "$tmp/chat2.txt" ] || fail "chat: no answer after a bad /image"

# --- errors: a message, a non-zero exit, no crash ----------------------------
expect_fail() { # PATTERN CMD...
  local pat=$1
  shift
  local rc=0
  "$@" > "$tmp/out" 2> "$tmp/err" || rc=$?
  [ "$rc" -ne 0 ] || fail "$* succeeded"
  [ "$rc" -lt 128 ] || fail "$* crashed (rc $rc)"
  grep -q -- "$pat" "$tmp/err" || { cat "$tmp/err" >&2; fail "$*: no '$pat' in the message"; }
}
expect_fail "no-such-model" "$VLM_BIN" generate -m "$tmp/no-such-model" -p hi
expect_fail "exactly one" "$VLM_BIN" generate -m "$tiny/f32"
expect_fail "unknown option" "$VLM_BIN" generate -m "$tiny/f32" -p hi --bogus
expect_fail "max-tokens" "$VLM_BIN" generate -m "$tiny/f32" -p hi --max-tokens -3
expect_fail "image" "$VLM_BIN" generate -m "$tiny/f32" --raw-prompt "<|user|>\n<|image_1|>\nhi"
expect_fail "nope.png" "$VLM_BIN" generate -m "$tiny/f32" --image "$tmp/nope.png" -p hi
expect_fail "context" "$VLM_BIN" generate -m "$tiny/f32" --ctx 16 -p "$(printf 'word %.0s' {1..40})"
expect_fail "out" "$VLM_BIN" eval-logits -m "$tiny/f32" -p hi
echo PASS
