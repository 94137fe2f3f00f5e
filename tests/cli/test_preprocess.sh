#!/usr/bin/env bash
# vlmtest preprocess: the written pixel_values and JSON against the reference
# fixture (tests/data/preprocess/cases.json, from reference/preprocess_ref.py),
# num_crops from preprocessor_config.json, and clear errors.
set -euo pipefail
: "${VLM_BIN:?}" "${VLM_SOURCE_DIR:?}" "${VLM_SHARED_DIR:?}"
tmp=$(mktemp -d /tmp/vlmtest-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
imgs="$VLM_SOURCE_DIR/tests/data/images"
cases="$VLM_SOURCE_DIR/tests/data/preprocess/cases.json"
crop_bytes=$((3 * 336 * 336 * 4))

# expected FIELD for IMAGE and N from the fixture
expected() {
  /usr/bin/env python3 -c '
import json, sys
for c in json.load(open(sys.argv[1]))["cases"]:
    if c["image"] == sys.argv[2] and c["num_crops"] == int(sys.argv[3]):
        v = c[sys.argv[4]]
        print(" ".join(map(str, v)) if isinstance(v, list) else v)
' "$cases" "$1" "$2" "$3"
}

check() { # IMAGE N PREFIX
  local img=$1 n=$2 out=$3
  local shape grid
  shape=$(expected "$img" "$n" shape)
  grid=$(expected "$img" "$n" crop_grid)
  local n_real=$((1 + ${grid% *} * ${grid#* }))
  local entries=${shape%% *}
  [ "$(stat -c %s "$out.f32")" -eq $((entries * crop_bytes)) ] || { echo "FAIL $img N=$n: size"; exit 1; }
  got=$(dd if="$out.f32" bs=1M iflag=count_bytes count=$crop_bytes status=none | sha256sum | cut -d' ' -f1)
  [ "$got" = "$(expected "$img" "$n" global_f32le_sha256)" ] || { echo "FAIL $img N=$n: global"; exit 1; }
  got=$(dd if="$out.f32" bs=1M iflag=skip_bytes,count_bytes skip=$crop_bytes \
          count=$(((n_real - 1) * crop_bytes)) status=none | sha256sum | cut -d' ' -f1)
  [ "$got" = "$(expected "$img" "$n" crops_f32le_sha256)" ] || { echo "FAIL $img N=$n: crops"; exit 1; }
  # padding entries are zeros
  pad=$(((entries - n_real) * crop_bytes))
  if [ $pad -gt 0 ]; then
    [ "$(tail -c $pad "$out.f32" | tr -d '\000' | wc -c)" -eq 0 ] || { echo "FAIL $img N=$n: padding"; exit 1; }
  fi
  /usr/bin/env python3 - "$out.json" "$(expected "$img" "$n" num_img_tokens)" "$(expected "$img" "$n" image_sizes)" "$shape" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
assert j["num_img_tokens"] == int(sys.argv[2]), j
assert j["image_sizes"] == [int(x) for x in sys.argv[3].split()], j
assert j["shape"] == [int(x) for x in sys.argv[4].split()], j
PY
  echo "ok $img N=$n"
}

"$VLM_BIN" preprocess -m none --num-crops 4 --image "$imgs/landscape.jpg" --out "$tmp/a" >/dev/null
check landscape.jpg 4 "$tmp/a"
"$VLM_BIN" preprocess -m none --num-crops 1 --image "$imgs/cmyk.jpg" --out "$tmp/b" >/dev/null
check cmyk.jpg 1 "$tmp/b"
# num_crops from the model's preprocessor_config.json (16 for the 128k model)
model="$VLM_SHARED_DIR/models/phi-3-vision-128k-instruct"
"$VLM_BIN" preprocess -m "$model" --image "$imgs/rgb16.png" --out "$tmp/c" >/dev/null
check rgb16.png 16 "$tmp/c"

# errors: non-zero exit and a message naming what is wrong
fails() { # EXPECTED_TEXT CMD...
  local want=$1; shift
  if "$@" >"$tmp/out" 2>&1; then echo "FAIL: succeeded: $*"; exit 1; fi
  grep -q -- "$want" "$tmp/out" || { echo "FAIL: no '$want' in: $(cat "$tmp/out")"; exit 1; }
}
fails "bomb_png.png" "$VLM_BIN" preprocess -m none --num-crops 4 --image "$VLM_SOURCE_DIR/tests/data/bad/images/bomb_png.png" --out "$tmp/x"
fails "no_such.jpg" "$VLM_BIN" preprocess -m none --num-crops 4 --image "$tmp/no_such.jpg" --out "$tmp/x"
fails "preprocessor_config.json" "$VLM_BIN" preprocess -m "$tmp" --image "$imgs/square.png" --out "$tmp/x"
fails "num-crops" "$VLM_BIN" preprocess -m none --num-crops 0 --image "$imgs/square.png" --out "$tmp/x"
fails "required" "$VLM_BIN" preprocess --image "$imgs/square.png"
fails "over the limit" "$VLM_BIN" preprocess -m none --num-crops 4 --max-pixels 100 --image "$imgs/square.png" --out "$tmp/x"
[ ! -e "$tmp/x.f32" ] || { echo "FAIL: output written after an error"; exit 1; }
echo "all ok"
