#!/usr/bin/env python3
"""Cross-check our safetensors writer and reader against the `safetensors`
Python package (run on the GPU machine, which has torch + safetensors).

    python3 reference/check_safetensors.py [OUT_DIR]

1. Loads tests/data/safetensors/vlmtest_sample.safetensors (written by our
   writer, build/stsample) with safetensors.torch.load_file and safe_open, and
   checks every tensor's dtype, shape and values against the formula of
   tools/stsample.c, and the metadata.
2. Writes the same tensors with safetensors.torch.save_file to
   OUT_DIR/python_sample.safetensors (commit it as
   tests/data/safetensors/python_sample.safetensors: test_safetensors_sample
   then checks that our reader decodes the package's file to the same values).
3. Compares the two files: parsed headers (dtype, shape, data_offsets),
   header padding, data bytes, whole-file bytes. Layout differences are
   reported, not failed (the format does not fix tensor order), but the
   decoded values must match.
4. If given synthetic checkpoint folders (--checkpoint DIR, from
   build/mkcheckpoint), opens every shard with safe_open and checks the
   index's weight_map against the shards' keys.

Writes OUT_DIR/check_safetensors.json with the results; exits 1 on any
mismatch in values, dtypes, shapes or metadata.
"""
import argparse
import json
import os
import struct
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SAMPLES = [  # name, torch dtype, shape (tools/stsample.c)
    ("f64", torch.float64, (3, 4)),
    ("f32", torch.float32, (2, 3, 4)),
    ("f16", torch.float16, (5,)),
    ("bf16", torch.bfloat16, (4, 4)),
    ("i64", torch.int64, (3,)),
    ("i32", torch.int32, (2, 2)),
    ("i16", torch.int16, (6,)),
    ("i8", torch.int8, (7,)),
    ("u8", torch.uint8, (2, 5)),
    ("bool", torch.bool, (3, 3)),
    ("scalar", torch.float32, ()),
    ("empty", torch.float32, (0, 3)),
]


def expected(name, dtype, shape):
    n = 1
    for d in shape:
        n *= d
    i = torch.arange(n, dtype=torch.int64)
    if dtype.is_floating_point:
        v = ((i % 64).double() - 31) * 0.125
    elif name == "i64":
        v = i * 1000003 - 5000000000
    elif name == "i32":
        v = i * 7919 - 100000
    elif name == "i16":
        v = (i * 37) % 65536 - 32768
    elif name == "i8":
        v = (i * 13) % 256 - 128
    elif name == "u8":
        v = (i * 29) % 256
    else:
        v = i % 3 == 0
    return v.to(dtype).reshape(shape)


def header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        raw = f.read(n)
    return n, raw, json.loads(raw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default=os.environ.get("OUT", "out"))
    ap.add_argument("--checkpoint", action="append", default=[])
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    report = {"torch": torch.__version__, "errors": [], "notes": []}
    try:
        import safetensors

        report["safetensors"] = safetensors.__version__
    except Exception:
        pass
    ours = os.path.join(ROOT, "tests/data/safetensors/vlmtest_sample.safetensors")

    # 1. Our file through the package.
    got = load_file(ours)
    with safe_open(ours, framework="pt") as f:
        meta = f.metadata()
    if meta != {"format": "pt", "origin": "vlmtest stsample"}:
        report["errors"].append(f"metadata {meta}")
    if set(got) != {s[0] for s in SAMPLES}:
        report["errors"].append(f"names {sorted(got)}")
    want = {}
    for name, dt, shape in SAMPLES:
        want[name] = expected(name, dt, shape)
        g = got.get(name)
        if g is None:
            continue
        if g.dtype != dt or tuple(g.shape) != shape:
            report["errors"].append(f"{name}: {g.dtype} {tuple(g.shape)}, want {dt} {shape}")
        elif not torch.equal(g, want[name]):
            report["errors"].append(f"{name}: values differ")

    # 2. The package's file of the same tensors.
    theirs = os.path.join(a.out, "python_sample.safetensors")
    save_file(want, theirs, metadata={"format": "pt", "origin": "vlmtest stsample"})

    # 3. Compare layouts.
    n1, raw1, h1 = header(ours)
    n2, raw2, h2 = header(theirs)
    report["header_len"] = {"ours": n1, "theirs": n2}
    report["header_padded_to_8"] = {"ours": n1 % 8 == 0, "theirs": n2 % 8 == 0}
    for name, _, _ in SAMPLES:
        for k in ("dtype", "shape"):
            if h1[name][k] != h2[name][k]:
                report["errors"].append(f"{name}.{k}: ours {h1[name][k]} theirs {h2[name][k]}")
        if h1[name]["data_offsets"] != h2[name]["data_offsets"]:
            report["notes"].append(f"{name}: offsets ours {h1[name]['data_offsets']} theirs {h2[name]['data_offsets']}")
    b1, b2 = open(ours, "rb").read(), open(theirs, "rb").read()
    report["data_bytes_equal"] = b1[8 + n1:] == b2[8 + n2:]
    report["file_bytes_equal"] = b1 == b2
    report["header_json_ours"] = raw1.decode()
    report["header_json_theirs"] = raw2.decode()

    # 4. Synthetic checkpoints.
    for d in a.checkpoint:
        idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
        keys = {}
        total = 0
        for shard in sorted(set(idx["weight_map"].values())):
            with safe_open(os.path.join(d, shard), framework="pt") as f:
                for k in f.keys():
                    keys[k] = shard
                    sl = f.get_slice(k)
                    n = 1
                    for s in sl.get_shape():
                        n *= s
                    total += n * {"BF16": 2, "F16": 2, "F32": 4}[sl.get_dtype()]
        ok = keys == idx["weight_map"] and total == idx["metadata"]["total_size"]
        report.setdefault("checkpoints", {})[d] = {"tensors": len(keys), "total_size": total, "ok": ok}
        if not ok:
            report["errors"].append(f"{d}: index disagrees with shards")

    with open(os.path.join(a.out, "check_safetensors.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: v for k, v in report.items() if not k.startswith("header_json")}, indent=2))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
