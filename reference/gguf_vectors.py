#!/usr/bin/env python3
"""Reference vectors for the GGUF block types and the GGUF container, made
with numpy alone (no ggml, no gguf package), from the published layouts.

Writes into tests/data/gguf/ (run from the repository root, or pass the
output folder as the only argument):

  blocks_<TYPE>.bin   NBLOCKS random blocks of <TYPE>, raw bytes as in a file
  blocks_<TYPE>.f32   their dequantized values, little-endian float32
  ref_v3.gguf         a GGUF v3 file: metadata of every value type (values
                      listed in META below, mirrored in tests/unit/test_gguf.c)
                      and one tensor per type (the blocks above; F32/F16/BF16/
                      F64/I8/I16/I32/I64 tensors from the same generator)
  ref_v2.gguf         the same content as version 2
  ref_tensors.f32     for ref_v3.gguf: each tensor's values as float32, in
                      tensor order, concatenated (integer tensors widened)

Every value is computed with numpy float32 arithmetic in the order the
format defines (products and sums rounded separately), so the C
implementation must match bit for bit.

Usage: /usr/bin/python3 reference/gguf_vectors.py [OUTDIR]
"""
import os
import struct
import sys

import numpy as np

F32 = np.float32
QK = 32
QK_K = 256

# name: (block_elems, block_bytes, ggml type id)
TYPES = {
    "Q4_0": (32, 18, 2),
    "Q4_1": (32, 20, 3),
    "Q5_0": (32, 22, 6),
    "Q5_1": (32, 24, 7),
    "Q8_0": (32, 34, 8),
    "Q2_K": (256, 84, 10),
    "Q3_K": (256, 110, 11),
    "Q4_K": (256, 144, 12),
    "Q5_K": (256, 176, 13),
    "Q6_K": (256, 210, 14),
}
PLAIN_IDS = {"F32": 0, "F16": 1, "I8": 24, "I16": 25, "I32": 26, "I64": 27, "F64": 28, "BF16": 30}
NBLOCKS = {"legacy": 8, "k": 3}

# fp16 fields: offsets (in bytes) of every half-precision scale in a block.
HALF_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
}


def half(raw, off):
    """(nb, 1) float32 from the little-endian fp16 at byte off of each block."""
    h = raw[:, off:off + 2].copy().view("<f2")
    return h.astype(F32)


def u8(raw, a, b):
    return raw[:, a:b].astype(np.int64)


# --- dequantization, one formula per element index -----------------------

def dq_q4_0(raw):
    d = half(raw, 0)
    qs = u8(raw, 2, 18)
    q = np.concatenate([(qs & 15) - 8, (qs >> 4) - 8], axis=1)
    return q.astype(F32) * d


def dq_q4_1(raw):
    d, m = half(raw, 0), half(raw, 2)
    qs = u8(raw, 4, 20)
    q = np.concatenate([qs & 15, qs >> 4], axis=1)
    return q.astype(F32) * d + m


def q5_bits(raw, off):
    qh = raw[:, off:off + 4].copy().view("<u4").astype(np.int64)  # (nb, 1)
    return (qh >> np.arange(32)) & 1  # (nb, 32): bit e for element e


def dq_q5_0(raw):
    d = half(raw, 0)
    hb = q5_bits(raw, 2)
    qs = u8(raw, 6, 22)
    q = np.concatenate([qs & 15, qs >> 4], axis=1) | (hb << 4)
    return (q - 16).astype(F32) * d


def dq_q5_1(raw):
    d, m = half(raw, 0), half(raw, 2)
    hb = q5_bits(raw, 4)
    qs = u8(raw, 8, 24)
    q = np.concatenate([qs & 15, qs >> 4], axis=1) | (hb << 4)
    return q.astype(F32) * d + m


def dq_q8_0(raw):
    d = half(raw, 0)
    q = raw[:, 2:34].copy().view(np.int8).astype(F32)
    return q * d


E = np.arange(QK_K)  # element index within a super-block


