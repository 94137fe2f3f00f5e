#!/usr/bin/env bash
# vlmtest tokenize: line protocol, golden ids (shared/ golden file), decode,
# bad input and usage errors.
set -euo pipefail
B=${VLM_BIN:?}
D=${VLM_SOURCE_DIR:?}/tests/data/tokenizer/phi3
fail() { echo "FAIL: $*" >&2; exit 1; }
expect() { # expect NAME GOT WANT
    [[ "$2" == "$3" ]] || fail "$1: got '$2' want '$3'"
}

# golden (tokenization_golden.json, last case): one line, with BOS
got=$(printf 'Ünïcödé → 日本語 😀\n' | "$B" tokenize --tokenizer "$D" --add-special)
expect golden "$got" "[1,7189,29876,30085,29883,9289,29948,10309,29871,30325,30346,30968,29871,243,162,155,131]"

# a file path works as well as the folder; several lines, one array each
got=$(printf '<|assistant|>\n<|end|>\n\n' | "$B" tokenize --tokenizer "$D/tokenizer.json")
expect lines "$got" $'[32001]\n[32007]\n[]'
got=$(printf '\n' | "$B" tokenize --tokenizer "$D" --add-special)
expect empty-line "$got" "[1]"

# lines split on \n only: the \r stays in the line ("\r" is id 30004)
got=$(printf 'a\r\n' | "$B" tokenize --tokenizer "$D")
expect cr "$got" "[263,30004]"
# no final newline: still one line
got=$(printf 'a' | "$B" tokenize --tokenizer "$D")
expect no-newline "$got" "[263]"

# decode (spec §2.1 decoder), with and without special tokens
ids='[1,32010,29871,13,11139,3034,675,278,19810,310,2243,2247,29889,32007,29871,13,32001]'
got=$(echo "$ids" | "$B" tokenize --tokenizer "$D" --decode --skip-special --json)
expect decode-skip "$got" '"\nSummarize the deck of slides. \n"'
got=$(echo "$ids" | "$B" tokenize --tokenizer "$D" --decode --json)
expect decode "$got" '"<s><|user|> \nSummarize the deck of slides.<|end|> \n<|assistant|>"'

# round trip of a line through encode and decode
line='Hello,  wörld! 12.5% — ok'
got=$(printf '%s\n' "$line" | "$B" tokenize --tokenizer "$D" | "$B" tokenize --tokenizer "$D" --decode)
expect roundtrip "$got" "$line"

# invalid UTF-8 and NUL never crash
got=$(printf '\xff\xfe\x00a\xc3\n' | "$B" tokenize --tokenizer "$D")
[[ "$got" == \[*\] ]] || fail "invalid utf-8: got '$got'"

# errors: bad ids line, missing file, usage
if echo '[1, "x"]' | "$B" tokenize --tokenizer "$D" --decode 2>/tmp/tok_err.$$; then
    fail "bad decode input accepted"
fi
grep -q "line 1" /tmp/tok_err.$$ || fail "decode error does not name the line"
set +e
echo x | "$B" tokenize --tokenizer /nonexistent/tok.json 2>/tmp/tok_err.$$
rc=$?
set -e
expect missing-rc "$rc" 1
grep -q "/nonexistent/tok.json" /tmp/tok_err.$$ || fail "missing file not named"
set +e
echo x | "$B" tokenize 2>/dev/null
rc=$?
set -e
expect usage-rc "$rc" 2
rm -f /tmp/tok_err.$$
echo "ok"
