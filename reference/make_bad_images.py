#!/usr/bin/env python3
"""Write the corpus of corrupt and hostile images (tests/data/bad/images) and
the fuzz seed corpus (fuzz/corpus/image). Every bad file must give a clear
error from vlm_image_load; the names say which: bomb* -> over the pixel
limit, unsupported* -> a format or variant we do not decode, *trunc* -> a
format error for a truncated file.

usage: make_bad_images.py GOOD_IMAGES_DIR BAD_DIR SEED_DIR
"""
import io
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from preprocess_ref import _chunk, write_png  # noqa: E402


def small_rgb(w, h, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = np.dstack([(x * 7 + y * 3) % 256, (x * 2 + y * 9) % 256, (x * y) % 256]).astype(np.uint8)
    a[rng.random((h, w)) < 0.1] = 255
    return a


def enc(im, fmt, **kw):
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def png_chunks(data):
    """[(type, body, offset)] of a PNG file."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        n, t = struct.unpack(">I4s", data[pos:pos + 8])
        out.append((t, data[pos + 8:pos + 8 + n], pos))
        pos += 12 + n
    return out


def main(good, bad, seeds):
    os.makedirs(bad, exist_ok=True)
    os.makedirs(seeds, exist_ok=True)
    files = {}
    img = Image.fromarray(small_rgb(48, 32))
    png = enc(img, "PNG")
    jpg = enc(img, "JPEG", quality=90)
    prog = enc(img, "JPEG", quality=90, progressive=True)
    webp = enc(img, "WEBP", quality=80)
    webpl = enc(img, "WEBP", lossless=True)

    files["empty.png"] = b""
    files["garbage.bin"] = bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8))
    files["text.jpg"] = b"this is not an image, whatever the extension says\n"
    files["png_signature_only.png"] = png[:8]
    files["png_trunc_header.png"] = png[:20]
    files["png_trunc_idat.png"] = png[:len(png) // 2]
    # CRC of IHDR broken
    b = bytearray(png)
    b[29] ^= 0xFF
    files["png_bad_crc_ihdr.png"] = bytes(b)
    # CRC of the IDAT broken
    ch = png_chunks(png)
    idat = [c for c in ch if c[0] == b"IDAT"][0]
    b = bytearray(png)
    b[idat[2] + 8 + len(idat[1])] ^= 0x55
    files["png_bad_crc_idat.png"] = bytes(b)
    # zlib stream damaged (CRC recomputed so only the data is wrong)
    body = bytearray(idat[1])
    for i in range(2, len(body), 7):
        body[i] ^= 0xA5
    files["png_bad_zlib.png"] = png[:idat[2]] + _chunk(b"IDAT", bytes(body)) + \
        png[idat[2] + 12 + len(idat[1]):]
    ihdr = lambda w, h, d, c: b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(
        ">IIBBBBB", w, h, d, c, 0, 0, 0))
    tiny_idat = _chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _chunk(b"IEND", b"")
    files["png_zero_width.png"] = ihdr(0, 10, 8, 2) + tiny_idat
    files["png_bad_depth.png"] = ihdr(10, 10, 3, 2) + tiny_idat
    files["png_palette_without_plte.png"] = ihdr(4, 4, 8, 3) + tiny_idat
    files["png_no_idat.png"] = ihdr(4, 4, 8, 2) + _chunk(b"IEND", b"")
    # declares 100000 x 100000 = 1e10 pixels, 60 bytes long
    files["bomb_png.png"] = ihdr(100000, 100000, 8, 2) + tiny_idat
    files["bomb_png_wide.png"] = ihdr(2000000, 50, 8, 0) + tiny_idat

    files["jpeg_trunc_half.jpg"] = jpg[:len(jpg) // 2]
    files["jpeg_trunc_header.jpg"] = jpg[:120]
    files["jpeg_trunc_progressive.jpg"] = prog[:len(prog) * 2 // 3]
    files["jpeg_soi_then_garbage.jpg"] = b"\xff\xd8\xff" + bytes(range(256)) * 2
    # SOF0 dimensions rewritten
    sof = jpg.index(b"\xff\xc0")
    b = bytearray(jpg)
    b[sof + 5:sof + 9] = struct.pack(">HH", 65000, 65000)
    files["bomb_jpeg.jpg"] = bytes(b)
    b = bytearray(jpg)
    b[sof + 5:sof + 9] = struct.pack(">HH", 32, 0)
    files["jpeg_zero_width.jpg"] = bytes(b)

    files["webp_trunc_half.webp"] = webp[:len(webp) // 2]
    files["webp_trunc_lossless.webp"] = webpl[:len(webpl) * 3 // 4]
    files["webp_trunc_header.webp"] = webp[:16]
    b = bytearray(webp)
    for i in range(40, len(b), 5):
        b[i] ^= 0xFF
    # Damaged VP8 data still decodes (to garbage), in libwebp as in Pillow:
    # a fuzz seed, not a bad file.
    webp_damaged = bytes(b)
    # VP8 key frame header rewritten to 16383 x 16383 (268 Mpx)
    assert webp[12:16] == b"VP8 " and webp[23:26] == b"\x9d\x01\x2a"
    b = bytearray(webp)
    b[26:30] = struct.pack("<HH", 16383, 16383)
    files["bomb_webp.webp"] = bytes(b)

    frames = [Image.fromarray(small_rgb(16, 16, s)) for s in range(2)]
    b = io.BytesIO()
    frames[0].save(b, "WEBP", save_all=True, append_images=frames[1:], duration=100)
    files["unsupported_animated.webp"] = b.getvalue()
    files["unsupported_gif.gif"] = enc(img, "GIF")
    files["unsupported_bmp.bmp"] = enc(img, "BMP")
    files["unsupported_tiff.tif"] = enc(img, "TIFF")

    for name, data in files.items():
        with open(os.path.join(bad, name), "wb") as f:
            f.write(data)

    # Seeds: small valid images of every kind, and a few bad ones.
    seed = {
        "ok.png": png, "ok.jpg": jpg, "ok_progressive.jpg": prog, "ok_lossy.webp": webp,
        "ok_lossless.webp": webpl,
        "ok_grey.jpg": enc(img.convert("L"), "JPEG"),
        "ok_cmyk.jpg": enc(img.convert("CMYK"), "JPEG"),
        "ok_rgba.png": enc(img.convert("RGBA"), "PNG"),
        "ok_palette.png": enc(img.convert("P"), "PNG"),
        "damaged.webp": webp_damaged,
        "ok_grey16.png": enc(img.convert("L").convert("I"), "PNG"),
    }
    for name in ("png_bad_zlib.png", "bomb_png.png", "jpeg_trunc_half.jpg", "bomb_webp.webp"):
        seed[name] = files[name]
    for name, data in seed.items():
        with open(os.path.join(seeds, name), "wb") as f:
            f.write(data)
    tmp = os.path.join(seeds, "ok_interlaced16.png")
    write_png(tmp, small_rgb(9, 7).astype(np.uint16) * 250, 16, 2, interlace=True)
    print(f"{len(files)} bad files, {len(seed) + 1} seeds")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
