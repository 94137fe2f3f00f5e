#!/usr/bin/env python3
"""Synthetic scenes with questions and answers for the bundled demo model.

A scene is a plain light background carrying either 1-4 flat-coloured shapes
(circle, square, triangle, star, diamond) or one large word or number. Sizes and
aspect ratios vary from 160 px up to 1344 px on the long side and from 4:1 to
1:4, so every Phi-3.5-vision HD crop grid (2x2, 1x2..1x4, 2x1..4x1) occurs.

Questions are short templates with short canonical answers ("red", "circle",
"3", "left", "first", "yes", "cat", "42"); dialogues of 2-4 turns refer back
to earlier answers and earlier images. Everything is a pure function of a
random.Random, so a seed reproduces the same images and text on any machine.

Module use (the trainer):

    import random, scenes
    s = scenes.sample(random.Random(1))        # or scenes.sample_at(seed, index)
    s["images"]  -> [PIL.Image RGB, ...]
    s["turns"]   -> [{"n_images_before": k, "prompt": str, "answer": str}, ...]

Turn t's user message carries the images with 0-based indices
[turns[t-1].n_images_before, turns[t].n_images_before) (0 for the first turn),
i.e. n_images_before counts the images shown up to and including this turn.

Command line:

    python3 reference/scenes.py suites --seed 777 --out suites
    python3 reference/scenes.py preview --seed 1 --n 12 --out /tmp/preview
    python3 reference/scenes.py corpus --seed 1 --n 1000
    python3 reference/scenes.py bench --n 500
"""

import argparse
import json
import math
import os
import random
import sys
import time

from PIL import Image, ImageDraw, ImageFont

# ---------------------------------------------------------------------------
# Vocabulary of the scenes

# Saturated colours, far apart in RGB and all dark or vivid enough to stand out
# on the light backgrounds below (white is left out for that reason).
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 150, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 0),
    "orange": (255, 128, 0),
    "purple": (140, 50, 180),
    "black": (25, 25, 25),
}
COLOUR_NAMES = list(COLOURS)
# Text colours: only the dark ones, so thin strokes keep their contrast.
TEXT_COLOURS = ["black", "blue", "red", "purple", "green"]

KINDS = ["circle", "square", "triangle", "star", "diamond"]
PLURAL = {k: k + "s" for k in KINDS}

# Short words that are neither colour nor shape names (so a text answer never
# collides with a scene answer); all 3-4 letters so they fit tall images.
WORDS = [
    "cat", "dog", "sun", "car", "box", "hat", "cup", "key", "map", "pen",
    "bus", "egg", "fox", "owl", "bee", "tree", "fish", "bird", "moon", "book",
    "cake", "lamp", "ship", "frog", "door", "ball", "milk", "rain", "leaf",
    "kite",
]

ORDINALS = ["first", "second"]

FONT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fonts",
                         "DejaVuSans-Bold.ttf")

# Shape outlines in a unit box [-0.5, 0.5]^2 (y down). Every shape of "size" s
# fits an s x s box; its area is AREA[kind] * s^2.
def _star(n_points=5, inner=0.45):
    pts = []
    for i in range(2 * n_points):
        r = 0.5 if i % 2 == 0 else 0.5 * inner
        a = -math.pi / 2 + i * math.pi / n_points
        pts.append((r * math.cos(a), r * math.sin(a)))
    # The star's lowest points sit at 0.5*cos(36 deg) = 0.40; centre it vertically.
    lo = max(p[1] for p in pts)
    shift = (0.5 - lo) / 2
    return [(x, y + shift) for x, y in pts]


POLYGONS = {
    "square": [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)],
    "triangle": [(0.0, -0.5), (0.5, 0.5), (-0.5, 0.5)],
    "diamond": [(0.0, -0.5), (0.5, 0.0), (0.0, 0.5), (-0.5, 0.0)],
    "star": _star(),
}


def _poly_area(pts):
    s = 0.0
    for i in range(len(pts)):
        x0, y0 = pts[i]
        x1, y1 = pts[(i + 1) % len(pts)]
        s += x0 * y1 - x1 * y0
    return abs(s) / 2


AREA = {k: _poly_area(p) for k, p in POLYGONS.items()}
AREA["circle"] = math.pi / 4

# Shape size levels as fractions of the image's short side. Neighbouring levels
# differ by about 1.5x in side length, so "bigger" questions have a clear answer.
SIZE_LEVELS = [0.20, 0.30, 0.44]

# A size question needs the area ratio at least this big, and the box sides to
# differ by at least SIZE_MIN_SIDE_RATIO (shapes of the same box differ in area).
SIZE_MIN_AREA_RATIO = 2.0
SIZE_MIN_SIDE_RATIO = 1.25

# Left/right (top/bottom) of the image: the shape centre must lie outside the
# middle band [0.42, 0.58] of the width (height).
SIDE_BAND = 0.42

# ---------------------------------------------------------------------------
# Image geometry


def hd_factor(w, h, num_crops=4):
    """Scale from the input image to Phi-3.5-vision's HD frame (spec section 3.2).

    Used only to size text: a glyph height in HD pixels says how many 14 px
    patches it covers in the high-resolution crops.
    """
    if w < h:
        w, h = h, w
    ratio = w / h
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    return scale * 336 / w


def pick_size(rng):
    """(width, height) of a new image; every crop grid of num_crops=4 occurs."""
    cat = rng.choices(["small", "square", "landscape", "portrait", "wide", "tall"],
                      weights=[2, 2, 2, 2, 1.5, 1.5])[0]
    if cat == "small":
        long_side = rng.randint(160, 336)
        aspect = rng.uniform(1.0, 1.6)
        portrait = rng.random() < 0.5
    elif cat == "square":
        long_side = rng.randint(300, 900)
        aspect = rng.uniform(1.0, 1.1)
        portrait = rng.random() < 0.5
    elif cat in ("landscape", "portrait"):
        long_side = rng.randint(400, 1344)
        aspect = rng.uniform(1.2, 2.0)
        portrait = cat == "portrait"
    else:
        # Up to 4.4:1 so that the 1x4 grid (aspect >= 4) occurs too.
        long_side = rng.randint(500, 1344)
        aspect = rng.uniform(2.0, 4.4)
        portrait = cat == "tall"
    short_side = max(100, int(round(long_side / aspect)))
    return (short_side, long_side) if portrait else (long_side, short_side)


