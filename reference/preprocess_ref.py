#!/usr/bin/env python3
"""Reference for the Phi-3(.5)-vision image processor, and the fixtures the C
tests compare against.

The processor below is a port of the published processing_phi3_v.py
(Phi3VImageProcessor: convert_to_rgb, HD_transform, padding_336, ToTensor +
Normalize, bicubic global image, crop reshape, pad_to_max_num_crops_tensor),
run with the real libraries: Pillow for decoding, conversion, transpose and
the bilinear resize (through torchvision.transforms.functional), torch for
the normalisation and F.interpolate. Locally: Debian bookworm's python3-pil
9.4, python3-torch 1.13, python3-torchvision 0.14 (the JPEG, PNG and WebP
codecs Pillow uses are the system libjpeg62-turbo, zlib and libwebp that
libvlm links).

usage:
  preprocess_ref.py images  OUTDIR     write the input images (generated content)
  preprocess_ref.py cases   IMGDIR OUT write the expected outputs as JSON
  preprocess_ref.py run     IMAGE N PREFIX   one image -> PREFIX.f32 / PREFIX.json
                                       (the layout of `vlmtest preprocess`)
"""
import hashlib
import io
import json
import math
import os
import struct
import sys
import zlib

import numpy as np
import torch
import torchvision
from PIL import Image

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# --- the processor (after processing_phi3_v.py) -----------------------------

def padding_336(b):
    width, height = b.size
    tar = int(np.ceil(height / 336) * 336)
    top_padding = int((tar - height) / 2)
    bottom_padding = tar - height - top_padding
    b = torchvision.transforms.functional.pad(
        b, [0, top_padding, 0, bottom_padding], fill=[255, 255, 255])
    return b


def hd_transform(img, hd_num):
    width, height = img.size
    trans = False
    if width < height:
        img = img.transpose(Image.TRANSPOSE)
        trans = True
        width, height = img.size
    ratio = width / height
    scale = 1
    while scale * np.ceil(scale / ratio) <= hd_num:
        scale += 1
    scale -= 1
    new_w = int(scale * 336)
    new_h = int(new_w / ratio)
    img = torchvision.transforms.functional.resize(img, [new_h, new_w])
    img = padding_336(img)
    if trans:
        img = img.transpose(Image.TRANSPOSE)
    return img


