#!/usr/bin/env python3
"""Checks of reference/scenes.py: answers against the rendered pixels, determinism,
and the committed suites against a fresh regeneration.

Run: python3 reference/test_scenes.py   (needs Pillow and numpy)
"""

import json
import os
import random
import sys
import tempfile
import unittest

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import scenes  # noqa: E402

ROOT = os.path.dirname(HERE)


def _codes(img):
    a = np.asarray(img).astype(np.int32)
    return (a[:, :, 0] << 16) | (a[:, :, 1] << 8) | a[:, :, 2]


def _code(rgb):
    return (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]


def measure(sc):
    """Per colour name: (pixel count, centroid x, centroid y), from the pixels only."""
    c = _codes(scenes.render(sc))
    out = {}
    drawn = c != _code(sc.bg)
    for name, rgb in scenes.COLOURS.items():
        ys, xs = np.nonzero(c == _code(rgb))
        if len(xs):
            out[name] = (len(xs), xs.mean(), ys.mean())
    other = int(drawn.sum()) - sum(v[0] for v in out.values())
    return out, other


def find_shape(sc, prompt):
    """The shape a prompt names: by its colour word, else by its (unique) kind word."""
    words = prompt.lower().replace("?", " ").replace(".", " ").replace(",", " ").split()
    for s in sc.shapes:
        if s.colour in words:
            return s
    hits = [s for s in sc.shapes if s.kind in words]
    assert len(hits) == 1 or len(sc.shapes) == 1, prompt
    return hits[0] if hits else sc.shapes[0]


class ShapePixels(unittest.TestCase):
    def test_shapes_are_drawn_whole_and_apart(self):
        # Every shape shows as exactly its colour, with the area its geometry
        # implies (so none is hidden under another), and nothing else is drawn.
        rng = random.Random(11)
        for _ in range(120):
            sc = None
            while sc is None:
                sc = scenes.make_shape_scene(rng)
            px, other = measure(sc)
            self.assertEqual(other, 0)
            self.assertEqual(sorted(px), sorted(s.colour for s in sc.shapes))
            for s in sc.shapes:
                n, cx, cy = px[s.colour]
                self.assertAlmostEqual(n / s.area, 1.0, delta=0.12 + 40.0 / s.s)
                self.assertLess(abs(cx - s.cx), 0.1 * s.s + 1)
                self.assertLess(abs(cy - s.cy), 0.2 * s.s + 1)

    def check_answer(self, qtype, sc, prompt, answer):
        px, _ = measure(sc)
        if qtype == "count":
            self.assertEqual(int(answer), len(px))
        elif qtype == "count_kind":
            kind = [k for k in scenes.KINDS if scenes.PLURAL[k] in prompt][0]
            self.assertEqual(int(answer), sum(1 for s in sc.shapes if s.kind == kind))
        elif qtype == "colour":
            self.assertEqual(answer, find_shape(sc, prompt).colour)
            self.assertNotIn(answer, prompt)
        elif qtype == "shape":
            self.assertEqual(answer, find_shape(sc, prompt).kind)
            self.assertNotIn(answer, prompt)
        elif qtype == "position":
            s = find_shape(sc, prompt)
            _, cx, cy = px[s.colour]
            if answer in ("left", "right"):
                self.assertEqual(answer, "left" if cx < sc.w / 2 else "right")
                self.assertGreater(abs(cx - sc.w / 2), 0.05 * sc.w)
            else:
                self.assertEqual(answer, "top" if cy < sc.h / 2 else "bottom")
                self.assertGreater(abs(cy - sc.h / 2), 0.05 * sc.h)
        elif qtype == "extreme":
            d = [k for k, v in scenes.DIRECTIONS.items()
                 if any(p in prompt for p in v[2] + v[3])][0]
            axis = 1 if d in ("left", "right") else 2
            sign = 1 if d in ("left", "top") else -1
            best = min(px, key=lambda c: sign * px[c][axis])
            s = [s for s in sc.shapes if s.colour == best][0]
            self.assertIn(answer, (s.colour, s.kind))
            self.assertEqual(answer, s.colour if "colour" in prompt else s.kind)
        elif qtype == "size":
            left, right = prompt.split(",")[1].split(" or ")
            a, b = find_shape(sc, left), find_shape(sc, right)
            na, nb = px[a.colour][0], px[b.colour][0]
            self.assertGreater(max(na, nb) / min(na, nb), 1.8)
            big = a if na > nb else b
            small = b if big is a else a
            want = big if "bigger" in prompt or "larger" in prompt else small
            self.assertIn(answer, (want.colour, want.kind))
        elif qtype == "yesno":
            self.assertIn(answer, ("yes", "no"))
            words = prompt.rstrip("?").split()
            colours = [w for w in words if w in scenes.COLOURS]
            kinds = [w for w in words if w in scenes.KINDS]
            if "shape" in words or "object" in words:
                s = [s for s in sc.shapes if s.colour == colours[0]][0]
                truth = s.kind == kinds[0]
            else:
                truth = any(s.kind == kinds[0] and (not colours or s.colour == colours[0])
                            for s in sc.shapes)
            self.assertEqual(answer, "yes" if truth else "no")

    def test_answers_match_pixels(self):
        rng = random.Random(12)
        for qtype in scenes.QUESTION_TYPES:
            if qtype in ("word", "number"):
                continue
            for _ in range(60):
                sc, prompt, answer = scenes.question(rng, qtype)
                with self.subTest(qtype=qtype, prompt=prompt):
                    self.check_answer(qtype, sc, prompt, answer)


