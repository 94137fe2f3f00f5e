#!/usr/bin/python3
"""Where does the demo model lose the side of the shape a question names?

  /usr/bin/python3 reference/side_probe.py MODEL_DIR N WORK_DIR [VLMTEST]

Draws N left-right position questions (scenes.q_position, seed 99), renders
each image into WORK_DIR, takes the prompt's ids (and the last logits) from
the C engine (`vlmtest eval-logits`, VLMTEST default build/vlmtest), and runs
the model in plain PyTorch (reference/ops_ref.py's ops, the demo's config)
keeping every representation on the way: the tower's features of the named
shape's global-view patches, the glue rows of its global tokens, and the
decoder's hidden state after each layer at the word that names the shape and
at the answer position. A linear probe (5-fold) then says how well left and
right can be read from each, and, as a control, the shape's colour on the
questions that do not say it (what the lookup demonstrably fetches). The PyTorch forward must give the
C engine's last logits (relative 2e-3), or the script stops. CPU only (no
transformers or tokenizers needed); about 9 s a question on this VM.
"""
import json
import os
import random
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ops_ref as O  # noqa: E402
import phi3v_ref as R  # noqa: E402
import scenes  # noqa: E402
import train_demo as T  # noqa: E402

if len(sys.argv) not in (4, 5):
    print(__doc__, file=sys.stderr)
    sys.exit(2)
MODEL = sys.argv[1]
N = int(sys.argv[2])
WORK = sys.argv[3]
VLMTEST = sys.argv[4] if len(sys.argv) == 5 else os.path.join(os.path.dirname(HERE), "build",
                                                               "vlmtest")
os.makedirs(WORK, exist_ok=True)
torch.set_grad_enabled(False)

cfg = json.load(open(os.path.join(MODEL, "config.json")))
cfg["vision_config"]["layer_idx"] = -2
O.CFG = cfg


W = O.read_safetensors(os.path.join(MODEL, "model.safetensors"))
vocab = json.load(open(os.path.join(MODEL, "tokenizer.json")))["model"]["vocab"]
inv = {i: t for t, i in vocab.items()}


rng = random.Random(99)
rows = []
while len(rows) < N:
    sc = scenes.make_shape_scene(rng)
    if sc is None:
        continue
    qa = scenes.q_position(rng, sc)
    if qa is None or qa[1] not in ("left", "right"):
        continue
    prompt, ans = qa
    i = len(rows)
    img = scenes.render(sc)
    path = os.path.join(WORK, "%d.png" % i)
    img.save(path)
    subprocess.run([VLMTEST, "eval-logits", "-m", MODEL, "--image", path,
                    "-p", prompt, "--out", os.path.join(WORK, "e%d" % i)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meta = json.load(open(os.path.join(WORK, "e%d.json" % i)))
    c_logits = np.fromfile(os.path.join(WORK, "e%d.f32" % i), dtype="<f4").reshape(
        meta["n_tokens"], -1)[-1]
    os.remove(os.path.join(WORK, "e%d.f32" % i))
    ids = meta["ids"]
    pv, size, ntok = R.preprocess(img, 4)
    hc, wc = size[0] // 336, size[1] // 336
    feats = O.clip_features(W, pv)
    glue = O.hd_glue(W, feats, hc, wc)
    hs = []
    logits = O.lm_logits(W, ids, glue, hidden=hs)
    # the C engine's last logits: the same forward
    dlog = float(np.abs(logits[-1].numpy() - c_logits).max() / np.abs(c_logits).max())
    assert dlog < 2e-3, dlog
    s = {"scenes": [sc], "turns": [{"prompt": prompt, "answer": ans, "n_images_before": 1}]}
    r = T.render_sample(s, aux=True)
    assert tuple(r["grid"][0]) == (hc, wc)
    # the named shape: the prompt's referent (turn_refs)
    s["tag"] = "position"
    ref = T.turn_refs(s)[0]
    idx = ref[1][0]
    cls = scenes.shape_class(sc.shapes[idx].kind, sc.shapes[idx].colour)
    lab0 = r["lab"][0][0]  # global crop's patch labels [576]
    tc = T.token_classes(r["lab"][0], hc, wc)
    tmpl = T.template(hc, wc)
    glb = (tmpl >= 0) & (tmpl < T.TOK_PER_CROP)
    shape_rows = np.isin(tc, [cls]).any(1) & glb
    img_pos = [j for j, t in enumerate(ids) if t < 0]
    word = max(j for j, t in enumerate(ids) if j > img_pos[-1] and inv.get(t) == "\u2581on") - 1
    f = {"tower": feats[0][torch.from_numpy(lab0 == cls)].mean(0),
         "glue": glue[torch.from_numpy(shape_rows)].mean(0)}
    for li in range(len(hs)):
        f["word%d" % li] = hs[li][word]
        f["ans%d" % li] = hs[li][-1]
    pred = inv[int(logits[-1].argmax())].lstrip("\u2581")
    colour = sc.shapes[idx].colour
    # the control: the named shape's colour, where the question does not say it
    said = colour in prompt.lower()
    rows.append((f, int(ans == "right"), pred == ans, inv.get(ids[word]),
                 scenes.COLOUR_NAMES.index(colour), said))
    if len(rows) % 50 == 0:
        print(len(rows), "cases", flush=True)

y = torch.tensor([r[1] for r in rows]).float()
print("model right on %d of %d; words probed: %s" % (sum(r[2] for r in rows), len(rows),
      sorted(set(r[3] for r in rows))[:12]))


def probe(X, y, folds=5, wd=1e-2):
    """Mean held-out accuracy of a linear classifier (softmax over the labels'
    classes; two classes: logistic regression) over `folds` folds."""
    n = len(y)
    k_cls = int(y.max()) + 1
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    acc = []
    for k in range(folds):
        te = perm[k::folds]
        tr = torch.tensor(sorted(set(perm.tolist()) - set(te.tolist())))
        mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-6
        Xt, Xe = (X[tr] - mu) / sd, (X[te] - mu) / sd
        w = torch.zeros(X.shape[1], k_cls, requires_grad=True)
        b = torch.zeros(k_cls, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200)

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(Xt @ w + b, y[tr].long()) + wd * (w * w).sum()
            loss.backward()
            return loss
        with torch.enable_grad():
            opt.step(closure)
        acc.append(float(((Xe @ w + b).argmax(1) == y[te].long()).float().mean()))
    return sum(acc) / len(acc)


quiet = [r for r in rows if not r[5]]
yc = torch.tensor([r[4] for r in quiet]).float()
print("control: the named shape's colour on the %d questions that do not say it (%d colours, "
      "the most common %.2f)" % (len(quiet), len(set(yc.tolist())),
                                 max(yc.tolist().count(v) for v in set(yc.tolist())) /
                                 max(len(quiet), 1)))
for key in rows[0][0]:
    X = torch.stack([r[0][key] for r in rows]).float()
    Xc = torch.stack([r[0][key] for r in quiet]).float()
    print("%-7s probe accuracy (5-fold): left vs right %.3f, colour %.3f"
          % (key, probe(X, y), probe(Xc, yc) if len(quiet) >= 10 else float("nan")), flush=True)
