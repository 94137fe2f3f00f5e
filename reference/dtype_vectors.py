#!/usr/bin/env python3
"""Reference conversions between f32 and the 16-bit float types, for
tests/unit/test_dtype.c: f16 by numpy (IEEE binary16, round to nearest even,
subnormals), bf16 by PyTorch (numpy has no bfloat16; torch rounds to
nearest even).

Writes into tests/data/dtype/ (or the folder given as the only argument):

  f32_cases.bin  records of 8 bytes: uint32 f32 bits, uint16 f16 bits,
                 uint16 bf16 bits (little-endian)
  f16_cases.bin  records of 8 bytes: uint16 f16 bits, uint16 zero,
                 uint32 f32 bits of its exact value

NaN payloads differ between implementations (and are not specified by the
formats), so the test compares NaN results by NaN-ness and sign only.

Usage: /usr/bin/python3 reference/dtype_vectors.py [OUTDIR]
"""
import os
import sys

import numpy as np
import torch


def f32_inputs(rng):
    v = []
    # Specials and boundaries.
    v += [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1.0, -1.0, 65504.0, 65519.996,
          65520.0, 65536.0, 1e30, -1e-30, 3.4028235e38, 1.1754944e-38, 1e-45,
          2.0 ** -14, 2.0 ** -24, 2.0 ** -25, 2.0 ** -25 * 1.0000001, 3 * 2.0 ** -26,
          2.0 ** -14 - 2.0 ** -25, 2.0 ** -14 - 2.0 ** -26, 0.1, 1 / 3]
    x = np.array(v, dtype=np.float32)
    # Midpoints between neighbouring f16 values (ties go to even) and one
    # ulp of f32 either side of them, normal and subnormal.
    h = rng.integers(0, 0x7bff, 1500, dtype=np.uint16)
    h[:100] = rng.integers(0, 0x3ff, 100, dtype=np.uint16)  # subnormals
    lo = h.view(np.float16).astype(np.float64)
    hi = (h + 1).view(np.float16).astype(np.float64)
    mid = ((lo + hi) / 2).astype(np.float32)  # exact in f32
    sign = np.where(rng.integers(0, 2, mid.size) == 1, -1, 1).astype(np.float32)
    mid *= sign
    x = np.concatenate([x, mid, np.nextafter(mid, np.float32(np.inf)),
                        np.nextafter(mid, np.float32(-np.inf))])
    # Midpoints between neighbouring bf16 values, and ulps around them.
    b = rng.integers(0, 0x7f7f, 1500, dtype=np.uint32)
    bmid = ((b << 16) | 0x8000).astype(np.uint32).view(np.float32)
    x = np.concatenate([x, bmid, np.nextafter(bmid, np.float32(np.inf)),
                        np.nextafter(bmid, np.float32(-np.inf))])
    # Log-uniform magnitudes over the f16 range and beyond, random bits.
    mag = (2.0 ** rng.uniform(-30, 20, 3000)).astype(np.float32)
    x = np.concatenate([x, mag, -mag, rng.integers(0, 2 ** 32, 2000,
                                                   dtype=np.uint64).astype(np.uint32).view(np.float32)])
    return x.astype(np.float32)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/data/dtype"
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(16)
    x = f32_inputs(rng)
    with np.errstate(over="ignore"):
        f16 = x.astype(np.float16).view(np.uint16)
    bf16 = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    rec = np.zeros(x.size, dtype=[("f32", "<u4"), ("f16", "<u2"), ("bf16", "<u2")])
    rec["f32"] = x.view(np.uint32)
    rec["f16"] = f16
    rec["bf16"] = bf16
    rec.tofile(os.path.join(out, "f32_cases.bin"))

    # f16 -> f32: every subnormal and special, and a sample of the rest.
    h = np.concatenate([np.arange(0, 0x400), np.arange(0x8000, 0x8400),
                        np.arange(0x7c00, 0x8000), np.arange(0xfc00, 0x10000),
                        rng.integers(0, 0x10000, 3000)]).astype(np.uint16)
    rec2 = np.zeros(h.size, dtype=[("f16", "<u2"), ("pad", "<u2"), ("f32", "<u4")])
    rec2["f16"] = h
    rec2["f32"] = h.view(np.float16).astype(np.float32).view(np.uint32)
    rec2.tofile(os.path.join(out, "f16_cases.bin"))
    print("wrote %d f32 and %d f16 cases to %s" % (x.size, h.size, out))


if __name__ == "__main__":
    main()