def pick_background(rng):
    return tuple(rng.randint(222, 250) for _ in range(3))


# ---------------------------------------------------------------------------
# Scenes (pure data; rendering comes later, and only when images are needed)


class Shape:
    __slots__ = ("kind", "colour", "cx", "cy", "s")

    def __init__(self, kind, colour, cx, cy, s):
        self.kind, self.colour, self.cx, self.cy, self.s = kind, colour, cx, cy, s

    @property
    def area(self):
        return AREA[self.kind] * self.s * self.s


class Scene:
    """w, h in px; bg RGB; shapes list or text (str) with its font size and place."""

    def __init__(self, w, h, bg):
        self.w, self.h, self.bg = w, h, bg
        self.shapes = []
        self.text = None  # the word or the number, as the answer spells it
        self.text_is_number = False
        self.text_colour = None
        self.font_px = 0
        self.focus_kind = None  # the kind a counting question asks about
        self.text_xy = (0, 0)

    def count(self, kind=None):
        return sum(1 for s in self.shapes if kind is None or s.kind == kind)

    def has(self, kind=None, colour=None):
        return any((kind is None or s.kind == kind) and
                   (colour is None or s.colour == colour) for s in self.shapes)


def pick_kinds(rng, n):
    """n shape kinds: all distinct, free with repeats, or from a pool of two."""
    u = rng.random()
    if u < 0.5 or n == 1:
        return rng.sample(KINDS, n)
    if u < 0.8:
        return [rng.choice(KINDS) for _ in range(n)]
    pool = rng.sample(KINDS, 2)
    return [rng.choice(pool) for _ in range(n)]


def make_shape_scene(rng, n=None, kinds=None, size=None):
    """A scene of n shapes with distinct colours, non-overlapping boxes.

    kinds fixes the shape kinds (in any order); returns None when the shapes do
    not fit (callers retry with fresh randomness).
    """
    if kinds is not None:
        n = len(kinds)
    elif n is None:
        n = rng.randint(1, 4)
    if kinds is None:
        kinds = pick_kinds(rng, n)
    w, h = size if size else pick_size(rng)
    sc = Scene(w, h, pick_background(rng))
    short = min(w, h)
    margin = 0.03 * short
    gap = 0.06 * short
    colours = rng.sample(COLOUR_NAMES, n)
    for kind, colour in zip(kinds, colours):
        s = rng.choice(SIZE_LEVELS) * short * rng.uniform(0.94, 1.06)
        placed = False
        for attempt in range(60):
            if attempt in (20, 40):
                s *= 0.8
            lo_x, hi_x = margin + s / 2, w - margin - s / 2
            lo_y, hi_y = margin + s / 2, h - margin - s / 2
            if hi_x < lo_x or hi_y < lo_y:
                continue
            cx, cy = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
            if all(abs(cx - o.cx) >= (s + o.s) / 2 + gap or
                   abs(cy - o.cy) >= (s + o.s) / 2 + gap for o in sc.shapes):
                sc.shapes.append(Shape(kind, colour, cx, cy, s))
                placed = True
                break
        if not placed:
            return None
    return sc


_FONTS = {}


def _font(px):
    f = _FONTS.get(px)
    if f is None:
        # BASIC layout: the same glyph placement with or without libraqm.
        f = ImageFont.truetype(FONT_PATH, px, layout_engine=ImageFont.Layout.BASIC)
        _FONTS[px] = f
    return f


def _text_box(text, px):
    # Bounding box of the inked pixels relative to the drawing origin.
    return _font(px).getbbox(text)


def make_text_scene(rng, number=None, size=None):
    """A scene with one word or one 1-3 digit number in large bold letters.

    size (w, h) fixes the image size (the checks use it to get every grid).

    The font is sized in HD-frame pixels (about 60-100 px, i.e. 4-7 patches of
    14 px in a high-resolution crop), so the text is legible in the crops and
    2-4x smaller in the 336 px global view.
    """
    if number is None:
        number = rng.random() < 0.5
    w, h = size if size else pick_size(rng)
    sc = Scene(w, h, pick_background(rng))
    if number:
        digits = rng.randint(1, 3)
        lo = 0 if digits == 1 else 10 ** (digits - 1)
        sc.text = str(rng.randint(lo, 10 ** digits - 1))
        sc.text_is_number = True
        shown = sc.text
    else:
        sc.text = rng.choice(WORDS)
        shown = sc.text.upper()
    sc.text_colour = rng.choice(TEXT_COLOURS)
    px = max(12, int(rng.uniform(60, 100) / hd_factor(w, h)))
    while True:
        x0, y0, x1, y1 = _text_box(shown, px)
        if (x1 - x0 <= 0.85 * w and y1 - y0 <= 0.8 * h) or px <= 12:
            break
        px = max(12, int(px * 0.9))
    tw, th = x1 - x0, y1 - y0
    tx = rng.uniform(0.04 * w, max(0.04 * w, w - tw - 0.04 * w))
    ty = rng.uniform(0.04 * h, max(0.04 * h, h - th - 0.04 * h))
    sc.font_px = px
    sc.text_xy = (int(tx) - x0, int(ty) - y0)
    return sc


def draw_shape(d, s, fill):
    """Shape s drawn with ImageDraw d in fill: render() (its colour) and
    render_labels() (its class) share this one geometry."""
    if s.kind == "circle":
        r = s.s / 2
        d.ellipse([s.cx - r, s.cy - r, s.cx + r, s.cy + r], fill=fill)
    else:
        d.polygon([(s.cx + x * s.s, s.cy + y * s.s) for x, y in POLYGONS[s.kind]], fill=fill)


def render(sc):
    """The scene as an RGB PIL image: flat colours, no anti-aliasing.

    Without anti-aliasing an image holds at most 6 colours, which keeps PNGs
    tiny and makes the pixels independent of the Pillow version for shapes.
    """
    img = Image.new("RGB", (sc.w, sc.h), sc.bg)
    d = ImageDraw.Draw(img)
    for s in sc.shapes:
        draw_shape(d, s, COLOURS[s.colour])
    if sc.text is not None:
        d.fontmode = "1"
        shown = sc.text if sc.text_is_number else sc.text.upper()
        d.text(sc.text_xy, shown, fill=COLOURS[sc.text_colour], font=_font(sc.font_px))
    return img


