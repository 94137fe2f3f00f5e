#!/usr/bin/env python3
"""Train the bundled demo VLM: a tiny model in the exact Phi3V architecture
(transformers' CLIPVisionModel + the HD glue + Phi3ForCausalLM, as in
reference/phi3v_ref.py) on synthetic scenes from reference/scenes.py, with its
own small Llama-style BPE tokenizer (byte fallback, Phi-3 chat special tokens).

Runs on the GPU machine. Reproducible from --seed (fixed step count, fixed
number of data workers). Writes to --out:
    demo/            the model folder to commit as models/demo/
    pytorch_answers.jsonl   greedy answers of the shipped (bf16) weights on the
                     held-out suites, computed in float32 with the reference
                     preprocessing (the C engine must give the same answers)
    loss.png, train_log.json
"""
import argparse
import json
import math
import os
import random
import re
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import phi3v_ref as R  # noqa: E402
import scenes  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]
RSTRIP = {"<|assistant|>"}
VISION = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
              image_size=336, patch_size=14, layer_norm_eps=1e-5, hidden_act="quick_gelu")
LMCFG = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=10000.0,
             max_position_embeddings=16384, original_max_position_embeddings=4096)
NUM_CROPS = 4


# --- tokenizer ------------------------------------------------------------------
def train_tokenizer(texts, vocab_size, phi3_tok_path):
    """A Llama-style BPE with byte fallback, laid out like Phi-3's tokenizer.json:
    <unk>, <s>, </s>, the 256 byte tokens, the learned pieces, then the chat
    special tokens as added tokens with Phi-3's flags."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, normalizers
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Replace(" ", "\u2581")])
    # Training splits at word starts so no learned piece spans two words;
    # the shipped file has no pre-tokenizer (as Phi-3), which then gives the
    # same pieces.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    bytes_toks = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"]
                                  + bytes_toks, show_progress=False, min_frequency=2)
    tok.train_from_iterator(texts, trainer)
    learned = json.loads(tok.to_str())["model"]
    base = json.load(open(phi3_tok_path))
    vocab = learned["vocab"]
    n = len(vocab)
    added = []
    for i, t in enumerate(["<unk>", "<s>", "</s>"]):
        added.append({"id": i, "content": t, "single_word": False, "lstrip": False,
                      "rstrip": t == "</s>", "normalized": False, "special": t != "</s>"})
    for j, t in enumerate(SPECIALS):
        vocab[t] = n + j
        added.append({"id": n + j, "content": t, "single_word": False, "lstrip": False,
                      "rstrip": t in RSTRIP, "normalized": False, "special": True})
    out = dict(base)
    out["added_tokens"] = added
    out["model"] = dict(base["model"])
    out["model"]["vocab"] = vocab
    out["model"]["merges"] = learned["merges"]
    return out


# --- conversation -> ids (the C session's rule; see docs/model.md) ----------------
def encode_chunks(tok, text, first_bos, ntoks, img_base):
    """Split at <|image_N|> tags; the first chunk gets BOS only when first_bos;
    every chunk after an image gets BOS (the published processor's rule)."""
    pat = r"<\|image_\d+\|>"
    chunks = re.split(pat, text)
    tags = [int(m[8:-2]) for m in re.findall(pat, text)]
    ids = []
    for i, c in enumerate(chunks):
        e = tok.encode(c, add_special_tokens=(i > 0 or first_bos)).ids
        ids += e
        if i < len(tags):
            k = tags[i]
            ids += [-k] * ntoks[k - 1 - img_base]
    return ids


def conversation_ids(tok, turns, ntoks, end_id, answers=True):
    """turns: [(prompt_text_with_tags, answer)], ntoks: image token counts in
    image order. Returns ids, loss mask (1 on answer tokens and their <|end|>)."""
    ids, mask = [], []
    for t, (ptext, ans) in enumerate(turns):
        head = ("" if t == 0 else "\n") + "<|user|>\n" + ptext + "<|end|>\n<|assistant|>\n"
        e = encode_chunks(tok, head, t == 0, ntoks, 0)
        ids += e
        mask += [0] * len(e)
        if answers:
            a = tok.encode(ans, add_special_tokens=False).ids + [end_id]
            ids += a
            mask += [1] * len(a)
    return ids, mask


def turn_images(sample):
    """The images each turn attaches: scenes.py gives the running count of
    images shown up to and including a turn."""
    out, prev = [], 0
    for turn in sample["turns"]:
        n = turn["n_images_before"]
        out.append(sample["images"][prev:n])
        prev = n
    return out


def render_turns(sample):
    """Number the images across the conversation and put their tags in front
    of the turn's text, as the C session does."""
    out = []
    n = 0
    for turn, imgs in zip(sample["turns"], turn_images(sample)):
        tags = ""
        for _ in range(len(imgs)):
            n += 1
            tags += f"<|image_{n}|>\n"
        out.append((tags + turn["prompt"], turn.get("answer", "")))
    return out


# --- data ------------------------------------------------------------------------
SHAPE_QUESTIONS = ["colour", "shape", "count", "count_kind", "position", "extreme", "size",
                   "yesno"]


def _words(text):
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def packed_sample(rng):
    """Several questions about one shape scene, asked as consecutive turns:
    one image, many supervised answers (the image tokens dominate the cost).
    A question joins only when its answer word appears nowhere in the turns
    before it ("What colour is the star?" "red" must not be followed by
    "Which shape is red?"): otherwise the answer could be copied from the
    text instead of read from the image, and the single-question suites,
    which have no such text, would not benefit."""
    for _ in range(100):
        sc = scenes.make_shape_scene(rng, n=rng.randint(1, 4))
        if sc is None:
            continue
        turns, seen = [], set()
        for q in rng.sample(SHAPE_QUESTIONS, len(SHAPE_QUESTIONS)):
            qa = scenes.QUESTION_TYPES[q][0](rng, sc)
            if qa is None or _words(str(qa[1])) & seen:
                continue
            turns.append({"n_images_before": 1, "prompt": qa[0], "answer": qa[1]})
            seen |= _words(qa[0]) | _words(str(qa[1]))
            if len(turns) == 5:
                break
        if turns:
            return {"images": [scenes.render(sc)], "turns": turns, "tag": "packed"}
    return scenes.sample(rng)


def training_sample(rng):
    r = rng.random()
    if r < 0.4:
        return packed_sample(rng)
    return scenes.sample(rng, p_dialogue=0.45, weights={"number": 2.5, "word": 2.0})



M_SIDE = 12          # merged tokens per crop side (24x24 patches, 2x2 merge)
TOK_PER_CROP = M_SIDE * M_SIDE
SUB_GN, GLB_GN = -1, -2  # separator rows in a glue index


def glue_template(hc, wc):
    """The rows R.hd_glue emits for an hc x wc tile grid, as indices into the
    image's 2x2-merged crop features (crop c, merged token t -> c*144 + t;
    crop 0 is the global view) or the separators SUB_GN / GLB_GN. Gathering
    these rows and projecting them equals R.hd_glue exactly (checked by
    --self-test)."""
    m = M_SIDE
    rows = []
    for r in range(hc * m):
        i, a = divmod(r, m)
        for c in range(wc * m):
            j, b = divmod(c, m)
            rows.append((1 + i * wc + j) * TOK_PER_CROP + a * m + b)
        rows.append(SUB_GN)
    rows.append(GLB_GN)
    for a in range(m):
        rows += [a * m + b for b in range(m)]
        rows.append(SUB_GN)
    return np.asarray(rows, dtype=np.int64)


_TEMPLATES = {}


def template(hc, wc):
    if (hc, wc) not in _TEMPLATES:
        _TEMPLATES[(hc, wc)] = glue_template(hc, wc)
    return _TEMPLATES[(hc, wc)]


def make_batch(samples):
    """Everything a training step needs, as CPU tensors built in the data
    worker, so the step itself is a handful of batched GPU calls:
      ids [B, L] (image placeholders 0), pix groups [(hc, wc, uint8 [n, 3, H, W])],
      glue_idx (rows of every image, batch order), img_pos (flat b*L + t of the
      placeholders, same order), sel (flat positions whose next token is
      supervised) and tgt (those next tokens)."""
    B = len(samples)
    L = max(len(s["ids"]) for s in samples)
    L = (L + 7) // 8 * 8
    ids = np.zeros((B, L), dtype=np.int64)
    sel, tgt, img_pos = [], [], []
    images = []  # (b, k, hc, wc, array)
    for b, s in enumerate(samples):
        a = np.asarray(s["ids"], dtype=np.int64)
        m = np.asarray(s["mask"], dtype=bool)
        ids[b, :len(a)] = np.maximum(a, 0)
        img_pos.append(b * L + np.nonzero(a < 0)[0])
        nxt = np.nonzero(m[1:])[0]  # position t predicts t+1
        sel.append(b * L + nxt)
        tgt.append(a[nxt + 1])
        for k, (arr, (hc, wc)) in enumerate(zip(s["hd"], s["grid"])):
            images.append((b, k, hc, wc, arr))
    groups = {}
    for im in images:
        groups.setdefault((im[2], im[3]), []).append(im)
    pix, start = [], {}
    off = 0
    for key in sorted(groups):
        hc, wc = key
        ims = groups[key]
        pix.append((hc, wc, torch.from_numpy(np.stack([im[4] for im in ims]))))
        for im in ims:
            start[(im[0], im[1])] = off
            off += 1 + hc * wc
    glue_idx = []
    for b, k, hc, wc, _ in images:  # batch order, image order: as img_pos
        t = template(hc, wc)
        glue_idx.append(np.where(t >= 0, t + start[(b, k)] * TOK_PER_CROP, t))
    cat = (lambda xs: torch.from_numpy(np.concatenate(xs)) if xs
           else torch.zeros(0, dtype=torch.int64))
    return {"ids": torch.from_numpy(ids), "pix": pix, "n_crops": off, "glue_idx": cat(glue_idx),
            "img_pos": cat(img_pos), "sel": cat(sel), "tgt": cat(tgt),
            "n_samples": B, "n_tokens": int(sum(len(s["ids"]) for s in samples))}


class SceneStream(torch.utils.data.IterableDataset):
    """Whole batches from each worker: a pool of `pool` batches' samples is
    sorted by length and cut into batches (little padding), which are then
    yielded in a shuffled order."""

    def __init__(self, seed, tok_json, batch, pool=4):
        self.seed, self.tok_json, self.batch, self.pool = seed, tok_json, batch, pool

    def sample(self, rng, tok, end_id):
        s = training_sample(rng)
        hds, grids, ntoks = [], [], []
        for imgs in turn_images(s):
            for img in imgs:
                hd = R.hd_transform(img.convert("RGB"), NUM_CROPS)
                arr = np.ascontiguousarray(np.asarray(hd, dtype=np.uint8).transpose(2, 0, 1))
                hc, wc = arr.shape[1] // 336, arr.shape[2] // 336
                hds.append(arr)
                grids.append((hc, wc))
                ntoks.append((hc * wc + 1) * 144 + 1 + (hc + 1) * 12)
        ids, mask = conversation_ids(tok, render_turns(s), ntoks, end_id)
        return {"hd": hds, "grid": grids, "ids": ids, "mask": mask}

    def __iter__(self):
        from tokenizers import Tokenizer
        info = torch.utils.data.get_worker_info()
        wid = info.id if info else 0
        rng = random.Random(self.seed * 1000 + wid)
        tok = Tokenizer.from_str(self.tok_json)
        end_id = tok.token_to_id("<|end|>")
        while True:
            pool = [self.sample(rng, tok, end_id) for _ in range(self.batch * self.pool)]
            pool.sort(key=lambda s: len(s["ids"]))
            batches = [pool[i:i + self.batch] for i in range(0, len(pool), self.batch)]
            rng.shuffle(batches)
            for b in batches:
                yield make_batch(b)


MEAN_T = torch.tensor(R.MEAN).view(1, 3, 1, 1)
STD_T = torch.tensor(R.STD).view(1, 3, 1, 1)


def gpu_pixels(pix, dev):
    """Pixel values of every crop, [n_crops, 3, 336, 336]: per image the
    global view (bicubic to 336, as the processor) then its tiles row-major,
    images in the order make_batch numbered them."""
    out = []
    mean, std = MEAN_T.to(dev), STD_T.to(dev)
    for hc, wc, u8 in pix:
        t = (u8.to(dev, non_blocking=True).float() / 255.0 - mean) / std
        n = t.shape[0]
        glb = F.interpolate(t, size=(336, 336), mode="bicubic")
        crops = t.reshape(n, 3, hc, 336, wc, 336).permute(0, 2, 4, 1, 3, 5)
        crops = crops.reshape(n, hc * wc, 3, 336, 336)
        out.append(torch.cat([glb[:, None], crops], 1).reshape(-1, 3, 336, 336))
    return torch.cat(out, 0)


class Glue(torch.nn.Module):
    def __init__(self, d_img, d_lm):
        super().__init__()
        self.glb_GN = torch.nn.Parameter(torch.randn(1, 1, 4 * d_img) * 0.02)
        self.sub_GN = torch.nn.Parameter(torch.randn(1, 1, 1, 4 * d_img) * 0.02)
        self.p0 = torch.nn.Linear(4 * d_img, d_lm)
        self.p2 = torch.nn.Linear(d_lm, d_lm)

    def as_dict(self):
        return {"model.vision_embed_tokens.glb_GN": self.glb_GN,
                "model.vision_embed_tokens.sub_GN": self.sub_GN,
                "model.vision_embed_tokens.img_projection.0.weight": self.p0.weight,
                "model.vision_embed_tokens.img_projection.0.bias": self.p0.bias,
                "model.vision_embed_tokens.img_projection.2.weight": self.p2.weight,
                "model.vision_embed_tokens.img_projection.2.bias": self.p2.bias}

    def rows(self, feats, glue_idx):
        """Projected image rows for every image of a batch: feats are the CLIP
        features of all crops [N, 576, C]; glue_idx as make_batch builds it."""
        N, P, C = feats.shape
        m = M_SIDE
        merged = feats.reshape(N, m, 2, m, 2, C).permute(0, 1, 3, 2, 4, 5).reshape(N * P // 4,
                                                                                     4 * C)
        table = torch.cat([merged, self.sub_GN.reshape(1, 4 * C).to(merged.dtype),
                           self.glb_GN.reshape(1, 4 * C).to(merged.dtype)], 0)
        base = N * P // 4
        idx = torch.where(glue_idx >= 0, glue_idx,
                          torch.where(glue_idx == SUB_GN, base, base + 1))
        return self.p2(F.gelu(self.p0(table[idx])))


def build(vocab_size):
    # phi3v_ref's module settings describe the tiny test model; point them at
    # the demo's sizes (its functions read them at call time).
    half = LMCFG["hidden_size"] // LMCFG["num_attention_heads"] // 2
    R.SHORT_FACTOR = [1.0] * half
    R.LONG_FACTOR = [1.0 + 0.5 * i for i in range(half)]
    R.VISION.update(VISION)
    R.LM.update(LMCFG)
    R.LM["vocab_size"] = vocab_size
    clip, lm = R.build_modules(torch.float32)
    return clip, lm, Glue(VISION["hidden_size"], LMCFG["hidden_size"])


PHASES = {}


def phase(name, t0):
    """Accumulate the time since t0 under name (only with --profile)."""
    if PROFILE[0]:
        torch.cuda.synchronize()
        t = time.time()
        PHASES[name] = PHASES.get(name, 0.0) + t - t0
        return t
    return t0


PROFILE = [False]


def train_loss(clip, lm, glue, bt, dev):
    """Cross-entropy on the supervised tokens of a batch from make_batch.
    No attention mask: padding sits after each sample's last token and
    attention is causal, so no real token sees it (and the fused causal
    kernel applies)."""
    t0 = phase("_", time.time())
    ids = bt["ids"].to(dev, non_blocking=True)
    B, L = ids.shape
    x = lm.get_input_embeddings()(ids)
    if bt["n_crops"]:
        pv = gpu_pixels(bt["pix"], dev)
        t0 = phase("pixels", t0)
        feats = R.clip_features(clip, pv)
        t0 = phase("clip", t0)
        rows = glue.rows(feats, bt["glue_idx"].to(dev, non_blocking=True))
        x = x.reshape(B * L, -1).index_put((bt["img_pos"].to(dev, non_blocking=True),),
                                            rows.to(x.dtype)).reshape(B, L, -1)
        t0 = phase("glue", t0)
    h = lm.model(inputs_embeds=x, use_cache=False).last_hidden_state
    hs = h.reshape(B * L, -1)[bt["sel"].to(dev, non_blocking=True)]
    logits = lm.lm_head(hs).float()
    loss = F.cross_entropy(logits, bt["tgt"].to(dev, non_blocking=True))
    phase("lm fwd", t0)
    return loss


def self_test():
    """The batched glue (make_batch + Glue.rows) equals R.hd_glue image by
    image, and the loss positions are the answer tokens; CPU, random
    features, no transformers needed."""
    torch.manual_seed(0)
    rng = random.Random(0)
    C = VISION["hidden_size"]
    glue = Glue(C, LMCFG["hidden_size"]).double()
    gd = glue.as_dict()
    samples = []
    for _ in range(6):
        grids = [rng.choice([(1, 1), (1, 2), (2, 1), (2, 2), (1, 4), (4, 1), (1, 3), (3, 1)])
                 for _ in range(rng.randint(0, 2))]
        ids, mask = [], []
        for k, (hc, wc) in enumerate(grids):
            ids += [5, 6] + [-(k + 1)] * ((hc * wc + 1) * 144 + 1 + (hc + 1) * 12)
            mask += [0] * (len(ids) - len(mask))
        ids += [7, 8, 9]
        mask += [0, 1, 1]
        hds = [np.zeros((3, hc * 336, wc * 336), np.uint8) for hc, wc in grids]
        samples.append({"hd": hds, "grid": grids, "ids": ids, "mask": mask})
    bt = make_batch(samples)
    feats = torch.randn(bt["n_crops"], 576, C, dtype=torch.float64)
    got = glue.rows(feats, bt["glue_idx"])
    # the reference, image by image, crops numbered as make_batch did
    order = sorted({g for s in samples for g in s["grid"]})
    starts, off = {}, 0
    for key in order:
        for b, s in enumerate(samples):
            for k, g in enumerate(s["grid"]):
                if g == key:
                    starts[(b, k)] = off
                    off += 1 + g[0] * g[1]
    want = []
    for b, s in enumerate(samples):
        for k, (hc, wc) in enumerate(s["grid"]):
            f = feats[starts[(b, k)]:starts[(b, k)] + 1 + hc * wc]
            want.append(R.hd_glue(f, [hc * 336, wc * 336], gd, C))
    want = torch.cat(want, 0)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert torch.equal(got, want), float((got - want).abs().max())
    L = bt["ids"].shape[1]
    for b, s in enumerate(samples):
        n = len(s["ids"])
        assert bt["tgt"][bt["sel"] // L == b].tolist() == [8, 9]
        assert (bt["img_pos"] // L == b).sum() == sum(1 for i in s["ids"] if i < 0)
        assert n <= L
    print("self-test: batched glue == hd_glue on", len(want), "rows; loss positions ok")


# --- scoring (the suite scorers used by the held-out evaluation) -------------------
def norm(s):
    s = s.lower().strip()
    s = re.sub(r"[^\w\s]", "", s)
    return re.sub(r"\s+", " ", s).strip()


def score(scorer, answer, expected):
    a = norm(answer)
    if scorer == "exact":
        return a == norm(str(expected))
    if scorer == "contains":
        return norm(str(expected)) in a
    if scorer == "yes_no":
        m = re.match(r"\s*(yes|no)\b", answer.lower())
        return bool(m) and m.group(1) == norm(str(expected))
    if scorer == "number":
        m = re.search(r"-?\d+(\.\d+)?", answer)
        return bool(m) and abs(float(m.group(0)) - float(expected)) <= 1e-6
    raise ValueError(scorer)


@torch.no_grad()
def greedy(clip, lm, glue_d, tok, ids, feats, dev, max_new, eos):
    emb = lm.get_input_embeddings()
    t = torch.tensor(ids, device=dev)
    x = emb(t.clamp(min=0))
    if feats:
        pos = (t < 0).nonzero()[:, 0]
        x[pos] = torch.cat(feats, 0)
    out = []
    for _ in range(max_new):
        h = lm.model(inputs_embeds=x[None], use_cache=False).last_hidden_state[0, -1]
        nxt = int(torch.argmax(lm.lm_head(h).float()))
        out.append(nxt)
        if nxt in eos:
            break
        x = torch.cat([x, emb(torch.tensor([nxt], device=dev))], 0)
    return out


@torch.no_grad()
def evaluate(clip, lm, glue, tok, suites_dir, dev, out_path):
    """Greedy answers with the reference preprocessing (CPU, exact) and f32
    compute, as the C engine runs them."""
    from PIL import Image
    glue_d = {k: v.float() for k, v in glue.as_dict().items()}
    end_id = tok.token_to_id("<|end|>")
    eos = {end_id, tok.token_to_id("<|endoftext|>")}
    results = []
    stats = {}
    for suite in ("smoke", "context"):
        sdir = os.path.join(suites_dir, suite)
        meta = json.load(open(os.path.join(sdir, "suite.json")))
        max_new = meta.get("defaults", {}).get("max_tokens", 16)
        cases = [json.loads(line) for line in open(os.path.join(sdir, "cases.jsonl"))
                 if line.strip()]
        for c in cases:
            turns = c["turns"] if "turns" in c else [c]
            ids, ntoks, feats = [], [], []
            turn_res = []
            nimg = 0
            for ti, turn in enumerate(turns):
                tags = ""
                for p in turn.get("images", []):
                    img = Image.open(os.path.join(sdir, p))
                    pv, size, nt = R.preprocess(img, NUM_CROPS)
                    f = R.clip_features(clip, pv.to(dev))
                    feats.append(R.hd_glue(f, size, glue_d, VISION["hidden_size"]))
                    ntoks.append(nt)
                    nimg += 1
                    tags += f"<|image_{nimg}|>\n"
                head = ("" if ti == 0 else "\n") + "<|user|>\n" + tags + turn["prompt"] + \
                    "<|end|>\n<|assistant|>\n"
                ids += encode_chunks(tok, head, ti == 0, ntoks, 0)
                gen = greedy(clip, lm, glue_d, tok, ids, feats, dev, max_new, eos)
                ans_ids = [g for g in gen if g not in eos]
                answer = tok.decode(ans_ids, skip_special_tokens=True)
                ok = score(turn["scorer"], answer, turn["expected"])
                turn_res.append({"answer": answer, "ids": gen, "passed": ok})
                ids += gen if gen and gen[-1] == end_id else gen + [end_id]
            results.append({"suite": suite, "id": c["id"], "turns": turn_res,
                            "passed": all(t["passed"] for t in turn_res)})
            st = stats.setdefault(suite, {"cases": 0, "passed": 0, "turns": 0, "turns_passed": 0})
            st["cases"] += 1
            st["passed"] += results[-1]["passed"]
            st["turns"] += len(turn_res)
            st["turns_passed"] += sum(t["passed"] for t in turn_res)
    with open(out_path, "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    return stats


def export(clip, lm, glue, tok_json, out_dir):
    from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=True)
    sd = R.published_state(clip, lm, {k: v.detach() for k, v in glue.as_dict().items()})
    sd = {k: v.detach().to(torch.bfloat16).contiguous().cpu() for k, v in sd.items()}
    save_file(sd, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    cfg = R.make_config()
    cfg["_name_or_path"] = "vlmtest-demo-phi3v"
    cfg["torch_dtype"] = "bfloat16"
    cfg["rope_scaling"] = {"type": "su", "short_factor": R.SHORT_FACTOR,
                           "long_factor": R.LONG_FACTOR}
    json.dump(cfg, open(os.path.join(out_dir, "config.json"), "w"), indent=2)
    json.dump({"num_crops": NUM_CROPS, "image_mean": list(R.MEAN), "image_std": list(R.STD),
               "image_processor_type": "Phi3VImageProcessor", "processor_class": "Phi3VProcessor",
               "num_img_tokens": 144}, open(os.path.join(out_dir, "preprocessor_config.json"), "w"),
              indent=2)
    vocab = json.loads(tok_json)["model"]["vocab"]
    ids = {t: vocab[t] for t in SPECIALS}
    json.dump({"bos_token_id": 1, "eos_token_id": [ids["<|end|>"], ids["<|endoftext|>"]],
               "pad_token_id": ids["<|endoftext|>"]},
              open(os.path.join(out_dir, "generation_config.json"), "w"), indent=2)
    open(os.path.join(out_dir, "tokenizer.json"), "w").write(tok_json)
    tc = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                     "data", "tokenizer", "phi3", "tokenizer_config.json")))
    tc_out = {k: tc[k] for k in ("add_bos_token", "add_eos_token", "bos_token", "eos_token",
                                 "pad_token", "unk_token", "chat_template",
                                 "clean_up_tokenization_spaces", "legacy", "tokenizer_class")}
    tc_out["model_max_length"] = LMCFG["max_position_embeddings"]
    json.dump(tc_out, open(os.path.join(out_dir, "tokenizer_config.json"), "w"), indent=2)
    json.dump({"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": "<unk>"}, open(os.path.join(out_dir, "special_tokens_map.json"), "w"),
              indent=2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--time-limit", type=float, default=1e9, help="stop training after S seconds")
    ap.add_argument("--suites", default="suites")
    ap.add_argument("--print-every", type=int, default=100)
    ap.add_argument("--attn", default="sdpa", help="attention kernel for training")
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--init", help="continue training from an exported model folder")
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--profile", action="store_true", help="time each phase (synchronising)")
    ap.add_argument("--pool", type=int, default=4,
                    help="batches' worth of samples sorted by length together")
    ap.add_argument("--self-test", action="store_true",
                    help="check the batched glue against phi3v_ref.hd_glue (CPU) and exit")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the vision tower and the decoder (dynamic shapes)")
    ap.add_argument("--eval-only", action="store_true",
                    help="only evaluate the model folder given with --init")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.self_test:
        self_test()
        return
    if not args.out:
        ap.error("--out is required")
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    PROFILE[0] = args.profile
    os.makedirs(args.out, exist_ok=True)
    here = os.path.dirname(os.path.abspath(__file__))
    phi3_tok = os.path.join(here, "..", "tests", "data", "tokenizer", "phi3", "tokenizer.json")

    t0 = time.time()
    if args.init:
        # Continue from an exported model: its tokenizer and weights.
        tok_json = open(os.path.join(args.init, "tokenizer.json")).read()
    else:
        texts = scenes.corpus_text(60000, args.seed)
        tok_obj = train_tokenizer(texts, args.vocab, phi3_tok)
        tok_json = json.dumps(tok_obj, ensure_ascii=False)
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(tok_json)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    vocab_rows = (vocab_size + 63) // 64 * 64
    print(f"tokenizer: {vocab_size} tokens ({vocab_rows} rows), {time.time() - t0:.1f}s",
          flush=True)

    R.LM["pad_token_id"] = tok.token_to_id("<|endoftext|>")
    clip, lm, glue = build(vocab_rows)
    if args.init:
        from safetensors.torch import load_file
        sd = load_file(os.path.join(args.init, "model.safetensors"))
        g = R.load_published(clip, lm, sd)
        with torch.no_grad():
            for k, p in glue.as_dict().items():
                p.copy_(g[k])
        print("initialised from", args.init, flush=True)
    # Training may use a fused attention kernel; the evaluation below uses the
    # eager (reference) path in float32.
    clip.config._attn_implementation = args.attn
    lm.config._attn_implementation = args.attn
    clip.to(dev).train()
    lm.to(dev).train()
    glue.to(dev).train()
    if args.eval_only:
        evaluate_shipped(clip, lm, glue, tok, args, dev, t0)
        return
    fwd_clip, fwd_lm = clip.forward, lm.model.forward
    if args.compile:
        clip.forward = torch.compile(fwd_clip, dynamic=True)
        lm.model.forward = torch.compile(fwd_lm, dynamic=True)
    params = list(clip.parameters()) + list(lm.parameters()) + list(glue.parameters())
    print("params:", sum(p.numel() for p in params), flush=True)
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warm = args.warmup

    def lr_at(step):
        if step < warm:
            return args.lr * (step + 1) / warm
        p = (step - warm) / max(1, args.steps - warm)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))

    dl = torch.utils.data.DataLoader(SceneStream(args.seed, tok_json, args.batch, args.pool),
                                     batch_size=None, num_workers=args.workers,
                                     prefetch_factor=6, persistent_workers=True, pin_memory=True)
    log = []
    it = iter(dl)
    t_train = time.time()
    step = 0
    t_data = t_comp = 0.0
    n_samples = n_tokens = 0
    pending = []
    skipped = torch.zeros((), dtype=torch.int32, device=dev)
    for step in range(args.steps):
        ta = time.time()
        bt = next(it)
        tb = time.time()
        t_data += tb - ta
        n_samples += bt["n_samples"]
        n_tokens += bt["n_tokens"]
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = train_loss(clip, lm, glue, bt, dev)
        tp = time.time()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        tp = phase("backward", tp)
        # A batch whose loss or gradient is not finite is skipped (its
        # gradient zeroed; counted and reported), without a host sync.
        total = torch.nn.utils.clip_grad_norm_(params, 1.0)
        ok = torch.isfinite(total)
        skipped += (~ok).int()
        for p_ in params:
            if p_.grad is not None:
                p_.grad = torch.where(ok, p_.grad, torch.zeros_like(p_.grad))
        opt.step()
        phase("optim", tp)
        # Losses stay on the GPU until printed: no synchronisation per step.
        pending.append((step, loss.detach(), time.time() - t_train))
        t_comp += time.time() - tb
        if step % args.print_every == 0:
            for st_, lt, tt in pending:
                log.append({"step": st_, "loss": float(lt), "t": tt})
            pending.clear()
            lv = log[-1]["loss"]
            if int(skipped):
                print(f"  steps skipped so far: {int(skipped)}", flush=True)
            el = time.time() - t_train
            print(f"step {step} loss {lv:.4f} t {el:.0f}s {n_samples / max(el, 1e-9):.0f} "
                  f"samples/s {n_tokens / max(el, 1e-9) / 1e3:.0f}k tok/s "
                  f"(waiting for data {t_data:.0f}s, compute {t_comp:.0f}s)", flush=True)
        if time.time() - t_train > args.time_limit:
            print(f"time limit reached at step {step}", flush=True)
            break
    for st_, lt, tt in pending:
        log.append({"step": st_, "loss": float(lt), "t": tt})
    train_s = time.time() - t_train
    # The workers sit blocked on full queues; a polite shutdown waits for
    # each in turn, so end them now.
    for w in getattr(it, "_workers", []):
        w.terminate()
    del it, dl
    if PHASES:
        print("phases:", {k: round(v, 1) for k, v in PHASES.items()}, flush=True)
    print(f"trained {step + 1} steps in {train_s:.0f}s: {n_samples} samples "
          f"({n_samples / train_s:.0f}/s), {n_tokens} tokens, {int(skipped)} steps skipped "
          f"(not finite)", flush=True)
    json.dump({"steps": step + 1, "train_seconds": train_s, "samples": n_samples,
               "skipped_steps": int(skipped),
               "tokens": n_tokens, "log": log, "args": vars(args)},
              open(os.path.join(args.out, "train_log.json"), "w"))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        ls = np.array([r["loss"] for r in log])
        k = 25
        sm = np.convolve(ls, np.ones(k) / k, mode="valid") if len(ls) > k else ls
        plt.figure(figsize=(7, 4))
        plt.plot(ls, alpha=0.3, label="loss")
        plt.plot(np.arange(len(sm)) + (len(ls) - len(sm)), sm, label=f"mean of {k}")
        plt.yscale("log")
        plt.xlabel("step")
        plt.ylabel("cross-entropy on answer tokens")
        plt.title(f"demo model training (seed {args.seed}, {step + 1} steps, {train_s:.0f} s)")
        plt.legend()
        plt.tight_layout()
        plt.savefig(os.path.join(args.out, "loss.png"), dpi=90)
    except Exception as e:  # the plot is a convenience
        print("no plot:", e)

    demo_dir = os.path.join(args.out, "demo")
    export(clip, lm, glue, tok_json, demo_dir)
    if args.compile:
        clip.forward, lm.model.forward = fwd_clip, fwd_lm
    if args.no_eval:
        print(f"total {time.time() - t0:.0f}s", flush=True)
        return
    evaluate_shipped(clip, lm, glue, tok, args, dev, t0)


def evaluate_shipped(clip, lm, glue, tok, args, dev, t0):
    """Evaluate what ships: the bf16 weights widened to f32, eager attention."""
    clip.config._attn_implementation = "eager"
    lm.config._attn_implementation = "eager"
    clip.float().eval()
    lm.float().eval()
    glue.float().eval()
    with torch.no_grad():
        for mod in (clip, lm, glue):
            for p in mod.parameters():
                p.copy_(p.to(torch.bfloat16).float())
    stats = evaluate(clip, lm, glue, tok, args.suites, dev,
                     os.path.join(args.out, "pytorch_answers.jsonl"))
    print("eval:", json.dumps(stats), flush=True)
    json.dump(stats, open(os.path.join(args.out, "eval_stats.json"), "w"))
    print(f"total {time.time() - t0:.0f}s", flush=True)

if __name__ == "__main__":
    main()
