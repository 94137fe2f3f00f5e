#!/usr/bin/env python3
"""Writes the corpus of broken GGUF files in tests/data/bad/gguf/ and its
MANIFEST: one line per file, "NAME<TAB>STATUS<TAB>TEXT", where STATUS is the
vlm_status name the reader must return and TEXT a piece of the message it
must give (tests/unit/test_gguf.c checks both, and that the message names
the file). Each file is a small valid GGUF with one thing broken.

Usage: /usr/bin/python3 tests/data/bad/make_bad_gguf.py [OUTDIR]
"""
import os
import struct
import sys

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)


def s(b):
    if isinstance(b, str):
        b = b.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, t, payload):
    return s(key) + struct.pack("<I", t) + payload


def tinfo(name, dims, ggml_type, offset):
    out = s(name) + struct.pack("<I", len(dims))
    out += b"".join(struct.pack("<Q", d) for d in dims)
    return out + struct.pack("<IQ", ggml_type, offset)


def gguf(kvs=(), tensors=(), data=b"", version=3, n_tensors=None, n_kv=None, align=32,
         magic=b"GGUF"):
    head = magic + struct.pack("<I", version)
    head += struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors,
                        len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tensors)
    body += b"\0" * ((-len(body)) % align)
    return body + data


GOOD_KV = [kv("general.architecture", STR, s("llama")), kv("general.name", STR, s("bad"))]
F32_DATA = struct.pack("<8f", *range(8))
GOOD_T = [tinfo("w", [8], 0, 0)]


def good(**kw):
    args = dict(kvs=GOOD_KV, tensors=GOOD_T, data=F32_DATA)
    args.update(kw)
    return gguf(**args)


def nested(depth):
    """An array value nested `depth` levels: ARRAY of ARRAY of ... of U8."""
    inner = struct.pack("<IQ", U8, 1) + b"\x07"
    for _ in range(depth - 1):
        inner = struct.pack("<IQ", ARR, 1) + inner
    return inner


CASES = []


def case(name, status, text, data):
    CASES.append((name, status, text, data))