# ---------------------------------------------------------------------------
# Per-pixel class maps (dense supervision for the vision tower)
#
# Class of a pixel, uint8:
#   0                                   background (nothing drawn)
#   1 + kind_index * 7 + colour_index   a shape: KINDS[kind_index] in
#                                       COLOUR_NAMES[colour_index] (1-35)
#   CHAR_BASE + i * 36 + CHARS.index(c) a pixel of glyph c at index i of the
#                                       shown text (i = 0..3; 36-179)
# Every class names one thing of its image: a scene's shapes have distinct
# colours (make_shape_scene), and a glyph's class carries its index in the
# text, so repeated letters ("TREE", "44") stay apart. scene_facts() gives a
# per-image table from class to the facts that relate a thing to the rest of
# its image (count of its kind, size rank, place; glyph order).
# The text colour is not part of a glyph's class (the scene's text_colour
# says it; one colour per scene).

CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MAX_GLYPHS = 4  # words have 3-4 letters, numbers 1-3 digits
N_SHAPE_CLASSES = len(KINDS) * len(COLOUR_NAMES)
CHAR_BASE = 1 + N_SHAPE_CLASSES
N_CLASSES = CHAR_BASE + MAX_GLYPHS * len(CHARS)


def shape_class(kind, colour):
    return 1 + KINDS.index(kind) * len(COLOUR_NAMES) + COLOUR_NAMES.index(colour)


def char_class(ch, index):
    """Class of glyph ch at index (0-based) of the shown text."""
    assert 0 <= index < MAX_GLYPHS, index
    return CHAR_BASE + index * len(CHARS) + CHARS.index(ch.upper())


def class_kind(c):
    """KINDS index of a shape class, -1 for background and glyphs."""
    return (c - 1) // len(COLOUR_NAMES) if 1 <= c < CHAR_BASE else -1


def class_colour(c):
    """COLOUR_NAMES index of a shape class, -1 for background and glyphs."""
    return (c - 1) % len(COLOUR_NAMES) if 1 <= c < CHAR_BASE else -1


def class_char(c):
    """CHARS index of a glyph class, -1 otherwise."""
    return (c - CHAR_BASE) % len(CHARS) if CHAR_BASE <= c < N_CLASSES else -1


def class_glyph(c):
    """Index in the shown text of a glyph class (0 = first), -1 otherwise."""
    return (c - CHAR_BASE) // len(CHARS) if CHAR_BASE <= c < N_CLASSES else -1


# Lookup tables over all N_CLASSES classes (index = class), for vectorised use.
CLASS_KIND = [class_kind(c) for c in range(N_CLASSES)]
CLASS_COLOUR = [class_colour(c) for c in range(N_CLASSES)]
CLASS_CHAR = [class_char(c) for c in range(N_CLASSES)]
CLASS_GLYPH = [class_glyph(c) for c in range(N_CLASSES)]


def _glyph_offsets(shown, font):
    """Pen x offset of every glyph of shown from the drawing origin, in px.

    getlength(prefix + c) - getlength(c) is the pen position of c including
    the kerning against its left neighbour, as the whole-string layout has it.
    """
    return [font.getlength(shown[:i + 1]) - font.getlength(shown[i])
            for i in range(len(shown))]


def render_labels(sc):
    """The scene's class map: uint8 numpy array [sc.h, sc.w] (classes above).

    Drawn with exactly the calls of render() (same ellipse/polygon geometry,
    no anti-aliasing), so a pixel has a shape class exactly where render()
    draws that shape's colour. Text: the ink is the whole string drawn as
    render() draws it (fontmode "1"); each ink pixel takes the class of the
    glyph that covers it when that glyph is drawn alone at its own advance
    offset, and the glyph's index in the text (char_class). A few edge
    pixels can differ between the two layouts by rounding of the fractional
    pen position; those take the nearest glyph along x.
    """
    import numpy as np

    img = Image.new("L", (sc.w, sc.h), 0)
    d = ImageDraw.Draw(img)
    for s in sc.shapes:
        draw_shape(d, s, shape_class(s.kind, s.colour))
    out = np.array(img, dtype=np.uint8)
    if sc.text is not None:
        shown = sc.text if sc.text_is_number else sc.text.upper()
        font = _font(sc.font_px)
        x0, y0 = sc.text_xy
        offs = _glyph_offsets(shown, font)
        # Everything is drawn into a crop around the text instead of the whole
        # image (the per-glyph draws dominated the cost). The crop's origin
        # (X0, Y0) is whole pixels and every drawing position stays positive
        # in it (or the origin is 0), so the fractional pen positions and
        # hence the pixels are those of drawing on the whole image.
        boxes = [font.getbbox(shown)] + [font.getbbox(c) for c in shown]
        lefts = [x0 + boxes[0][0]] + [x0 + off + b[0] for off, b in zip(offs, boxes[1:])]
        rights = [x0 + boxes[0][2]] + [x0 + off + b[2] for off, b in zip(offs, boxes[1:])]
        X0 = max(0, int(math.floor(min(lefts + [x0 + o for o in offs] + [x0]))) - 4)
        Y0 = max(0, min(y0, y0 + min(b[1] for b in boxes) - 4))
        X1 = min(sc.w, int(math.ceil(max(rights))) + 4)
        Y1 = min(sc.h, int(math.ceil(y0 + max(b[3] for b in boxes))) + 4)
        cw, ch = max(1, X1 - X0), max(1, Y1 - Y0)
        ink_img = Image.new("L", (cw, ch), 0)
        di = ImageDraw.Draw(ink_img)
        di.fontmode = "1"
        di.text((x0 - X0, y0 - Y0), shown, fill=255, font=font)
        ink = np.asarray(ink_img) > 0
        ys, xs = np.nonzero(ink)
        owner = np.full(len(ys), -1, dtype=np.int32)
        spans = []
        for i, off in enumerate(offs):
            g_img = Image.new("L", (cw, ch), 0)
            dg = ImageDraw.Draw(g_img)
            dg.fontmode = "1"
            dg.text((x0 - X0 + off, y0 - Y0), shown[i], fill=255, font=font)
            g = np.asarray(g_img) > 0
            gx = np.nonzero(g.any(axis=0))[0]
            spans.append((gx.min() + gx.max()) / 2 if len(gx) else x0 - X0 + off)
            hit = g[ys, xs] & (owner < 0)
            owner[hit] = i
        if np.any(owner < 0):
            miss = owner < 0
            centres = np.asarray(spans)
            owner[miss] = np.abs(xs[miss][:, None] - centres[None, :]).argmin(axis=1)
        cls = np.asarray([char_class(c, i) for i, c in enumerate(shown)], dtype=np.uint8)
        out[Y0 + ys, X0 + xs] = cls[owner]
    return out


