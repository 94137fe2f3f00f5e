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


def packed_sample(rng):
    """Several questions about one shape scene, asked as consecutive turns:
    one image, many supervised answers (the image tokens dominate the cost)."""
    for _ in range(100):
        sc = scenes.make_shape_scene(rng, n=rng.randint(1, 4))
        if sc is None:
            continue
        turns = []
        for q in rng.sample(SHAPE_QUESTIONS, len(SHAPE_QUESTIONS)):
            qa = scenes.QUESTION_TYPES[q][0](rng, sc)
            if qa is not None:
                turns.append({"n_images_before": 1, "prompt": qa[0], "answer": qa[1]})
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



class SceneStream(torch.utils.data.IterableDataset):
    def __init__(self, seed, tok_json):
        self.seed = seed
        self.tok_json = tok_json

    def __iter__(self):
        from tokenizers import Tokenizer
        info = torch.utils.data.get_worker_info()
        wid = info.id if info else 0
        rng = random.Random(self.seed * 1000 + wid)
        tok = Tokenizer.from_str(self.tok_json)
        end_id = tok.token_to_id("<|end|>")
        while True:
            s = training_sample(rng)
            hds, ntoks = [], []
            for imgs in turn_images(s):
                for img in imgs:
                    hd = R.hd_transform(img.convert("RGB"), NUM_CROPS)
                    arr = torch.from_numpy(np.asarray(hd, dtype=np.uint8).copy()).permute(2, 0, 1)
                    hds.append(arr)
                    H, W = arr.shape[1], arr.shape[2]
                    hc, wc = H // 336, W // 336
                    ntoks.append((hc * wc + 1) * 144 + 1 + (hc + 1) * 12)
            ids, mask = conversation_ids(tok, render_turns(s), ntoks, end_id)
            yield {"hd": hds, "ids": ids, "mask": mask}


def collate(batch):
    return batch


MEAN_T = torch.tensor(R.MEAN).view(3, 1, 1)
STD_T = torch.tensor(R.STD).view(3, 1, 1)


def gpu_pixels(hd_u8, dev):
    t = hd_u8.to(dev, non_blocking=True).float() / 255.0
    t = (t - MEAN_T.to(dev)) / STD_T.to(dev)
    H, W = t.shape[1], t.shape[2]
    glb = F.interpolate(t[None], size=(336, 336), mode="bicubic")
    crops = t.reshape(1, 3, H // 336, 336, W // 336, 336).permute(0, 2, 4, 1, 3, 5)
    crops = crops.reshape(-1, 3, 336, 336)
    return torch.cat([glb, crops], 0), [H, W]


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


def embed_batch(clip, lm, glue, batch, dev):
    """Embeddings for a batch of samples, image features spliced in."""
    t0 = phase("_", time.time())
    pix, sizes, owner = [], [], []
    for bi, s in enumerate(batch):
        for hd in s["hd"]:
            pv, size = gpu_pixels(hd, dev)
            pix.append(pv)
            sizes.append(size)
            owner.append(bi)
    feats_per_sample = [[] for _ in batch]
    t0 = phase("pixels", t0)
    if pix:
        allpv = torch.cat(pix, 0)
        f = R.clip_features(clip, allpv)
        t0 = phase("clip", t0)
        off = 0
        g = glue.as_dict()
        for pv, size, bi in zip(pix, sizes, owner):
            n = pv.shape[0]
            feats_per_sample[bi].append(R.hd_glue(f[off:off + n], size, g, VISION["hidden_size"]))
            off += n
    L = max(len(s["ids"]) for s in batch)
    emb = lm.get_input_embeddings()
    xs, am, labels = [], [], []
    for bi, s in enumerate(batch):
        ids = torch.tensor(s["ids"], device=dev)
        x = emb(ids.clamp(min=0))
        if feats_per_sample[bi]:
            pos = (ids < 0).nonzero()[:, 0]
            x = x.index_put((pos,), torch.cat(feats_per_sample[bi], 0).to(x.dtype))
        pad = L - len(s["ids"])
        xs.append(F.pad(x, (0, 0, 0, pad)))
        am.append(torch.tensor([1] * len(s["ids"]) + [0] * pad, device=dev))
        lab = [i if m else -100 for i, m in zip(s["ids"], s["mask"])] + [-100] * pad
        labels.append(torch.tensor(lab, device=dev))
    out = torch.stack(xs), torch.stack(am), torch.stack(labels)
    phase("glue+embed", t0)
    return out


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
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
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
    params = list(clip.parameters()) + list(lm.parameters()) + list(glue.parameters())
    print("params:", sum(p.numel() for p in params), flush=True)
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warm = args.warmup

    def lr_at(step):
        if step < warm:
            return args.lr * (step + 1) / warm
        p = (step - warm) / max(1, args.steps - warm)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))

    dl = torch.utils.data.DataLoader(SceneStream(args.seed, tok_json), batch_size=args.batch,
                                     num_workers=args.workers, collate_fn=collate,
                                     prefetch_factor=4, persistent_workers=True)
    log = []
    it = iter(dl)
    t_train = time.time()
    step = 0
    t_data = t_comp = 0.0
    for step in range(args.steps):
        ta = time.time()
        batch = next(it)
        tb = time.time()
        t_data += tb - ta
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            x, am, labels = embed_batch(clip, lm, glue, batch, dev)
            tp = time.time()
            out = lm(inputs_embeds=x, attention_mask=am, use_cache=False)
            logits = out.logits[:, :-1].float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
            tp = phase("lm fwd", tp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        tp = phase("backward", tp)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        phase("optim", tp)
        lv = float(loss.detach())
        t_comp += time.time() - tb
        log.append({"step": step, "loss": lv, "t": time.time() - t_train})
        if step % args.print_every == 0:
            print(f"step {step} loss {lv:.4f} t {time.time() - t_train:.0f}s "
                  f"(waiting for data {t_data:.0f}s, compute {t_comp:.0f}s)", flush=True)
        if time.time() - t_train > args.time_limit:
            print(f"time limit reached at step {step}", flush=True)
            break
    train_s = time.time() - t_train
    if PHASES:
        print("phases:", {k: round(v, 1) for k, v in PHASES.items()}, flush=True)
    print(f"trained {step + 1} steps in {train_s:.0f}s", flush=True)
    json.dump({"steps": step + 1, "train_seconds": train_s, "log": log, "args": vars(args)},
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
    # Evaluate what ships: bf16 weights widened to f32.
    if args.no_eval:
        return
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