def build():
    full = good()
    case("empty", "bad_format", "shorter than a GGUF header", b"")
    case("not_gguf", "bad_format", "not a GGUF file", b"GGML" + full[4:])
    case("version1", "unsupported", "version 1", good(version=1))
    case("version4", "unsupported", "version 4", good(version=4))
    case("big_endian", "unsupported", "big-endian", b"GGUF" + struct.pack(">I", 3) + full[8:])
    case("tensor_count_huge", "bad_format", "tensor count", good(n_tensors=2 ** 62))
    case("tensor_count_max", "bad_format", "tensor count", good(n_tensors=2 ** 64 - 1))
    case("kv_count_huge", "bad_format", "metadata count", good(n_kv=2 ** 40))
    case("tensor_count_short", "bad_format", "tensor 1: empty tensor name", good(n_tensors=3))
    case("key_len_2p63", "bad_format", "key length 9223372036854775808",
         good(kvs=[struct.pack("<Q", 2 ** 63) + b"general.x" + struct.pack("<I", U8) + b"\1"]))
    case("string_len_2p63", "bad_format", "string length 9223372036854775808",
         good(kvs=[kv("a.str", STR, struct.pack("<Q", 2 ** 63) + b"abc")]))
    case("string_len_max", "bad_format", "string length 18446744073709551615",
         good(kvs=[kv("a.str", STR, struct.pack("<Q", 2 ** 64 - 1))]))
    case("array_len_huge", "bad_format", "cannot fit",
         good(kvs=[kv("a.arr", ARR, struct.pack("<IQ", U32, 2 ** 61) + b"\0" * 8)]))
    case("array_of_strings_huge", "bad_format", "cannot fit",
         good(kvs=[kv("a.arr", ARR, struct.pack("<IQ", STR, 2 ** 40))]))
    case("nested_depth_9", "bad_format", "nested deeper than 8",
         good(kvs=[kv("a.nest", ARR, nested(9))]))
    case("nested_depth_5000", "bad_format", "nested deeper than 8",
         good(kvs=[kv("a.nest", ARR, nested(5000))]))
    case("value_type_unknown", "bad_format", "unknown value type 13",
         good(kvs=[kv("a.x", 13, b"\0" * 8)]))
    case("array_elem_type_unknown", "bad_format", "unknown array element type 200",
         good(kvs=[kv("a.x", ARR, struct.pack("<IQ", 200, 1))]))
    case("bool_value_2", "bad_format", "neither 0 nor 1", good(kvs=[kv("a.b", BOOL, b"\2")]))
    case("bool_array_value_9", "bad_format", "not 0 or 1",
         good(kvs=[kv("a.b", ARR, struct.pack("<IQ", BOOL, 3) + b"\1\0\x09")]))
    case("key_duplicate", "bad_format", "key appears twice",
         good(kvs=[kv("a.k", U8, b"\1"), kv("a.k", U8, b"\2")]))
    case("key_empty", "bad_format", "empty key", good(kvs=[kv("", U8, b"\1")]))
    case("key_bad_utf8", "bad_format", "not valid UTF-8", good(kvs=[kv(b"a.\xc0\xaf", U8, b"\1")]))
    case("key_nul", "bad_format", "not valid UTF-8", good(kvs=[kv(b"a\0b", U8, b"\1")]))
    case("key_too_long", "bad_format", "longer than the limit",
         good(kvs=[kv(b"k" * 70000, U8, b"\1")]))
    case("alignment_not_pow2", "bad_format", "not a power of two",
         good(kvs=[kv("general.alignment", U32, struct.pack("<I", 48))]))
    case("alignment_zero", "bad_format", "not a power of two",
         good(kvs=[kv("general.alignment", U32, struct.pack("<I", 0))]))
    case("alignment_u64", "bad_format", "expected UINT32",
         good(kvs=[kv("general.alignment", U64, struct.pack("<Q", 32))]))
    case("tensor_name_bad_utf8", "bad_format", "not valid UTF-8",
         good(tensors=[tinfo(b"w\xff", [8], 0, 0)]))
    case("tensor_name_surrogate", "bad_format", "not valid UTF-8",
         good(tensors=[tinfo(b"w\xed\xa0\x80", [8], 0, 0)]))
    case("tensor_name_empty", "bad_format", "empty tensor name",
         good(tensors=[tinfo(b"", [8], 0, 0)]))
    case("tensor_duplicate", "bad_format", "name appears twice",
         good(tensors=[tinfo("w", [4], 0, 0), tinfo("w", [4], 0, 32)], data=F32_DATA + b"\0" * 32))
    case("tensor_ndims_0", "bad_format", "0 dimensions", good(tensors=[tinfo("w", [], 0, 0)]))
    case("tensor_ndims_5", "bad_format", "5 dimensions",
         good(tensors=[tinfo("w", [1, 1, 1, 1, 8], 0, 0)]))
    case("tensor_dims_overflow", "bad_format", "element count overflows",
         good(tensors=[tinfo("w", [2 ** 32, 2 ** 32], 0, 0)]))
    case("tensor_dim_2p63", "bad_format", "element count overflows",
         good(tensors=[tinfo("w", [2 ** 63], 0, 0)]))
    case("tensor_nbytes_overflow", "bad_format", "byte size",
         good(tensors=[tinfo("w", [2 ** 62], 28, 0)]))
    case("tensor_type_unknown", "bad_format", "unknown tensor type id 99",
         good(tensors=[tinfo("w", [8], 99, 0)]))
    case("tensor_type_removed", "bad_format", "unknown tensor type id 4",
         good(tensors=[tinfo("w", [32], 4, 0)]))
    case("tensor_type_unsupported", "unsupported", "IQ2_XXS",
         good(tensors=[tinfo("w", [256], 16, 0)]))
    case("tensor_row_partial_block", "bad_format", "not a multiple of the Q4_0 block size 32",
         good(tensors=[tinfo("w", [33, 2], 2, 0)]))
    case("tensor_offset_misaligned", "bad_format", "not a multiple of the alignment 32",
         good(tensors=[tinfo("w", [8], 0, 4)]))
    case("tensor_offset_out_of_range", "bad_format", "runs past the end",
         good(tensors=[tinfo("w", [8], 0, 2 ** 40)]))
    case("tensor_offset_wraps", "bad_format", "runs past the end",
         good(tensors=[tinfo("w", [8], 0, 2 ** 64 - 32)]))
    case("tensor_size_past_end", "bad_format", "runs past the end",
         good(tensors=[tinfo("w", [1000], 0, 0)]))
    case("tensor_overlap", "bad_format", "overlap",
         good(tensors=[tinfo("a", [16], 0, 0), tinfo("b", [8], 0, 32)], data=b"\0" * 64))
    # Truncated inside each section of a valid file.
    hdr = 24
    kv0 = len(GOOD_KV[0])
    ti = hdr + sum(len(k) for k in GOOD_KV)
    data_at = len(full) - len(F32_DATA)
    case("trunc_header", "bad_format", "shorter than a GGUF header", full[:hdr - 4])
    case("trunc_key", "bad_format", "key length 12", full[:hdr + kv0 + 11])
    case("trunc_value", "bad_format", "string length", full[:hdr + kv0 - 2])
    case("trunc_second_kv", "bad_format", "truncated", full[:hdr + kv0 + 3])
    case("trunc_tensor_name", "bad_format", "tensor 0: file truncated: tensor name", full[:ti + 5])
    case("trunc_tensor_dims", "bad_format", "truncated", full[:ti + 9 + 4 + 3])
    case("trunc_tensor_offset", "bad_format", "truncated", full[:ti + len(GOOD_T[0]) - 1])
    case("trunc_padding", "bad_format", "runs past the end", full[:data_at - 1])
    case("trunc_data", "bad_format", "runs past the end", full[:data_at + 5])


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/data/bad/gguf"
    os.makedirs(out, exist_ok=True)
    build()
    with open(os.path.join(out, "MANIFEST"), "w") as m:
        for name, status, text, data in CASES:
            with open(os.path.join(out, name + ".gguf"), "wb") as f:
                f.write(data)
            m.write("%s.gguf\t%s\t%s\n" % (name, status, text))
    print("wrote %d broken files to %s" % (len(CASES), out))


if __name__ == "__main__":
    main()