# ---------------------------------------------------------------------------
# Referring to shapes and positions


def _refs(sc, i, allow_colour=True, allow_kind=True):
    """Noun phrases that pick out shape i alone in the scene."""
    s = sc.shapes[i]
    out = []
    if allow_colour and allow_kind:
        out.append("the %s %s" % (s.colour, s.kind))
    if allow_colour:
        out.append("the %s shape" % s.colour)
    if allow_kind and sc.count(s.kind) == 1:
        out.append("the " + s.kind)
    if len(sc.shapes) == 1 and not (allow_colour and allow_kind):
        out.append("the shape")
    return out


def _side(sc, i, axis):
    """'left'/'right' (axis 'x') or 'top'/'bottom' (axis 'y'), or None if central."""
    s = sc.shapes[i]
    v, dim = (s.cx, sc.w) if axis == "x" else (s.cy, sc.h)
    if v < SIDE_BAND * dim:
        return "left" if axis == "x" else "top"
    if v > (1 - SIDE_BAND) * dim:
        return "right" if axis == "x" else "bottom"
    return None


DIRECTIONS = {
    # direction: (axis, sign, phrases for "the shape <phrase>", adjective forms)
    "left": ("x", -1, ["furthest to the left", "on the far left"], ["leftmost"]),
    "right": ("x", 1, ["furthest to the right", "on the far right"], ["rightmost"]),
    "top": ("y", -1, ["at the top", "nearest the top"], ["highest", "topmost"]),
    "bottom": ("y", 1, ["at the bottom", "nearest the bottom"], ["lowest", "bottommost"]),
}


def _extreme(sc, direction):
    """Index of the shape furthest in direction, or None when not clear-cut.

    Clear-cut: its centre leads the runner-up by at least half the larger size.
    """
    if len(sc.shapes) < 2:
        return None
    axis, sign = DIRECTIONS[direction][:2]
    key = (lambda s: sign * (s.cx if axis == "x" else s.cy))
    order = sorted(range(len(sc.shapes)), key=lambda i: -key(sc.shapes[i]))
    a, b = sc.shapes[order[0]], sc.shapes[order[1]]
    if key(a) - key(b) < 0.5 * max(a.s, b.s):
        return None
    return order[0]


def _bigger(a, b):
    """True/False when a is clearly bigger/smaller than b, None when close."""
    big, small = (a, b) if a.area > b.area else (b, a)
    if big.area < SIZE_MIN_AREA_RATIO * small.area or big.s < SIZE_MIN_SIDE_RATIO * small.s:
        return None
    return big is a


# ---------------------------------------------------------------------------
# Facts per class: what relates a thing to the rest of its image
#
# scene_facts(sc) is a uint8 table [N_CLASSES, N_FACTS] over the classes of
# render_labels, 0 where a fact does not apply (the class is not drawn, or is
# not a shape / not a glyph):
#   FACT_COUNT   shape: how many shapes of its kind the image has (1-4)
#   FACT_BIGGER  shape: 1 + how many shapes are clearly bigger (_bigger), 1-4;
#                if a is clearly bigger than b, a's value is the lower, so
#                every size question is a comparison of these two values
#   FACT_PLACE   shape: PLACE_BITS, bit set where the shape is on that side
#                of the image (_side) or the clear-cut extreme (_extreme);
#                as the questions define them (may be 0 for a drawn shape)
#   FACT_SLOT    glyph: glyph_slot(index, text length), 1-N_SLOTS: its
#                place in the reading order and whether it is the last

FACT_COUNT, FACT_BIGGER, FACT_PLACE, FACT_SLOT = range(4)
N_FACTS = 4
MAX_SHAPES = 4
# (fact, axis or direction): sides of the image, then the extremes
PLACE_BITS = [("side", "left"), ("side", "right"), ("side", "top"), ("side", "bottom"),
              ("extreme", "left"), ("extreme", "right"), ("extreme", "top"),
              ("extreme", "bottom")]
N_SLOTS = MAX_GLYPHS * (MAX_GLYPHS + 1) // 2


def glyph_slot(index, n):
    """1-based slot of glyph index (0-based) in a text of n glyphs: one value
    per (index, n) pair, 1 for a single glyph, 2-3 for two, 4-6 for three,
    7-10 for four."""
    assert 0 <= index < n <= MAX_GLYPHS, (index, n)
    return 1 + n * (n - 1) // 2 + index


def slot_index_length(slot):
    """(index, n) of a glyph_slot value."""
    n = 1
    while slot > n * (n + 1) // 2:
        n += 1
    return slot - 1 - n * (n - 1) // 2, n


def shape_place_bits(sc, i):
    """PLACE_BITS of shape i as a bit mask."""
    bits = 0
    sides = (_side(sc, i, "x"), _side(sc, i, "y"))
    for b, (what, d) in enumerate(PLACE_BITS):
        if what == "side" and d in sides:
            bits |= 1 << b
        elif what == "extreme" and _extreme(sc, d) == i:
            bits |= 1 << b
    return bits