def dq_q2_k(raw):
    scales, qs = u8(raw, 0, 16), u8(raw, 16, 80)
    d, dmin = half(raw, 80), half(raw, 82)
    half_ = E // 128
    r = E % 128
    shift = 2 * (r // 32)
    byte = qs[:, half_ * 32 + r % 32]
    q = (byte >> shift) & 3
    sc = scales[:, E // 16]
    dl = d * (sc & 15).astype(F32)
    ml = dmin * (sc >> 4).astype(F32)
    return dl * q.astype(F32) - ml


def k3_scales(s):
    """16 six-bit scales of Q3_K from the 12 packed bytes s (nb, 12)."""
    i = np.arange(16)
    lo = np.where(i < 8, s[:, i % 8] & 15, s[:, i % 8] >> 4)
    hi = (s[:, 8 + i % 4] >> (2 * (i // 4))) & 3
    return lo | (hi << 4)


def dq_q3_k(raw):
    hmask, qs, sc = u8(raw, 0, 32), u8(raw, 32, 96), u8(raw, 96, 108)
    d = half(raw, 108)
    half_ = E // 128
    r = E % 128
    j = r // 32
    q = (qs[:, half_ * 32 + r % 32] >> (2 * j)) & 3
    hbit = (hmask[:, r % 32] >> (half_ * 4 + j)) & 1
    q = q - np.where(hbit == 1, 0, 4)
    s = k3_scales(sc)[:, E // 16]
    dl = d * (s - 32).astype(F32)
    return dl * q.astype(F32)


def k4_scale_min(s):
    """8 six-bit scales and mins of Q4_K/Q5_K from the 12 packed bytes."""
    sc = np.empty((s.shape[0], 8), np.int64)
    mn = np.empty((s.shape[0], 8), np.int64)
    for j in range(8):
        if j < 4:
            sc[:, j] = s[:, j] & 63
            mn[:, j] = s[:, j + 4] & 63
        else:
            sc[:, j] = (s[:, j + 4] & 15) | ((s[:, j - 4] >> 6) << 4)
            mn[:, j] = (s[:, j + 4] >> 4) | ((s[:, j] >> 6) << 4)
    return sc, mn


def dq_q4_k(raw):
    d, dmin = half(raw, 0), half(raw, 2)
    sc, mn = k4_scale_min(u8(raw, 4, 16))
    qs = u8(raw, 16, 144)
    c, r = E // 64, E % 64
    byte = qs[:, c * 32 + r % 32]
    q = np.where(r < 32, byte & 15, byte >> 4)
    sub = E // 32
    dl = d * sc[:, sub].astype(F32)
    ml = dmin * mn[:, sub].astype(F32)
    return dl * q.astype(F32) - ml


def dq_q5_k(raw):
    d, dmin = half(raw, 0), half(raw, 2)
    sc, mn = k4_scale_min(u8(raw, 4, 16))
    qh, qs = u8(raw, 16, 48), u8(raw, 48, 176)
    c, r = E // 64, E % 64
    byte = qs[:, c * 32 + r % 32]
    sub = E // 32
    q = np.where(r < 32, byte & 15, byte >> 4) + 16 * ((qh[:, r % 32] >> sub) & 1)
    dl = d * sc[:, sub].astype(F32)
    ml = dmin * mn[:, sub].astype(F32)
    return dl * q.astype(F32) - ml


def dq_q6_k(raw):
    ql, qh = u8(raw, 0, 128), u8(raw, 128, 192)
    sc = raw[:, 192:208].copy().view(np.int8).astype(F32)
    d = half(raw, 208)
    half_ = E // 128
    r = E % 128
    g, l = r // 32, r % 32
    lowbyte = ql[:, half_ * 64 + (g % 2) * 32 + l]
    low = np.where(g < 2, lowbyte & 15, lowbyte >> 4)
    hi = (qh[:, half_ * 32 + l] >> (2 * g)) & 3
    q = (low | (hi << 4)) - 32
    return (d * sc[:, E // 16]) * q.astype(F32)


DEQUANT = {
    "Q4_0": dq_q4_0, "Q4_1": dq_q4_1, "Q5_0": dq_q5_0, "Q5_1": dq_q5_1,
    "Q8_0": dq_q8_0, "Q2_K": dq_q2_k, "Q3_K": dq_q3_k, "Q4_K": dq_q4_k,
    "Q5_K": dq_q5_k, "Q6_K": dq_q6_k,
}


def random_blocks(rng, name):
    elems, nbytes, _ = TYPES[name]
    nb = NBLOCKS["legacy" if elems == QK else "k"]
    raw = rng.integers(0, 256, size=(nb, nbytes), dtype=np.uint8)
    # Scales: finite halves of either sign over a wide range, one subnormal.
    for k, off in enumerate(HALF_FIELDS[name]):
        v = (rng.standard_normal(nb) * 10.0 ** rng.integers(-4, 2, nb)).astype(np.float16)
        v[0] = np.float16(2.0 ** -20) * (k + 1)  # a subnormal half
        raw[:, off:off + 2] = v.astype("<f2").view(np.uint8).reshape(nb, 2)
    return raw


# --- the GGUF container -------------------------------------------------

GT = {"u8": 0, "i8": 1, "u16": 2, "i16": 3, "u32": 4, "i32": 5, "f32": 6, "bool": 7,
      "str": 8, "arr": 9, "u64": 10, "i64": 11, "f64": 12}
PACK = {"u8": "<B", "i8": "<b", "u16": "<H", "i16": "<h", "u32": "<I", "i32": "<i",
        "f32": "<f", "bool": "<?", "u64": "<Q", "i64": "<q", "f64": "<d"}

# Metadata of every value type. tests/unit/test_gguf.c checks these values.
META = [
    ("general.architecture", "str", "vlmtest-ref"),
    ("general.alignment", "u32", 64),
    ("ref.u8", "u8", 200),
    ("ref.i8", "i8", -100),
    ("ref.u16", "u16", 60000),
    ("ref.i16", "i16", -30000),
    ("ref.u32", "u32", 4000000000),
    ("ref.i32", "i32", -2000000000),
    ("ref.f32", "f32", 3.25),
    ("ref.bool", "bool", True),
    ("ref.str", "str", "h\u00e9llo GGUF"),
    ("ref.u64", "u64", 18000000000000000000),
    ("ref.i64", "i64", -9000000000000000000),
    ("ref.f64", "f64", -2.5e-300),
    ("ref.empty_str", "str", ""),
    ("ref.arr_u8", ("arr", "u8"), [1, 2, 255]),
    ("ref.arr_i32", ("arr", "i32"), [-1, 0, 2147483647]),
    ("ref.arr_f32", ("arr", "f32"), [0.5, -1.0]),
    ("ref.arr_bool", ("arr", "bool"), [True, False, True]),
    ("ref.arr_str", ("arr", "str"), ["a", "", "xyz"]),
    ("ref.arr_u64", ("arr", "u64"), [2 ** 64 - 1]),
    ("ref.arr_f64", ("arr", "f64"), [1.0e100]),
    ("ref.arr_empty", ("arr", "i16"), []),
    ("ref.arr_nested", ("arr", ("arr", "i32")), [[1, 2], [], [3]]),
]


def enc_str(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def enc_value(t, v):
    """Bytes of a value of GGUF type t (no leading type id)."""
    if isinstance(t, tuple):  # ("arr", elem_type)
        et = t[1]
        etid = GT["arr"] if isinstance(et, tuple) else GT[et]
        out = struct.pack("<IQ", etid, len(v))
        return out + b"".join(enc_value(et, x) for x in v)
    if t == "str":
        return enc_str(v)
    return struct.pack(PACK[t], v)


def type_id(t):
    return GT["arr"] if isinstance(t, tuple) else GT[t]


def plain_tensors(rng):
    """(name, type name, dims, raw bytes, values as f32) for the plain types."""
    out = []
    x = rng.standard_normal(24).astype(F32)
    out.append(("plain.F32", "F32", [6, 4], x.tobytes(), x))
    h = (rng.standard_normal(16) * 100).astype("<f2")
    out.append(("plain.F16", "F16", [16], h.tobytes(), h.astype(F32)))
    b = rng.integers(0, 65536, 8, dtype=np.uint16)
    b[(b & 0x7f80) == 0x7f80] = 0x3f80  # no inf/nan patterns
    bf = (b.astype(np.uint32) << 16).view(F32)
    out.append(("plain.BF16", "BF16", [8], b.astype("<u2").tobytes(), bf))
    f = rng.standard_normal(4).astype("<f8")
    out.append(("plain.F64", "F64", [2, 2], f.tobytes(), f.astype(F32)))
    for name, dt in (("I8", "<i1"), ("I16", "<i2"), ("I32", "<i4"), ("I64", "<i8")):
        v = rng.integers(-100, 100, 5).astype(dt)
        out.append(("plain." + name, name, [5], v.tobytes(), v.astype(F32)))
    return out


def write_gguf(path, version, tensors, alignment):
    body = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(META))
    for key, t, v in META:
        body += enc_str(key) + struct.pack("<I", type_id(t)) + enc_value(t, v)
    offset = 0
    offsets = []
    for name, tname, dims, raw, _ in tensors:
        tid = PLAIN_IDS.get(tname, TYPES.get(tname, (0, 0, None))[2])
        body += enc_str(name) + struct.pack("<I", len(dims))
        body += b"".join(struct.pack("<Q", n) for n in dims)
        body += struct.pack("<IQ", tid, offset)
        offsets.append(offset)
        offset += len(raw)
        offset += (-offset) % alignment
    body += b"\0" * ((-len(body)) % alignment)
    data = bytearray(offset)
    for (name, tname, dims, raw, _), off in zip(tensors, offsets):
        data[off:off + len(raw)] = raw
    with open(path, "wb") as f:
        f.write(body + bytes(data))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/data/gguf"
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(20260326)
    tensors = plain_tensors(rng)
    for name in TYPES:
        raw = random_blocks(rng, name)
        y = DEQUANT[name](raw).astype("<f4")
        assert y.shape == (raw.shape[0], TYPES[name][0])
        with open(os.path.join(out, "blocks_%s.bin" % name), "wb") as f:
            f.write(raw.tobytes())
        with open(os.path.join(out, "blocks_%s.f32" % name), "wb") as f:
            f.write(y.tobytes())
        elems = raw.shape[0] * TYPES[name][0]
        # One row of all blocks for the legacy types; k-quants as [256, nb].
        dims = [elems] if elems == raw.shape[0] * QK else [QK_K, raw.shape[0]]
        tensors.append(("quant." + name, name, dims, raw.tobytes(), y.reshape(-1)))
    write_gguf(os.path.join(out, "ref_v3.gguf"), 3, tensors, 64)
    write_gguf(os.path.join(out, "ref_v2.gguf"), 2, tensors, 64)
    with open(os.path.join(out, "ref_tensors.f32"), "wb") as f:
        for t in tensors:
            f.write(np.asarray(t[4], dtype="<f4").tobytes())
    print("wrote %d tensor types to %s" % (len(tensors), out))


if __name__ == "__main__":
    main()
