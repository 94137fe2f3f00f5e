#!/usr/bin/env python3
"""Write the committed corpus of broken safetensors files.

    python3 reference/make_bad_safetensors.py tests/data/bad/safetensors

Each file is small and breaks one rule of the format (or of our stricter
reading of it). MANIFEST.tsv lists: file, the status vlm_st_open must return
(vlm_status_name), and a piece of text its message must contain besides the
file's path (the tensor name where there is one). tests/unit/test_bad_safetensors.c
replays them; fuzz/corpus/safetensors holds copies as fuzzing seeds.

Only the standard library is used: the files are built byte by byte, not by
the safetensors package (which refuses to write most of them).
"""
import json
import os
import struct
import sys


def st(header, data=b"", hlen=None, raw_header=None):
    """A file image: u64 LE header length, header bytes, data."""
    h = raw_header if raw_header is not None else json.dumps(header, separators=(",", ":")).encode()
    n = len(h) if hlen is None else hlen
    return struct.pack("<Q", n) + h + data


def t(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


good_header = {"__metadata__": {"format": "pt"}, "w": t("F32", (2, 2), (0, 16)), "b": t("F32", (2,), (16, 24))}
good = st(good_header, bytes(24))
good_hlen = struct.unpack("<Q", good[:8])[0]

cases = [
    # name, bytes, status, message part
    ("empty.safetensors", b"", "bad_format", "too short for the 8-byte header length"),
    ("len_3_bytes.safetensors", good[:3], "bad_format", "truncated"),
    ("len_7_bytes.safetensors", good[:7], "bad_format", "truncated"),
    ("len_only.safetensors", good[:8], "bad_format", "only 0 bytes follow"),
    ("header_cut_1.safetensors", good[:9], "bad_format", "truncated: header length"),
    ("header_cut_half.safetensors", good[: 8 + good_hlen // 2], "bad_format", "truncated: header length"),
    ("header_cut_last.safetensors", good[: 8 + good_hlen - 1], "bad_format", "truncated: header length"),
    ("data_cut_all.safetensors", good[: 8 + good_hlen], "bad_format", 'tensor "w": data_offsets [0, 16] run past'),
    ("data_cut_second.safetensors", good[: 8 + good_hlen + 20], "bad_format", 'tensor "b": data_offsets [16, 24] run past'),
    ("data_cut_last_byte.safetensors", good[:-1], "bad_format", 'tensor "b"'),
    ("header_len_0.safetensors", st({}, hlen=0, raw_header=b""), "bad_format", "header length 0 is too small"),
    ("header_len_1.safetensors", st({}, hlen=1, raw_header=b"{"), "bad_format", "header length 1 is too small"),
    ("header_len_huge.safetensors", struct.pack("<Q", 2**63) + b"{}", "bad_format", "over the limit"),
    ("header_len_all_ones.safetensors", struct.pack("<Q", 2**64 - 1) + b"{}", "bad_format", "over the limit"),
    ("header_len_100MB_plus_1.safetensors", struct.pack("<Q", 100_000_001) + b"{}", "bad_format", "over the limit"),
    ("header_len_past_eof.safetensors", struct.pack("<Q", 4096) + b"{}", "bad_format", "only 2 bytes follow"),
    ("header_not_json.safetensors", st(None, raw_header=b"{abc}   "), "bad_format", "not valid JSON"),
    ("header_array.safetensors", st([]), "bad_format", "not a JSON object"),
    ("header_string.safetensors", st("x"), "bad_format", "not a JSON object"),
    ("header_number.safetensors", st(None, raw_header=b"12345678"), "bad_format", "not a JSON object"),
    ("header_trailing_garbage.safetensors", st(None, raw_header=b'{}  x   '), "bad_format", "after the header JSON"),
    ("header_nul_padding.safetensors", st(None, raw_header=b"{}\0\0\0\0\0\0"), "bad_format", "after the header JSON"),
    ("offsets_out_of_range.safetensors", st({"w": t("F32", (2,), (8, 16))}, bytes(8)), "bad_format", 'tensor "w": data_offsets [8, 16] run past'),
    ("offsets_huge.safetensors", st({"w": t("U8", (1,), (2**53, 2**53 + 1))}, bytes(8)), "bad_format", 'tensor "w": data_offsets [9007199254740992, 9007199254740992] run past'),
    ("offsets_2_64.safetensors", st({"w": t("U8", (1,), (2**64, 2**64 + 1))}, bytes(8)), "bad_format", 'tensor "w": data_offsets must be'),
    ("offsets_reversed.safetensors", st({"w": t("F32", (2,), (8, 0))}, bytes(8)), "bad_format", 'tensor "w": data_offsets end 0 is before begin 8'),
    ("offsets_overlap.safetensors", st({"a": t("F32", (2,), (0, 8)), "b": t("F32", (2,), (4, 12))}, bytes(12)), "bad_format", 'tensor "b": data [4, 12) overlaps tensor "a"'),
    ("offsets_same.safetensors", st({"a": t("F32", (2,), (0, 8)), "b": t("F32", (2,), (0, 8))}, bytes(8)), "bad_format", "overlaps tensor"),
    ("offsets_wrong_size.safetensors", st({"w": t("F32", (3,), (0, 8))}, bytes(12)), "bad_format", 'tensor "w": data_offsets span 8 bytes but F32 x 3 elements need 12'),
    ("offsets_one.safetensors", st({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, bytes(8)), "bad_format", 'tensor "w": data_offsets must be'),
    ("offsets_three.safetensors", st({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 8]}}, bytes(8)), "bad_format", 'tensor "w": data_offsets must be'),
    ("offsets_negative.safetensors", st({"w": t("F32", (2,), (-8, 0))}, bytes(8)), "bad_format", 'tensor "w": data_offsets must be'),
    ("offsets_string.safetensors", st({"w": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}}, bytes(8)), "bad_format", 'tensor "w": data_offsets must be'),
    ("shape_overflow.safetensors", st({"w": t("F32", (2**32, 2**32), (0, 8))}, bytes(8)), "bad_format", 'tensor "w": shape size overflows'),
    ("shape_overflow_bytes.safetensors", st({"w": t("F64", (2**31, 2**31), (0, 8))}, bytes(8)), "bad_format", 'tensor "w": shape size overflows'),
    ("shape_product_2_64.safetensors", st({"w": t("U8", (2**16, 2**16, 2**16, 2**16), (0, 0))}), "bad_format", 'tensor "w": shape size overflows'),
    ("shape_negative.safetensors", st({"w": t("F32", (-2,), (0, 8))}, bytes(8)), "bad_format", 'tensor "w": shape[0] is not a non-negative integer'),
    ("shape_float.safetensors", st({"w": t("F32", (1.5,), (0, 8))}, bytes(8)), "bad_format", 'tensor "w": shape[0]'),
    ("shape_string.safetensors", st({"w": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}}, bytes(8)), "bad_format", 'tensor "w": shape[0]'),
    ("shape_not_array.safetensors", st({"w": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}}, bytes(8)), "bad_format", 'tensor "w": missing or non-array shape'),
    ("rank_9.safetensors", st({"w": t("U8", (1,) * 9, (0, 1))}, bytes(1)), "bad_format", 'tensor "w": rank 9 is over the limit of 8'),
    ("dtype_unknown.safetensors", st({"w": t("F31", (2,), (0, 8))}, bytes(8)), "bad_format", 'tensor "w": unknown dtype "F31"'),
    ("dtype_lowercase.safetensors", st({"w": t("f32", (2,), (0, 8))}, bytes(8)), "bad_format", 'tensor "w": unknown dtype "f32"'),
    ("dtype_gguf_block.safetensors", st({"w": t("Q4_0", (32,), (0, 18))}, bytes(18)), "bad_format", 'tensor "w": unknown dtype "Q4_0"'),
    ("dtype_f8_unsupported.safetensors", st({"w": t("F8_E4M3", (8,), (0, 8))}, bytes(8)), "unsupported", 'tensor "w": dtype F8_E4M3 is not supported'),
    ("dtype_number.safetensors", st({"w": {"dtype": 1, "shape": [2], "data_offsets": [0, 8]}}, bytes(8)), "bad_format", 'tensor "w": missing or non-string dtype'),
    ("dtype_missing.safetensors", st({"w": {"shape": [2], "data_offsets": [0, 8]}}, bytes(8)), "bad_format", 'tensor "w": missing or non-string dtype'),
    ("name_invalid_utf8.safetensors", st(None, raw_header=b'{"w\xff":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', data=bytes(1)), "bad_format", 'tensor "w\\xff": name is not valid UTF-8'),
    ("name_overlong_utf8.safetensors", st(None, raw_header=b'{"\xc0\xafw":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', data=bytes(1)), "bad_format", "name is not valid UTF-8"),
    ("name_surrogate_utf8.safetensors", st(None, raw_header=b'{"\xed\xa0\x80":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', data=bytes(1)), "bad_format", "name is not valid UTF-8"),
    ("name_truncated_utf8.safetensors", st(None, raw_header=b'{"ab\xe2\x82":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', data=bytes(1)), "bad_format", 'tensor "ab\\xe2\\x82": name is not valid UTF-8'),
    ("name_duplicate.safetensors", st(None, raw_header=b'{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', data=bytes(2)), "bad_format", 'tensor "w": name appears twice'),
    ("name_empty.safetensors", st({"": t("U8", (1,), (0, 1))}, bytes(1)), "bad_format", "a tensor has an empty name"),
    ("entry_not_object.safetensors", st({"w": [0, 8]}, bytes(8)), "bad_format", 'tensor "w": entry is not an object'),
    ("entry_null.safetensors", st({"w": None}), "bad_format", 'tensor "w": entry is not an object'),
    ("metadata_not_object.safetensors", st({"__metadata__": "pt"}), "bad_format", "__metadata__ is not an object"),
    ("metadata_value_number.safetensors", st({"__metadata__": {"format": 1}}), "bad_format", '__metadata__ "format": value is not a string'),
    ("metadata_value_object.safetensors", st({"__metadata__": {"a": {"b": "c"}}}), "bad_format", '__metadata__ "a": value is not a string'),
    ("metadata_twice.safetensors", st(None, raw_header=b'{"__metadata__":{},"__metadata__":{}}'), "bad_format", "__metadata__ appears twice"),
    ("deep_nesting.safetensors", st(None, raw_header=b"[" * 2000 + b"]" * 2000), "bad_format", "not valid JSON"),
]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/data/bad/safetensors"
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "MANIFEST.tsv"), "w") as m:
        m.write("# file\tstatus\tmessage must contain (besides the path)\n")
        for name, data, status, needle in cases:
            with open(os.path.join(out, name), "wb") as f:
                f.write(data)
            m.write(f"{name}\t{status}\t{needle}\n")
    print(f"wrote {len(cases)} files to {out}")


if __name__ == "__main__":
    main()