def scene_facts(sc):
    """uint8 numpy [N_CLASSES, N_FACTS]: the facts above for every class the
    scene draws (render_labels), 0 elsewhere."""
    import numpy as np

    out = np.zeros((N_CLASSES, N_FACTS), dtype=np.uint8)
    for i, s in enumerate(sc.shapes):
        c = shape_class(s.kind, s.colour)
        assert not out[c].any(), "two shapes of one class"
        out[c, FACT_COUNT] = sc.count(s.kind)
        out[c, FACT_BIGGER] = 1 + sum(1 for o in sc.shapes if o is not s and _bigger(o, s))
        out[c, FACT_PLACE] = shape_place_bits(sc, i)
    if sc.text is not None:
        shown = sc.text if sc.text_is_number else sc.text.upper()
        for i, ch in enumerate(shown):
            out[char_class(ch, i), FACT_SLOT] = glyph_slot(i, len(shown))
    return out


# ---------------------------------------------------------------------------
# Single questions: f(rng, scene) -> (prompt, answer) or None if not askable.


def q_colour(rng, sc):
    i = rng.randrange(len(sc.shapes))
    refs = _refs(sc, i, allow_colour=False)
    if not refs:
        return None
    ref = rng.choice(refs)
    t = rng.choice(["What colour is %s?", "What is the colour of %s?",
                    "Which colour does %s have?", "What color is %s?"])
    return t % ref, sc.shapes[i].colour


def q_shape(rng, sc):
    i = rng.randrange(len(sc.shapes))
    s = sc.shapes[i]
    if len(sc.shapes) == 1 and rng.random() < 0.4:
        t = rng.choice(["What shape is this?", "What shape is in the image?",
                        "What shape do you see?"])
        return t, s.kind
    t = rng.choice(["What shape is the %s object?", "What is the %s shape?",
                    "Which shape is %s?", "What kind of shape is the %s one?"])
    return t % s.colour, s.kind


def q_count(rng, sc):
    t = rng.choice(["How many shapes are there?", "How many shapes are in the image?",
                    "Count the shapes in the picture.", "How many objects can you see?"])
    return t, str(len(sc.shapes))


def _scene_with_count(rng, kind, k, n):
    others = [x for x in KINDS if x != kind]
    kinds = [kind] * k + [rng.choice(others) for _ in range(n - k)]
    rng.shuffle(kinds)
    return make_shape_scene(rng, kinds=kinds)


def make_count_scene(rng):
    """A scene with k shapes of one kind (k = 0..4, about evenly) among 1-4 shapes.

    Random kinds would make "how many circles" almost always 0 or 1.
    """
    k = rng.choices([0, 1, 2, 3, 4], weights=[1, 1.5, 1.5, 1.5, 1])[0]
    kind = rng.choice(KINDS)
    sc = _scene_with_count(rng, kind, k, rng.randint(max(k, 1), 4))
    if sc is not None:
        sc.focus_kind = kind
    return sc


def q_count_kind(rng, sc):
    kind = sc.focus_kind or rng.choice(sc.shapes).kind
    t = rng.choice(["How many %s are there?", "How many %s can you see?",
                    "Count the %s.", "How many %s are in the image?"])
    return t % PLURAL[kind], str(sc.count(kind))


def q_position(rng, sc):
    i = rng.randrange(len(sc.shapes))
    axis = rng.choice(["x", "y"])
    ans = _side(sc, i, axis)
    if ans is None:
        return None
    ref = rng.choice(_refs(sc, i))
    if axis == "x":
        t = rng.choice(["Is %s on the left or the right?", "Is %s on the right or the left?",
                        "Is %s on the left or right side of the image?"])
    else:
        t = rng.choice(["Is %s at the top or the bottom?", "Is %s at the bottom or the top?",
                        "Is %s in the top or bottom half of the image?"])
    return t % ref, ans


def q_extreme(rng, sc):
    direction = rng.choice(list(DIRECTIONS))
    i = _extreme(sc, direction)
    if i is None:
        return None
    phrases, adjectives = DIRECTIONS[direction][2:]
    s = sc.shapes[i]
    if rng.random() < 0.5:
        t = rng.choice(["Which shape is %s?" % rng.choice(phrases),
                        "What is the %s shape?" % rng.choice(adjectives)])
        return t, s.kind
    t = rng.choice(["What colour is the shape %s?" % rng.choice(phrases),
                    "What colour is the %s shape?" % rng.choice(adjectives)])
    return t, s.colour


def q_size(rng, sc):
    n = len(sc.shapes)
    pairs = [(i, j) for i in range(n) for j in range(n)
             if i < j and _bigger(sc.shapes[i], sc.shapes[j]) is not None]
    if not pairs:
        return None
    i, j = rng.choice(pairs)
    if rng.random() < 0.5:
        i, j = j, i
    a, b = sc.shapes[i], sc.shapes[j]
    by_kind = sc.count(a.kind) == 1 and sc.count(b.kind) == 1 and rng.random() < 0.6
    if by_kind:
        ra, rb, wa, wb = "the " + a.kind, "the " + b.kind, a.kind, b.kind
    else:
        ra, rb = "the %s shape" % a.colour, "the %s shape" % b.colour
        wa, wb = a.colour, b.colour
    a_bigger = _bigger(a, b)
    if rng.random() < 0.5:
        t = rng.choice(["Which is bigger, %s or %s?", "Which is larger, %s or %s?"])
        ans = wa if a_bigger else wb
    else:
        t = "Which is smaller, %s or %s?"
        ans = wb if a_bigger else wa
    return t % (ra, rb), ans


def q_yesno(rng, sc):
    mode = rng.randrange(3)
    want_yes = rng.random() < 0.5
    s = rng.choice(sc.shapes)
    if mode == 0:
        # "Is there a blue triangle?": the no-cases are near misses (the colour
        # or the kind is present, but not the pair), so colour and kind must bind.
        if want_yes:
            colour, kind = s.colour, s.kind
        else:
            cands = [(c, k) for c in COLOUR_NAMES for k in KINDS
                     if not sc.has(k, c) and (sc.has(colour=c) or sc.has(kind=k))]
            colour, kind = rng.choice(cands)
        t = rng.choice(["Is there a %s %s?", "Is there a %s %s in the image?",
                        "Do you see a %s %s?"])
        return t % (colour, kind), "yes" if sc.has(kind, colour) else "no"
    if mode == 1:
        if want_yes:
            kind = s.kind
        else:
            absent = [k for k in KINDS if not sc.has(kind=k)]
            if not absent:
                return None
            kind = rng.choice(absent)
        t = rng.choice(["Is there a %s in the image?", "Is there a %s?",
                        "Can you see a %s?"])
        return t % kind, "yes" if sc.has(kind=kind) else "no"
    kind = s.kind if want_yes else rng.choice([k for k in KINDS if k != s.kind])
    t = rng.choice(["Is the %s shape a %s?", "Is the %s object a %s?"])
    return t % (s.colour, kind), "yes" if kind == s.kind else "no"


