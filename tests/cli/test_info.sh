#!/usr/bin/env bash
# vlmtest info on small synthetic checkpoints from build/mkcheckpoint: the
# parameter counts in --json must equal the closed-form counts of spec §8
# (computed here in Python from the dimensions, not by our code); a config
# that implies a tensor the files lack fails naming it; org/name resolves
# through a fake HF cache.
set -euo pipefail
BUILD=${VLM_BUILD_DIR:-$(dirname "$VLM_BIN")}
MK=$BUILD/mkcheckpoint
tmp=$(mktemp -d /tmp/vlmtest-info-XXXXXX)
trap 'rm -rf "$tmp"' EXIT

dims=(--layers 3 --hidden 48 --intermediate 80 --heads 4 --kv-heads 2 --vocab 32064
      --vision-layers 3 --vision-hidden 24 --vision-intermediate 40 --vision-heads 2)
"$MK" --out "$tmp/m" "${dims[@]}" --random 7 >/dev/null
"$VLM_BIN" info "$tmp/m" --json --tensors >"$tmp/info.json"
"$VLM_BIN" info "$tmp/m" >"$tmp/info.txt"
grep -q "architecture:  Phi3VForCausalLM" "$tmp/info.txt"
grep -q "check:         ok" "$tmp/info.txt"

python3 - "$tmp/info.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
L, H, I, nh, nkv, V = 3, 48, 80, 4, 2, 32064
Lv, D, Iv, P, S = 3, 24, 40, 14, 336
hd = H // nh
qkv = (nh + 2 * nkv) * hd
lm = 2 * V * H + H + L * (2 * H + qkv * H + H * H + 2 * I * H + H * I)
glue = 4 * D + 4 * D + H * 4 * D + H + H * H + H
grid = (S // P) ** 2 + 1
vis = D + D * 3 * P * P + grid * D + 2 * D + Lv * (4 * D + 4 * (D * D + D) + Iv * D + Iv + D * Iv + D) + 2 * D
p = j["parameters"]
assert p["language_model"] == lm, (p, lm)
assert p["projector"] == glue, (p, glue)
assert p["vision"] == vis, (p, vis)
assert p["total"] == lm + glue + vis
assert j["tensors"] == 3 + 6 * L + 6 + 5 + 16 * Lv + 2, j["tensors"]
assert j["dtypes"] == {"BF16": {"tensors": j["tensors"], "parameters": p["total"]}}
assert j["valid"] is True
w = j["weight_bytes"]
assert w["f32"] == 4 * p["total"] and w["bf16"] == 2 * p["total"] and w["f16"] == 2 * p["total"]
# Block types as docs/planner.md's policy: weight matrices (rank 2, *.weight,
# not position_embedding) with whole blocks per row; lm_head and the vision
# tower / projector at q8_0 at most; q4_K falls back to q4_0 on 32-rows; the
# rest as stored (bf16). The dims here are 48/80/24/40 wide: no 256-rows.
def q(be, bb):
    t = 0
    for x in j["tensor_list"]:
        n = 1
        for d in x["shape"]:
            n *= d
        s, name = x["shape"], x["name"]
        mat = len(s) == 2 and name.endswith(".weight") and "position_embedding" not in name
        b, e = bb, be
        if mat and (name == "lm_head.weight" or name.startswith("model.vision_embed_tokens.")):
            e, b = 32, 34
        if mat and e == 256 and s[-1] % 256 and s[-1] % 32 == 0:
            e, b = 32, 18
        t += n // e * b if mat and s[-1] % e == 0 else 2 * n
    return t
assert w["q8_0"] == q(32, 34) and w["q4_0"] == q(32, 18) and w["q4_K"] == q(256, 144), w
assert j["tensor_bytes"] == 2 * p["total"]
assert j["bytes_on_disk"] > j["tensor_bytes"]
assert j["files"] == 2
PY

# The shard of every tensor is the published one (index of the 128k model).
python3 - "$tmp/m/model.safetensors.index.json" "$VLM_SHARED_DIR/models/phi-3-vision-128k-instruct/model.safetensors.index.json" <<'PY'
import json, sys
ours = json.load(open(sys.argv[1]))["weight_map"]
real = json.load(open(sys.argv[2]))["weight_map"]
for name, f in ours.items():
    assert real[name] == f, (name, f, real[name])
assert len(ours) > 50
PY

# A config implying a fourth layer the shards lack: exit 1, the tensor named.
sed -i 's/"num_hidden_layers":\s*3/"num_hidden_layers": 4/' "$tmp/m/config.json"
grep -q '"num_hidden_layers": 4' "$tmp/m/config.json"
if "$VLM_BIN" info "$tmp/m" >"$tmp/out" 2>"$tmp/err"; then
    echo "info accepted a checkpoint missing layer 3" >&2; exit 1
fi
grep -q 'model.layers.3.input_layernorm.weight' "$tmp/err"

# org/name through a fake HF cache.
commit=0123456789abcdef0123456789abcdef01234567
mkdir -p "$tmp/hub/models--acme--tiny/refs" "$tmp/hub/models--acme--tiny/snapshots"
echo "$commit" >"$tmp/hub/models--acme--tiny/refs/main"
"$MK" --out "$tmp/hub/models--acme--tiny/snapshots/$commit" --tiny --zero --single >/dev/null
HF_HUB_CACHE=$tmp/hub "$VLM_BIN" info acme/tiny --json >"$tmp/hub.json"
python3 -c "import json,sys; j=json.load(open(sys.argv[1])); assert j['valid'] and j['files']==1, j" "$tmp/hub.json"
if HF_HUB_CACHE=$tmp/hub "$VLM_BIN" info acme/missing 2>"$tmp/err"; then exit 1; fi
grep -q "looked at" "$tmp/err"
grep -q "models--acme--missing/refs/main (missing)" "$tmp/err"
# --dtype f32 --single: one file, every tensor F32, 4 bytes a parameter.
"$MK" --out "$tmp/f32" --tiny --dtype f32 --single --zero >/dev/null
[ -f "$tmp/f32/model.safetensors" ] && [ ! -e "$tmp/f32/model.safetensors.index.json" ]
"$VLM_BIN" info "$tmp/f32" --json >"$tmp/f32.json"
python3 -c "
import json,sys; j=json.load(open(sys.argv[1]))
assert list(j['dtypes']) == ['F32'] and j['tensor_bytes'] == 4 * j['parameters']['total'], j
assert j['valid']" "$tmp/f32.json"
echo "test_info: ok"
