#!/usr/bin/python3
"""Counterfactual pairs for the demo model's position and size questions:
does an answer follow the image, or only the words?

  write:  counterfactual_suite.py write SMOKE_DIR OUT_DIR
  report: counterfactual_suite.py report OUT_DIR/results.jsonl

`write` reads a smoke suite as reference/scenes.py writes it (cases.jsonl,
images/) and writes OUT_DIR/smoke/ (suite.json, cases.jsonl, images/) with,
for every case tagged "position" that asks left or right, the case and its
image mirrored left to right (the expected side flips; top-bottom questions
are left out, as a vertical flip turns triangles and stars upside down, which
the scenes never draw), and for every case tagged "size", the case and the same question
with its two shapes named in the other order (the same image and answer).
Run the model on OUT_DIR/smoke (`vlmtest run NAME --suite OUT_DIR/smoke`)
and give `report` the run's results.jsonl: per pair kind, how many pairs
changed their answer with the change, and how many were right both times.
A model that reads sides from the image changes every position answer; one
that compares sizes keeps every size answer.
"""
import json
import os
import re
import sys

from PIL import Image, ImageOps

OPPOSITE = {"left": "right", "right": "left"}
SIZE_Q = re.compile(r"^(Which is \w+, )(the \w+(?: shape)?) or (the \w+(?: shape)?)\?$")


def swap_size_question(prompt):
    """The size question with its two named shapes in the other order, or None
    when the prompt is not one of scenes.q_size's."""
    m = SIZE_Q.match(prompt)
    if not m:
        return None
    return "%s%s or %s?" % (m.group(1), m.group(3), m.group(2))


def write(smoke_dir, out_dir):
    sdir = os.path.join(out_dir, "smoke")
    os.makedirs(os.path.join(sdir, "images"), exist_ok=True)
    cases = [json.loads(line) for line in open(os.path.join(smoke_dir, "cases.jsonl"))
             if line.strip()]
    out = []
    for c in cases:
        kind = c["tags"][0]
        if kind not in ("position", "size") or c["expected"] in ("top", "bottom"):
            continue
        img = Image.open(os.path.join(smoke_dir, c["images"][0]))
        name = "images/%s.png" % c["id"]
        img.save(os.path.join(sdir, name))
        base = dict(c, images=[name])
        if kind == "position":
            flipped = ImageOps.mirror(img)
            fname = "images/%s-cf.png" % c["id"]
            flipped.save(os.path.join(sdir, fname))
            twin = dict(c, id=c["id"] + "-cf", images=[fname],
                        expected=OPPOSITE[c["expected"]])
        else:
            swapped = swap_size_question(c["prompt"])
            if swapped is None:
                raise SystemExit("%s: not a size question of scenes.py: %r" % (c["id"],
                                                                              c["prompt"]))
            twin = dict(c, id=c["id"] + "-cf", images=[name], prompt=swapped)
        twin["tags"] = [kind, "counterfactual"]
        out += [base, twin]
    if not out:
        raise SystemExit("%s has no position or size cases" % smoke_dir)
    with open(os.path.join(sdir, "cases.jsonl"), "w") as f:
        for c in out:
            f.write(json.dumps(c) + "\n")
    json.dump({"name": "smoke", "description": "Left-right cases with their images mirrored "
               "and size cases with their shapes named in the other order "
               "(reference/counterfactual_suite.py, from %s)." % smoke_dir,
               "defaults": {"max_tokens": 16, "temperature": 0}},
              open(os.path.join(sdir, "suite.json"), "w"), indent=2)
    print("%d pairs in %s" % (len(out) // 2, sdir))


def report(results_path):
    by_id = {}
    for line in open(results_path):
        r = json.loads(line)
        if r.get("type") == "case":
            by_id[r["case_id"]] = r
    rows = {}
    for cid, r in by_id.items():
        if cid.endswith("-cf") or cid + "-cf" not in by_id:
            continue
        t = by_id[cid + "-cf"]
        kind = r["tags"][0]
        st = rows.setdefault(kind, {"pairs": 0, "changed": 0, "both_right": 0})
        st["pairs"] += 1
        st["changed"] += r["answer"] != t["answer"]
        st["both_right"] += bool(r["passed"] and t["passed"])
    for kind, st in sorted(rows.items()):
        follows = "changed" if kind == "position" else "kept"
        n = st["changed"] if kind == "position" else st["pairs"] - st["changed"]
        print("%-8s %3d pairs: answer %s with the change %3d, right both times %3d"
              % (kind, st["pairs"], follows, n, st["both_right"]))
    print(json.dumps(rows))


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "write":
        write(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "report":
        report(sys.argv[2])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