def q_word(rng, sc):
    t = rng.choice(["What word is written in the image?", "What does the text say?",
                    "Read the word in the picture.", "What is written in the image?"])
    return t, sc.text


def q_number(rng, sc):
    t = rng.choice(["What number is shown in the image?", "What number is written here?",
                    "Which number do you see?", "What is written in the image?"])
    return t, sc.text


# question type -> (generator, scene maker, default scorer)
QUESTION_TYPES = {
    "colour": (q_colour, lambda rng: make_shape_scene(rng), "exact"),
    "shape": (q_shape, lambda rng: make_shape_scene(rng), "exact"),
    "count": (q_count, lambda rng: make_shape_scene(rng), "number"),
    "count_kind": (q_count_kind, make_count_scene, "number"),
    "position": (q_position, lambda rng: make_shape_scene(rng), "exact"),
    "extreme": (q_extreme, lambda rng: make_shape_scene(rng, n=rng.randint(2, 4)), "exact"),
    "size": (q_size, lambda rng: make_shape_scene(rng, n=rng.randint(2, 4)), "exact"),
    "yesno": (q_yesno, lambda rng: make_shape_scene(rng), "yes_no"),
    "word": (q_word, lambda rng: make_text_scene(rng, number=False), "exact"),
    "number": (q_number, lambda rng: make_text_scene(rng, number=True), "number"),
}


def question(rng, qtype):
    """(scene, prompt, answer) for one question of qtype; retries until askable."""
    gen, make, _ = QUESTION_TYPES[qtype]
    for _ in range(1000):
        sc = make(rng)
        if sc is None:
            continue
        qa = gen(rng, sc)
        if qa is not None:
            return sc, qa[0], qa[1]
    raise RuntimeError("no askable scene for question type " + qtype)


# ---------------------------------------------------------------------------
# Dialogues: f(rng) -> (scenes, turns) or None; a turn is
# (n_images_before, prompt, answer, scorer).

IT_COLOUR = ["What colour was the shape you just named?", "What colour is it?",
             "And what colour is that shape?"]
IT_SHAPE = ["What shape is it?", "Which shape was that?", "And what kind of shape is that?"]


def d_name_then_colour(rng):
    sc = make_shape_scene(rng)
    if sc is None:
        return None
    if len(sc.shapes) == 1:
        i = 0
        p1 = rng.choice(["What shape is this?", "What shape is in the image?"])
    else:
        direction = rng.choice(list(DIRECTIONS))
        i = _extreme(sc, direction)
        if i is None:
            return None
        p1 = "Which shape is %s?" % rng.choice(DIRECTIONS[direction][2])
    s = sc.shapes[i]
    turns = [(1, p1, s.kind, "exact"), (1, rng.choice(IT_COLOUR), s.colour, "exact")]
    side = _side(sc, i, "x")
    if side is not None and rng.random() < 0.6:
        turns.append((1, rng.choice(["Is it on the left or the right?",
                                     "Is that shape on the left or the right?"]), side, "exact"))
    return [sc], turns


def d_colour_then_shape(rng):
    sc = make_shape_scene(rng, n=rng.randint(2, 4))
    if sc is None:
        return None
    direction = rng.choice(list(DIRECTIONS))
    i = _extreme(sc, direction)
    if i is None:
        return None
    s = sc.shapes[i]
    p1 = rng.choice(["What colour is the shape %s?" % rng.choice(DIRECTIONS[direction][2]),
                     "What colour is the %s shape?" % rng.choice(DIRECTIONS[direction][3])])
    turns = [(1, p1, s.colour, "exact"), (1, rng.choice(IT_SHAPE), s.kind, "exact")]
    if rng.random() < 0.6:
        turns.append((1, rng.choice(["How many shapes are there in total?",
                                     "And how many shapes are there altogether?"]),
                      str(len(sc.shapes)), "number"))
    return [sc], turns


def count_comparison_turn(what, a, b, more):
    """The turn that asks which of two images had more (more) or fewer
    `what` (a plural: "shapes", "stars"), with a and b of them."""
    if more:
        return (2, "Which of the two images had more %s?" % what, ORDINALS[0 if a > b else 1],
                "exact")
    return (2, "Which image had fewer %s, the first or the second?" % what,
            ORDINALS[0 if a < b else 1], "exact")


def text_recall_turn(scenes, which):
    """The turn that asks what image `which` (0, 1) of scenes said."""
    sc = scenes[which]
    return (2, "What was written in the %s image?" % ORDINALS[which], sc.text,
            "number" if sc.text_is_number else "exact")


def same_kind_turn(s1, s2):
    """The turn that asks whether the one shapes of s1 and s2 share a kind."""
    return (2, "Were the two shapes of the same kind?",
            "yes" if s1.shapes[0].kind == s2.shapes[0].kind else "no", "yes_no")


def d_two_image_count(rng):
    by_kind = rng.random() < 0.6
    if by_kind:
        kind = rng.choice(KINDS)
        a, b = rng.sample(range(0, 4), 2)
        n1, n2 = rng.randint(max(1, a), 4), rng.randint(max(1, b), 4)
        s1, s2 = _scene_with_count(rng, kind, a, n1), _scene_with_count(rng, kind, b, n2)
        what = PLURAL[kind]
    else:
        a, b = rng.sample(range(1, 5), 2)
        s1, s2 = make_shape_scene(rng, n=a), make_shape_scene(rng, n=b)
        what = "shapes"
    if s1 is None or s2 is None:
        return None
    turns = [
        (1, rng.choice(["How many %s are in this image?", "How many %s do you see here?"]) % what,
         str(a), "number"),
        (2, rng.choice(["And how many %s are in this one?", "How many %s does this image have?"])
         % what, str(b), "number"),
    ]
    turns.append(count_comparison_turn(what, a, b, more=rng.random() < 0.5))
    if rng.random() < 0.5:
        which = rng.randrange(2)
        sc = (s1, s2)[which]
        turns.append((2, "How many shapes were in the %s image?" % ORDINALS[which],
                      str(len(sc.shapes)), "number"))
    return [s1, s2], turns