class Text(unittest.TestCase):
    def test_text_inside_and_sized(self):
        rng = random.Random(13)
        for _ in range(100):
            sc = scenes.make_text_scene(rng)
            a = np.asarray(scenes.render(sc)).astype(np.int32)
            ink = ~np.all(a == np.array(sc.bg), axis=2)
            ys, xs = np.nonzero(ink)
            self.assertGreater(len(xs), 20)
            # Not cut off: ink stays off the border.
            self.assertGreater(xs.min(), 0)
            self.assertGreater(ys.min(), 0)
            self.assertLess(xs.max(), sc.w - 1)
            self.assertLess(ys.max(), sc.h - 1)
            # Glyph height in the HD frame: at least 2 patches of 14 px.
            self.assertGreater((ys.max() - ys.min() + 1) * scenes.hd_factor(sc.w, sc.h), 28)
            # Only the text colour is drawn (no anti-aliasing).
            self.assertTrue(np.all(a[ink] == np.array(scenes.COLOURS[sc.text_colour])))
            if sc.text_is_number:
                self.assertTrue(sc.text.isdigit() and 1 <= len(sc.text) <= 3)
            else:
                self.assertIn(sc.text, scenes.WORDS)


class Geometry(unittest.TestCase):
    def test_hd_factor_matches_spec_grids(self):
        # Grids from shared/docs/phi3v-spec.md section 3 for num_crops = 4.
        self.assertAlmostEqual(scenes.hd_factor(2048, 1152), 672 / 2048)
        self.assertAlmostEqual(scenes.hd_factor(1344, 336), 1.0)
        self.assertAlmostEqual(scenes.hd_factor(336, 1344), 1.0)
        self.assertAlmostEqual(scenes.hd_factor(1008, 336), 1.0)
        self.assertAlmostEqual(scenes.hd_factor(200, 150), 672 / 200)

    def test_sizes_cover_all_grids(self):
        rng = random.Random(14)
        grids = set()
        for _ in range(3000):
            w, h = scenes.pick_size(rng)
            self.assertLessEqual(max(w, h), 1344)
            self.assertGreaterEqual(min(w, h), 100)
            f = scenes.hd_factor(w, h)
            lw, lh = max(w, h), min(w, h)
            cols = round(lw * f / 336)
            rows = -(-int(lw * f / (lw / lh)) // 336)
            grids.add((rows, cols, w < h))
        for g in [(2, 2), (1, 2), (1, 3), (1, 4)]:
            self.assertIn(g + (False,), grids)
            self.assertIn(g + (True,), grids)


class Samples(unittest.TestCase):
    def test_deterministic(self):
        for i in range(40):
            a, b = scenes.sample_at(1, i), scenes.sample_at(1, i)
            self.assertEqual(a["turns"], b["turns"])
            self.assertEqual([im.tobytes() for im in a["images"]],
                             [im.tobytes() for im in b["images"]])

    def test_turns_and_answers(self):
        answers = set(scenes.all_answer_strings())
        rng = random.Random(15)
        for _ in range(600):
            s = scenes.sample(rng, p_dialogue=0.5)
            turns, n_img = s["turns"], len(s["images"])
            self.assertTrue(1 <= len(turns) <= 4)
            self.assertEqual(turns[0]["n_images_before"], 1)
            self.assertEqual(turns[-1]["n_images_before"], n_img)
            ks = [t["n_images_before"] for t in turns]
            self.assertEqual(ks, sorted(ks))
            for t in turns:
                self.assertIn(t["answer"], answers)
                self.assertTrue(t["prompt"].endswith(("?", ".")))
            for im in s["images"]:
                self.assertEqual(im.mode, "RGB")

    def test_corpus(self):
        lines = scenes.corpus_text(200, seed=3)
        self.assertEqual(len(lines), 200)
        self.assertEqual(lines, scenes.corpus_text(200, seed=3))


class Suites(unittest.TestCase):
    """The committed suites are what `scenes.py suites --seed 777` writes."""

    SCORERS = {"exact", "contains", "number", "yes_no"}

    def test_committed_suites_regenerate(self):
        committed = os.path.join(ROOT, "suites")
        with tempfile.TemporaryDirectory() as tmp:
            scenes.write_suites(777, tmp)
            for name in ("smoke", "context"):
                for f in ("suite.json", "cases.jsonl"):
                    with open(os.path.join(tmp, name, f)) as a, \
                            open(os.path.join(committed, name, f)) as b:
                        self.assertEqual(a.read(), b.read(), name + "/" + f)
                imgs = sorted(os.listdir(os.path.join(tmp, name, "images")))
                self.assertEqual(imgs, sorted(os.listdir(os.path.join(committed, name,
                                                                      "images"))))
                for f in imgs:
                    a = Image.open(os.path.join(tmp, name, "images", f))
                    b = Image.open(os.path.join(committed, name, "images", f))
                    self.assertEqual(a.mode, "RGB")
                    self.assertEqual(b.mode, "RGB")
                    self.assertEqual(a.tobytes(), b.tobytes(), f)

    def test_smoke_shape(self):
        d = os.path.join(ROOT, "suites", "smoke")
        with open(os.path.join(d, "cases.jsonl")) as f:
            cases = [json.loads(line) for line in f]
        self.assertGreaterEqual(len(cases), 120)
        self.assertEqual(len({c["id"] for c in cases}), len(cases))
        tags = {c["tags"][0] for c in cases}
        self.assertEqual(tags, set(scenes.QUESTION_TYPES))
        self.assertEqual({c["scorer"] for c in cases}, self.SCORERS)
        for c in cases:
            self.assertEqual(len(c["images"]), 1)
            self.assertTrue(os.path.isfile(os.path.join(d, c["images"][0])))

    def test_context_shape(self):
        d = os.path.join(ROOT, "suites", "context")
        with open(os.path.join(d, "cases.jsonl")) as f:
            convs = [json.loads(line) for line in f]
        self.assertGreaterEqual(len(convs), 36)
        self.assertEqual({c["tags"][0] for c in convs}, set(scenes.DIALOGUE_TYPES))
        for c in convs:
            self.assertTrue(2 <= len(c["turns"]) <= 4)
            self.assertEqual(len(c["turns"][0]["images"]), 1)
            for t in c["turns"]:
                self.assertIn(t["scorer"], self.SCORERS)
                for im in t["images"]:
                    self.assertTrue(os.path.isfile(os.path.join(d, im)))
        total = 0
        for sub in ("smoke", "context"):
            folder = os.path.join(ROOT, "suites", sub, "images")
            total += sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
        self.assertLess(total, 3 * 1024 * 1024)


class Labels(unittest.TestCase):
    def test_classes_decode(self):
        self.assertLessEqual(scenes.N_CLASSES, 256)
        seen = {0}
        for k, kind in enumerate(scenes.KINDS):
            for c, colour in enumerate(scenes.COLOUR_NAMES):
                cls = scenes.shape_class(kind, colour)
                seen.add(cls)
                self.assertEqual((scenes.CLASS_KIND[cls], scenes.CLASS_COLOUR[cls],
                                  scenes.CLASS_CHAR[cls], scenes.CLASS_GLYPH[cls]),
                                 (k, c, -1, -1))
        for g in range(scenes.MAX_GLYPHS):
            for i, ch in enumerate(scenes.CHARS):
                cls = scenes.char_class(ch, g)
                self.assertNotIn(cls, seen)
                seen.add(cls)
                self.assertEqual((scenes.CLASS_KIND[cls], scenes.CLASS_COLOUR[cls],
                                  scenes.CLASS_CHAR[cls], scenes.CLASS_GLYPH[cls]),
                                 (-1, -1, i, g))
        self.assertEqual(seen, set(range(scenes.N_CLASSES)))
        self.assertEqual((scenes.CLASS_KIND[0], scenes.CLASS_COLOUR[0],
                          scenes.CLASS_CHAR[0], scenes.CLASS_GLYPH[0]), (-1, -1, -1, -1))
        # every text character has a class, and every text fits MAX_GLYPHS
        for w in scenes.WORDS:
            self.assertLessEqual(len(w), scenes.MAX_GLYPHS)
            for ch in w.upper():
                self.assertIn(ch, scenes.CHARS)

    def test_shape_labels_are_the_drawn_pixels(self):
        # A pixel has the class of (kind, colour) exactly where render() drew
        # that colour; background pixels are class 0.
        rng = random.Random(21)
        for _ in range(60):
            sc = None
            while sc is None:
                sc = scenes.make_shape_scene(rng)
            lab = scenes.render_labels(sc)
            self.assertEqual(lab.dtype, np.uint8)
            self.assertEqual(lab.shape, (sc.h, sc.w))
            c = _codes(scenes.render(sc))
            self.assertTrue(np.array_equal(lab == 0, c == _code(sc.bg)))
            for s in sc.shapes:
                self.assertTrue(np.array_equal(lab == scenes.shape_class(s.kind, s.colour),
                                               c == _code(scenes.COLOURS[s.colour])))

    def test_text_labels_are_the_glyphs(self):
        # The ink is exactly render()'s text pixels, each glyph's class (its
        # character and its index in the text) occurs, and the glyphs run left
        # to right in the order of the shown string, each inside its own
        # advance cell; repeated letters ("TREE", "44") have classes of their own.
        rng = random.Random(22)
        n_repeat = 0
        for _ in range(60):
            sc = scenes.make_text_scene(rng)
            lab = scenes.render_labels(sc)
            c = _codes(scenes.render(sc))
            self.assertTrue(np.array_equal(lab > 0, c == _code(scenes.COLOURS[sc.text_colour])))
            shown = sc.text if sc.text_is_number else sc.text.upper()
            n_repeat += len(set(shown)) < len(shown)
            xs = []
            for i, ch in enumerate(shown):
                ys_, xs_ = np.nonzero(lab == scenes.char_class(ch, i))
                self.assertGreater(len(xs_), 10, (shown, ch))
                xs.append(xs_.mean())
            self.assertTrue(np.all(lab[lab > 0] >= scenes.CHAR_BASE))
            self.assertEqual(set(np.unique(lab[lab > 0]).tolist()),
                             {scenes.char_class(ch, i) for i, ch in enumerate(shown)})
            self.assertEqual(xs, sorted(xs), shown)
            # A glyph's pixels sit within its own advance cell (1 px slack).
            font = scenes._font(sc.font_px)
            offs = scenes._glyph_offsets(shown, font)
            for i, ch in enumerate(shown):
                _, xs_ = np.nonzero(lab == scenes.char_class(ch, i))
                lo = sc.text_xy[0] + offs[i] + font.getbbox(ch)[0]
                hi = sc.text_xy[0] + offs[i] + font.getbbox(ch)[2]
                self.assertGreaterEqual(xs_.min(), lo - 1)
                self.assertLessEqual(xs_.max(), hi + 1)
        self.assertGreater(n_repeat, 0)


def measure_boxes(sc):
    """Per colour name: (pixel count, bbox centre x, bbox centre y, bbox
    long side), from the pixels only. Every kind's box centre is its centre
    (the star is centred in its box), and the long side is the box side s
    (0.95 s for a star)."""
    c = _codes(scenes.render(sc))
    out = {}
    for name, rgb in scenes.COLOURS.items():
        ys, xs = np.nonzero(c == _code(rgb))
        if len(xs):
            out[name] = (len(xs), (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2,
                         max(xs.max() - xs.min(), ys.max() - ys.min()) + 1)
    return out


class Facts(unittest.TestCase):
    def test_slots(self):
        got = [scenes.glyph_slot(i, n) for n in range(1, scenes.MAX_GLYPHS + 1)
               for i in range(n)]
        self.assertEqual(got, list(range(1, scenes.N_SLOTS + 1)))
        for n in range(1, scenes.MAX_GLYPHS + 1):
            for i in range(n):
                self.assertEqual(scenes.slot_index_length(scenes.glyph_slot(i, n)), (i, n))

    def check_shape_facts(self, sc):
        """scene_facts of a shape scene against its class map and pixels.
        count: the drawn classes of the same kind in the class map (whose
        classes are the drawn colours, test above). bigger and place: from
        pixel areas, box centres and sides; where a measure lies within a few
        per cent of a threshold the fact may go either way."""
        facts = scenes.scene_facts(sc)
        lab = scenes.render_labels(sc)
        drawn = sorted(set(np.unique(lab).tolist()) - {0})
        self.assertEqual(drawn, np.nonzero(facts[:, scenes.FACT_COUNT])[0].tolist())
        self.assertFalse(facts[:, scenes.FACT_SLOT].any())
        px = measure_boxes(sc)
        n_sure = 0
        for c in drawn:
            colour = scenes.COLOUR_NAMES[scenes.CLASS_COLOUR[c]]
            kind = scenes.CLASS_KIND[c]
            f = facts[c]
            self.assertEqual(f[scenes.FACT_COUNT],
                             sum(1 for d in drawn if scenes.CLASS_KIND[d] == kind))
            n, x, y, side = px[colour]
            sure = maybe = 0
            for o, (no, xo, yo, so) in px.items():
                if o == colour:
                    continue
                a, r = no / n, so / side
                sure += a > 2.0 * 1.1 and r > 1.25 * 1.08
                maybe += a > 2.0 / 1.1 and r > 1.25 / 1.08
            self.assertTrue(1 + sure <= f[scenes.FACT_BIGGER] <= 1 + maybe, (colour, f, px))
            n_sure += sure
            bits = int(f[scenes.FACT_PLACE])
            for b, (what, d) in enumerate(scenes.PLACE_BITS):
                on = bool(bits >> b & 1)
                v, dim = (x, sc.w) if d in ("left", "right") else (y, sc.h)
                sign = -1 if d in ("left", "top") else 1
                if what == "side":
                    # the centre outside the middle band, towards d
                    margin = sign * (v - dim / 2) - (0.5 - scenes.SIDE_BAND) * dim
                    if abs(margin) > 2:
                        self.assertEqual(on, margin > 0, (colour, d, margin))
                    continue
                # extreme: the centre leads the runner-up (the other shape of
                # least lead) by half the larger box side, s in [side, side / 0.95]
                others = [(sign * (v - (xo if d in ("left", "right") else yo)), max(side, so))
                          for o, (no, xo, yo, so) in px.items() if o != colour]
                if not others:
                    self.assertFalse(on)
                    continue
                lead, s_max = min(others)
                if lead - 0.5 * s_max / 0.95 > 2:
                    self.assertTrue(on, (colour, d, lead, s_max))
                elif lead - 0.5 * s_max < -2:
                    self.assertFalse(on, (colour, d, lead, s_max))
        return n_sure, bin(int(facts[:, scenes.FACT_PLACE].max())).count("1") > 0

    def test_shape_facts_match_pixels(self):
        rng = random.Random(23)
        n_bigger = n_place = 0
        for i in range(150):
            sc = None
            while sc is None:
                sc = scenes.make_count_scene(rng) if i % 2 else scenes.make_shape_scene(rng)
            a, b = self.check_shape_facts(sc)
            n_bigger += a
            n_place += b
        # the checks saw clear size differences and places at all
        self.assertGreater(n_bigger, 50)
        self.assertGreater(n_place, 100)

    def test_glyph_slots_follow_the_text(self):
        # Every glyph of the class map has the slot of its index and of the
        # number of glyphs drawn, and the slots run left to right.
        rng = random.Random(24)
        for _ in range(40):
            sc = scenes.make_text_scene(rng)
            facts = scenes.scene_facts(sc)
            lab = scenes.render_labels(sc)
            drawn = sorted(set(np.unique(lab).tolist()) - {0})
            self.assertEqual(drawn, np.nonzero(facts[:, scenes.FACT_SLOT])[0].tolist())
            self.assertFalse(facts[:, :scenes.FACT_SLOT].any())
            xs = {}
            for c in drawn:
                i, n = scenes.slot_index_length(int(facts[c, scenes.FACT_SLOT]))
                self.assertEqual(n, len(drawn))
                self.assertEqual(i, scenes.CLASS_GLYPH[c])
                xs[i] = np.nonzero(lab == c)[1].mean()
            self.assertEqual(sorted(xs), list(range(len(drawn))))
            self.assertEqual([xs[i] for i in sorted(xs)], sorted(xs.values()))


if __name__ == "__main__":
    unittest.main()