def preprocess(image, num_crops):
    """image: a PIL image as opened. Returns (pixel_values [N+1,3,336,336],
    image_sizes [H, W], num_img_tokens, hd uint8 HxWx3, rgb uint8)."""
    rgb = image.convert("RGB")  # convert_to_rgb
    hd = hd_transform(rgb, num_crops)
    proc = torchvision.transforms.Compose([
        torchvision.transforms.ToTensor(),
        torchvision.transforms.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
    ])
    t = proc(hd)
    glb = torch.nn.functional.interpolate(t.unsqueeze(0).float(), size=(336, 336),
                                          mode="bicubic").to(t.dtype)
    h, w = t.size(1), t.size(2)
    tokens = int(((h // 336) * (w // 336) + 1) * 144 + 1 + (h // 336 + 1) * 12)
    tiles = t.reshape(1, 3, h // 336, 336, w // 336, 336).permute(0, 2, 4, 1, 3, 5) \
             .reshape(-1, 3, 336, 336).contiguous()
    pv = torch.cat([glb, tiles], dim=0)
    if pv.size(0) < num_crops + 1:  # pad_to_max_num_crops_tensor
        pad = torch.zeros(num_crops + 1 - pv.size(0), 3, 336, 336, dtype=pv.dtype)
        pv = torch.cat([pv, pad], dim=0)
    return pv, [h, w], tokens, np.asarray(hd, dtype=np.uint8), np.asarray(rgb, dtype=np.uint8)


# --- input images (generated, deterministic) ---------------------------------

def _chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)


def _pack_row(samples, depth):
    """samples: 1-D uint array of one scanline's samples -> packed bytes."""
    if depth == 16:
        return samples.astype(">u2").tobytes()
    if depth == 8:
        return samples.astype(np.uint8).tobytes()
    per = 8 // depth
    n = len(samples)
    pad = (-n) % per
    s = np.concatenate([samples.astype(np.uint8), np.zeros(pad, np.uint8)]).reshape(-1, per)
    out = np.zeros(len(s), np.uint8)
    for i in range(per):
        out |= (s[:, i] << (8 - depth * (i + 1))).astype(np.uint8)
    return out.tobytes()


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2)]


def write_png(path, arr, depth, ctype, plte=None, trns=None, interlace=False):
    """A PNG writer that controls what Pillow's cannot: bit depth, colour type,
    tRNS, Adam7. arr: [h][w][channels] (or [h][w]) of sample values."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    h, w, ch = arr.shape
    raw = b""
    if interlace:
        for (x0, y0, dx, dy) in ADAM7:
            sub = arr[y0::dy, x0::dx]
            if sub.shape[0] == 0 or sub.shape[1] == 0:
                continue
            for row in sub:
                raw += b"\x00" + _pack_row(row.reshape(-1), depth)
    else:
        for row in arr:
            raw += b"\x00" + _pack_row(row.reshape(-1), depth)
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0,
                                                             0, 1 if interlace else 0))
    if plte is not None:
        out += _chunk(b"PLTE", bytes(np.asarray(plte, np.uint8).reshape(-1)))
    if trns is not None:
        out += _chunk(b"tRNS", bytes(trns))
    out += _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(out)


def photo_like(w, h, seed):
    """Smooth colour fields with some edges and texture: compresses well,
    but exercises the resampler and the codecs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for c in range(3):
        fx, fy, ph = rng.uniform(0.5, 4, 3)
        img[:, :, c] = 127 + 90 * np.sin(2 * np.pi * (fx * x / w + fy * y / h) + ph)
    # a few discs and bars with sharp edges
    for _ in range(6):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.25) * min(w, h)
        col = rng.uniform(0, 255, 3)
        m = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        img[m] = col
    img += rng.normal(0, 6, img.shape)  # fine texture
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_images(out):
    os.makedirs(out, exist_ok=True)
    P = lambda n: os.path.join(out, n)
    Image.fromarray(photo_like(300, 500, 1)).save(P("portrait.png"), optimize=True)
    Image.fromarray(photo_like(640, 360, 2)).save(P("landscape.jpg"), quality=90)
    Image.fromarray(photo_like(256, 256, 3)).save(P("square.png"), optimize=True)
    Image.fromarray(np.array([[[200, 30, 90]]], np.uint8)).save(P("1x1.png"))
    Image.fromarray(photo_like(20, 700, 4)).save(P("20x700.png"), optimize=True)
    big = Image.fromarray(photo_like(4000, 3000, 5)).filter(
        __import__("PIL.ImageFilter", fromlist=["x"]).GaussianBlur(1.5))
    big.save(P("4000x3000.jpg"), quality=70)
    Image.fromarray(photo_like(333, 222, 6)[:, :, 1]).save(P("grey.png"))  # L, 8 bit
    Image.fromarray(photo_like(210, 180, 7)[:, :, 0]).save(P("grey.jpg"), quality=92)
    rgba = np.dstack([photo_like(240, 160, 8), np.linspace(0, 255, 240 * 160).reshape(160, 240)
                      .astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(P("rgba.png"))
    # 16-bit grey: most values above 255, so Pillow's clipping shows.
    g16 = photo_like(190, 150, 9)[:, :, 0].astype(np.uint16) * 257
    g16[:20] //= 600  # a band of small values (0..109) that survive the clip
    write_png(P("grey16.png"), g16, 16, 0)
    rgb16 = photo_like(170, 230, 10).astype(np.uint16) * 256 + 77
    write_png(P("rgb16.png"), rgb16, 16, 2)
    la16 = np.dstack([g16[:100, :100], g16[:100, :100][::-1]])
    write_png(P("la16.png"), la16, 16, 4)
    # palette, 4 bit, 11 PLTE entries, tRNS; indices up to 15 (past the PLTE)
    pal = np.random.default_rng(11).integers(0, 256, (11, 3))
    idx = (photo_like(123, 77, 12)[:, :, 2] // 16).astype(np.uint8)
    write_png(P("palette.png"), idx, 4, 3, plte=pal, trns=[0, 64, 128])
    write_png(P("grey2.png"), photo_like(65, 40, 13)[:, :, 0] // 64, 2, 0)
    write_png(P("grey1.png"), photo_like(77, 33, 14)[:, :, 1] // 128, 1, 0)
    write_png(P("interlaced.png"), photo_like(101, 67, 15), 8, 2, interlace=True)
    Image.fromarray(photo_like(400, 300, 16)).convert("CMYK").save(P("cmyk.jpg"), quality=90)
    Image.fromarray(photo_like(500, 400, 17)).save(P("progressive.jpg"), quality=85,
                                                     progressive=True)
    Image.fromarray(photo_like(360, 270, 18)).save(P("lossy.webp"), quality=80)
    Image.fromarray(rgba[:120, :150].copy(), "RGBA").save(P("alpha_lossless.webp"),
                                                          lossless=True, exact=True)


# --- expected outputs ----------------------------------------------------------

NUM_CROPS = [1, 4, 16]
GLOBAL_STRIDE = 331  # every 331st float of the global image is stored


def sha(b):
    return hashlib.sha256(b).hexdigest()


def make_cases(imgdir, out):
    cases = []
    for name in sorted(os.listdir(imgdir)):
        path = os.path.join(imgdir, name)
        im = Image.open(path)
        for n in NUM_CROPS:
            pv, sizes, tokens, hd, rgb = preprocess(im, n)
            h, w = sizes
            n_real = 1 + (h // 336) * (w // 336)
            v = pv.numpy().astype("<f4")
            glb = v[0].reshape(-1)
            cases.append({
                "image": name,
                "mode": im.mode,
                "width": im.size[0],
                "height": im.size[1],
                "num_crops": n,
                "shape": list(pv.shape),
                "image_sizes": sizes,
                "crop_grid": [h // 336, w // 336],
                "num_img_tokens": tokens,
                "rgb_u8_sha256": sha(rgb.tobytes()),
                "hd_rgb_u8_sha256": sha(hd.tobytes()),
                "crops_f32le_sha256": sha(v[1:n_real].tobytes()),
                "global_f32le_sha256": sha(v[0].tobytes()),
                "global_stride": GLOBAL_STRIDE,
                "global_subsample": [float(x) for x in glb[::GLOBAL_STRIDE]],
                "global_channel_mean": [float(v[0][c].astype(np.float64).mean()) for c in range(3)],
                "global_min": float(glb.min()),
                "global_max": float(glb.max()),
            })
            print(f"{name} N={n}: {im.mode} {im.size} -> {sizes} {tokens} tokens", file=sys.stderr)
    doc = {
        "description": "Expected Phi3V preprocessing outputs for the images in tests/data/images, "
                       "from reference/preprocess_ref.py (processing_phi3_v.py semantics).",
        "generator": f"Pillow {Image.__version__}, torch {torch.__version__}, "
                     f"torchvision {torchvision.__version__}",
        "layout": "rgb: decoded image H x W x 3 uint8 (Pillow convert('RGB')); hd: padded HD image "
                  "uint8; crops: pixel_values[1:1+hc*wc] float32 LE; global: pixel_values[0]; "
                  "global_subsample: global.flatten()[::global_stride].",
        "cases": cases,
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=0)
        f.write("\n")


def run_one(path, n, prefix):
    im = Image.open(path)
    pv, sizes, tokens, _, _ = preprocess(im, n)
    pv.numpy().astype("<f4").tofile(prefix + ".f32")
    with open(prefix + ".json", "w") as f:
        json.dump({"shape": list(pv.shape), "image_sizes": sizes, "num_img_tokens": tokens,
                   "crop_grid": [sizes[0] // 336, sizes[1] // 336]}, f)


if __name__ == "__main__":
    torch.set_num_threads(1)
    if len(sys.argv) == 3 and sys.argv[1] == "images":
        make_images(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "cases":
        make_cases(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 5 and sys.argv[1] == "run":
        run_one(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit(__doc__)