def d_two_image_text(rng):
    first_number = rng.random() < 0.5
    s1 = make_text_scene(rng, number=first_number)
    s2 = make_text_scene(rng, number=not first_number)
    turns = [
        (1, rng.choice(["What is written in this image?", "What does the text say?"]), s1.text,
         "number" if s1.text_is_number else "exact"),
        (2, rng.choice(["And what is written in this one?", "What does this one say?"]), s2.text,
         "number" if s2.text_is_number else "exact"),
    ]
    u = rng.random()
    if u < 0.4:
        turns.append(text_recall_turn((s1, s2), rng.randrange(2)))
    elif u < 0.7:
        turns.append((2, "Which image showed a number, the first or the second?",
                      ORDINALS[0 if first_number else 1], "exact"))
    else:
        turns.append((2, "Which image showed a word, the first or the second?",
                      ORDINALS[1 if first_number else 0], "exact"))
    return [s1, s2], turns


def d_count_then_detail(rng):
    sc = make_shape_scene(rng, n=rng.randint(2, 4))
    if sc is None:
        return None
    kind = rng.choice(sc.shapes).kind if rng.random() < 0.8 else rng.choice(KINDS)
    colour = rng.choice(COLOUR_NAMES)
    turns = [
        (1, rng.choice(["How many shapes are there?", "How many shapes are in the image?"]),
         str(len(sc.shapes)), "number"),
        (1, rng.choice(["How many of them are %s?", "And how many of those are %s?"])
         % PLURAL[kind], str(sc.count(kind)), "number"),
        (1, rng.choice(["Is one of them %s?", "Is any of them %s?"]) % colour,
         "yes" if sc.has(colour=colour) else "no", "yes_no"),
    ]
    return [sc], turns


def d_two_image_compare(rng):
    s1, s2 = make_shape_scene(rng, n=1), make_shape_scene(rng, n=1)
    if s1 is None or s2 is None:
        return None
    if rng.random() < 0.4:
        # Equal kinds often enough that "the same kind" is not always "no".
        s2.shapes[0].kind = s1.shapes[0].kind
    a, b = s1.shapes[0], s2.shapes[0]
    turns = [
        (1, rng.choice(["What colour is this shape?", "What colour is the shape?"]), a.colour,
         "exact"),
        (2, rng.choice(["And what colour is this one?", "What colour is the shape here?"]),
         b.colour, "exact"),
    ]
    which = rng.randrange(2)
    turns.append((2, "What shape was in the %s image?" % ORDINALS[which], (a, b)[which].kind,
                  "exact"))
    if rng.random() < 0.6:
        turns.append(same_kind_turn(s1, s2))
    return [s1, s2], turns


DIALOGUE_TYPES = {
    "name_then_colour": d_name_then_colour,
    "colour_then_shape": d_colour_then_shape,
    "two_image_count": d_two_image_count,
    "two_image_text": d_two_image_text,
    "count_then_detail": d_count_then_detail,
    "two_image_compare": d_two_image_compare,
}


def dialogue(rng, dtype, table=None):
    """(scenes, turns) of dialogue type dtype; table maps type names to
    generators (DIALOGUE_TYPES where None: the suites always use those)."""
    gen = (table or DIALOGUE_TYPES)[dtype]
    for _ in range(1000):
        r = gen(rng)
        if r is not None:
            return r
    raise RuntimeError("no dialogue of type " + dtype)


# ---------------------------------------------------------------------------
# Training samples


def _pick(rng, names, weights):
    if not weights:
        return rng.choice(names)
    return rng.choices(names, weights=[weights.get(n, 1.0) for n in names])[0]


def sample_scenes(rng, p_dialogue=0.3, weights=None, dialogues=None):
    """One sample as scenes (not yet rendered) plus turns; see sample().
    dialogues replaces generators of DIALOGUE_TYPES by name (a trainer's own
    variants; the types and their order stay those of DIALOGUE_TYPES)."""
    if rng.random() < p_dialogue:
        dtype = _pick(rng, list(DIALOGUE_TYPES), weights)
        scenes, turns = dialogue(rng, dtype, dict(DIALOGUE_TYPES, **(dialogues or {})))
        tag = dtype
    else:
        qtype = _pick(rng, list(QUESTION_TYPES), weights)
        sc, prompt, answer = question(rng, qtype)
        scenes, turns = [sc], [(1, prompt, answer, QUESTION_TYPES[qtype][2])]
        tag = qtype
    return {
        "scenes": scenes,
        "turns": [{"n_images_before": k, "prompt": p, "answer": a} for k, p, a, _ in turns],
        "tag": tag,
    }


def sample(rng, p_dialogue=0.3, weights=None):
    """A training sample: {"images": [PIL RGB], "turns": [...], "tag": type}.

    Single questions (probability 1 - p_dialogue) have one turn and one image;
    dialogues have 2-4 turns and one or two images. weights maps question and
    dialogue type names (QUESTION_TYPES, DIALOGUE_TYPES) to relative weights
    (default 1 each), e.g. {"number": 2.0} to oversample text reading.
    """
    s = sample_scenes(rng, p_dialogue, weights)
    s["images"] = [render(sc) for sc in s.pop("scenes")]
    return s


def sample_at(seed, index, p_dialogue=0.3, weights=None):
    """Sample number index of the stream seed, independent of worker layout."""
    return sample(random.Random(seed * 1000003 + index), p_dialogue, weights)


def all_answer_strings():
    """Every answer the generator can produce, sorted."""
    out = set(COLOUR_NAMES) | set(KINDS) | set(WORDS) | set(ORDINALS)
    out |= {"yes", "no", "left", "right", "top", "bottom"}
    out |= {str(i) for i in range(1000)}
    return sorted(out)


def corpus_text(n, seed=0):
    """n lines of prompt/answer text (one sample per line) for tokenizer training.

    Scenes are not rendered, so this is fast. Each template and answer word
    appears many times for n in the thousands; all_answer_strings() adds the rare
    numbers.
    """
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        s = sample_scenes(rng, p_dialogue=0.5)
        lines.append(" ".join(t["prompt"] + " " + t["answer"] for t in s["turns"]))
    return lines


# ---------------------------------------------------------------------------
# Test suites in the tester's format


def save_png(img, path):
    # Plain RGB: the flat colours compress to a few KB per image anyway, and an
    # RGB PNG needs no palette expansion in the reader.
    img.save(path, optimize=True)



def suite_expected(scorer, answer):
    """The "number" scorer of vlmtest takes a JSON number (docs/tester.md)."""
    return int(answer) if scorer == "number" else answer


def write_suites(seed, out, n_smoke_per_type=13, n_ctx_per_type=7):
    rng = random.Random(seed)
    # --- smoke: single-image questions, balanced over the question types ---
    sdir = os.path.join(out, "smoke")
    os.makedirs(os.path.join(sdir, "images"), exist_ok=True)
    cases = []
    qtypes = list(QUESTION_TYPES)
    for r in range(n_smoke_per_type):
        for qtype in qtypes:
            sc, prompt, answer = question(rng, qtype)
            cid = "smoke-%03d" % (len(cases) + 1)
            rel = "images/%s.png" % cid
            save_png(render(sc), os.path.join(sdir, rel))
            scorer = QUESTION_TYPES[qtype][2]
            # Every third colour/shape case uses "contains" so that scorer is covered.
            if qtype in ("colour", "shape", "position") and r % 3 == 2:
                scorer = "contains"
            cases.append({"id": cid, "images": [rel], "prompt": prompt,
                          "expected": suite_expected(scorer, answer),
                          "scorer": scorer,
                          "tags": [qtype, "%dx%d" % (sc.w, sc.h)]})
    with open(os.path.join(sdir, "suite.json"), "w") as f:
        json.dump({"name": "smoke",
                   "description": "Synthetic scenes (reference/scenes.py, seed %d): colour, "
                                  "shape, count, position, relative size, yes/no and text "
                                  "reading, one image per case." % seed,
                   "defaults": {"max_tokens": 16, "temperature": 0}}, f, indent=2)
        f.write("\n")
    with open(os.path.join(sdir, "cases.jsonl"), "w") as f:
        for c in cases:
            f.write(json.dumps(c) + "\n")
    # --- context: dialogues of 2-4 turns, one or two images ---
    cdir = os.path.join(out, "context")
    os.makedirs(os.path.join(cdir, "images"), exist_ok=True)
    convs = []
    dtypes = list(DIALOGUE_TYPES)
    for _ in range(n_ctx_per_type):
        for dtype in dtypes:
            scenes, turns = dialogue(rng, dtype)
            cid = "ctx-%03d" % (len(convs) + 1)
            rels = []
            for j, sc in enumerate(scenes):
                rel = "images/%s-%d.png" % (cid, j + 1)
                save_png(render(sc), os.path.join(cdir, rel))
                rels.append(rel)
            out_turns, shown = [], 0
            for k, prompt, answer, scorer in turns:
                out_turns.append({"images": rels[shown:k], "prompt": prompt,
                                  "expected": suite_expected(scorer, answer),
                                  "scorer": scorer})
                shown = k
            convs.append({"id": cid, "turns": out_turns, "tags": [dtype]})
    with open(os.path.join(cdir, "suite.json"), "w") as f:
        json.dump({"name": "context", "kind": "context",
                   "description": "Synthetic dialogues (reference/scenes.py, seed %d) whose "
                                  "later turns refer to earlier answers and earlier images."
                                  % seed,
                   "defaults": {"max_tokens": 16, "temperature": 0}}, f, indent=2)
        f.write("\n")
    with open(os.path.join(cdir, "cases.jsonl"), "w") as f:
        for c in convs:
            f.write(json.dumps(c) + "\n")
    return len(cases), len(convs)


# ---------------------------------------------------------------------------
# Command line


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("suites", help="write the held-out smoke and context suites")
    p.add_argument("--seed", type=int, default=777)
    p.add_argument("--smoke-per-type", type=int, default=13,
                   help="smoke cases per question type (13: the committed suite)")
    p.add_argument("--ctx-per-type", type=int, default=7,
                   help="conversations per dialogue type (7: the committed suite)")
    p.add_argument("--out", required=True)
    p = sub.add_parser("preview", help="write n training samples as PNG + JSON")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--n", type=int, default=12)
    p.add_argument("--out", required=True)
    p = sub.add_parser("corpus", help="print tokenizer training text")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--n", type=int, default=1000)
    p = sub.add_parser("bench", help="time sample() including rendering")
    p.add_argument("--n", type=int, default=500)
    a = ap.parse_args(argv)

    if a.cmd == "suites":
        n, m = write_suites(a.seed, a.out, a.smoke_per_type, a.ctx_per_type)
        print("wrote %d smoke cases and %d context conversations under %s" % (n, m, a.out))
    elif a.cmd == "preview":
        os.makedirs(a.out, exist_ok=True)
        meta = []
        for i in range(a.n):
            s = sample_at(a.seed, i)
            names = []
            for j, img in enumerate(s["images"]):
                names.append("%03d-%d.png" % (i, j + 1))
                img.save(os.path.join(a.out, names[-1]))
            meta.append({"images": names, "turns": s["turns"], "tag": s["tag"]})
        with open(os.path.join(a.out, "samples.json"), "w") as f:
            json.dump(meta, f, indent=1)
        print("wrote %d samples under %s" % (a.n, a.out))
    elif a.cmd == "corpus":
        for line in corpus_text(a.n, a.seed):
            print(line)
    elif a.cmd == "bench":
        rng = random.Random(0)
        t0 = time.perf_counter()
        npx = 0
        for _ in range(a.n):
            s = sample(rng)
            npx += sum(im.size[0] * im.size[1] for im in s["images"])
        dt = time.perf_counter() - t0
        print("%d samples in %.2f s: %.2f ms/sample, %.2f Mpx/sample"
              % (a.n, dt, 1000 * dt / a.n, npx / a.n / 1e6))
    return 0


if __name__ == "__main__":
    sys.exit(main())
