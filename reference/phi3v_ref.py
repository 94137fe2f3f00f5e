#!/usr/bin/env python3
"""Reference outputs for the C engine, computed with PyTorch + transformers.

Builds tiny random-weight checkpoints in the exact published Phi3V layout
(real tensor names and config keys, the real Phi-3.5-vision tokenizer files),
then runs them through transformers' CLIPVisionModel and Phi3ForCausalLM with
the Phi-3.5-vision preprocessing and HD glue ported from the published
processing/modeling code (see shared/docs/phi3v-spec.md), and dumps: input ids,
image features (after the projector), CLIP hidden states, logits and greedy ids.

Runs on the GPU machine (transformers, tokenizers and safetensors are there);
everything is computed in float32 on the CPU for determinism (the model is
tiny). Usage:

    python3 reference/phi3v_ref.py --tokenizer-dir tests/data/tokenizer/phi3 --out OUT

Output layout (commit under tests/data/tiny/):
    OUT/f32/   sharded float32 checkpoint (2 shards + index)
    OUT/bf16/  single-file bfloat16 checkpoint
    OUT/images/*.png
    OUT/ref/{f32,bf16}/<case>.json + .f32 dumps
"""
import argparse
import json
import math
import os
import shutil

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
import torchvision.transforms.functional as TF

SEED = 1234
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
CROP = 336

# --- the tiny architecture ----------------------------------------------------
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              image_size=336, patch_size=14, layer_norm_eps=1e-5, hidden_act="quick_gelu")
LM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=4, vocab_size=32064, rms_norm_eps=1e-5, rope_theta=10000.0,
          max_position_embeddings=4096, original_max_position_embeddings=512)
HEAD_DIM = LM["hidden_size"] // LM["num_attention_heads"]
# LongRoPE factors: head_dim/2 values each, rising like the published ones.
SHORT_FACTOR = [1.0, 1.25, 2.0, 3.5]
LONG_FACTOR = [1.5, 3.0, 6.0, 12.0]
NUM_CROPS = 4
NEW_TOKENS = 64


def make_config():
    """config.json in the published Phi3V layout, tiny sizes, plus our
    `vision_config` extension (the published config has none)."""
    return {
        "_name_or_path": "vlmtest-tiny-phi3v",
        "architectures": ["Phi3VForCausalLM"],
        "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_phi3_v.Phi3VConfig",
                     "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM"},
        "bos_token_id": 1,
        "embd_layer": {"embedding_cls": "image", "hd_transform_order": "sub_glb",
                       "projection_cls": "mlp", "use_hd_transform": True,
                       "with_learnable_separator": True},
        "embd_pdrop": 0.0,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": LM["hidden_size"],
        "img_processor": {"image_dim_out": VISION["hidden_size"],
                          "model_name": "openai/clip-vit-large-patch14-336",
                          "name": "clip_vision_model", "num_img_tokens": 144},
        "initializer_range": 0.02,
        "intermediate_size": LM["intermediate_size"],
        "max_position_embeddings": LM["max_position_embeddings"],
        "model_type": "phi3_v",
        "num_attention_heads": LM["num_attention_heads"],
        "num_hidden_layers": LM["num_hidden_layers"],
        "num_key_value_heads": LM["num_key_value_heads"],
        "original_max_position_embeddings": LM["original_max_position_embeddings"],
        "pad_token_id": LM.get("pad_token_id", 32000),
        "resid_pdrop": 0.0,
        "rms_norm_eps": LM["rms_norm_eps"],
        "rope_scaling": {"long_factor": LONG_FACTOR, "short_factor": SHORT_FACTOR, "type": "su"},
        "rope_theta": LM["rope_theta"],
        "sliding_window": 262144,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.38.1",
        "use_cache": True,
        "vocab_size": LM["vocab_size"],
        "_attn_implementation": "eager",
        "vision_config": dict(VISION),
    }


# --- preprocessing (port of the published Phi3V image processor) -------------
def hd_geometry(w, h, num_crops):
    """The HD transform's geometry for a w x h image: (trans, new_w, new_h,
    tar, top). Portrait images (trans) are handled transposed: the (possibly
    transposed) image is resized to new_w x new_h, then padded to tar rows
    with top rows of white above."""
    trans = w < h
    if trans:
        w, h = h, w
    ratio = w / h
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    new_w = int(scale * CROP)
    new_h = int(new_w / ratio)
    tar = int(math.ceil(new_h / CROP) * CROP)
    return trans, new_w, new_h, tar, int((tar - new_h) / 2)


def hd_transform(img, num_crops):
    trans, new_w, new_h, tar, top = hd_geometry(*img.size, num_crops)
    if trans:
        img = img.transpose(Image.TRANSPOSE)
    img = TF.resize(img, [new_h, new_w])  # PIL bilinear on a PIL image
    bottom = tar - new_h - top
    img = TF.pad(img, [0, top, 0, bottom], fill=[255, 255, 255])
    if trans:
        img = img.transpose(Image.TRANSPOSE)
    return img


def preprocess(img, num_crops):
    img = img.convert("RGB")
    hd = hd_transform(img, num_crops)
    t = TF.normalize(TF.to_tensor(hd), MEAN, STD)  # [3, H, W]
    H, W = t.shape[1], t.shape[2]
    glb = F.interpolate(t[None], size=(CROP, CROP), mode="bicubic")
    crops = t.reshape(1, 3, H // CROP, CROP, W // CROP, CROP).permute(0, 2, 4, 1, 3, 5)
    crops = crops.reshape(-1, 3, CROP, CROP)
    pv = torch.cat([glb, crops], 0)
    pad = torch.zeros(num_crops + 1 - pv.shape[0], 3, CROP, CROP)
    pv = torch.cat([pv, pad], 0)
    hc, wc = H // CROP, W // CROP
    ntok = (hc * wc + 1) * 144 + 1 + (hc + 1) * 12
    return pv, [H, W], ntok


# --- prompt -> ids (spec 2.4: each chunk with BOS, -k runs) -------------------
def prompt_ids(tok, prompt, ntoks):
    import re
    pattern = r"<\|image_\d+\|>"
    chunks = re.split(pattern, prompt)
    tags = [int(m[8:-2]) for m in re.findall(pattern, prompt)]
    ids = []
    for i, c in enumerate(chunks):
        ids += tok.encode(c).ids  # add_special_tokens=True: BOS
        if i < len(tags):
            k = tags[i]
            ids += [-k] * ntoks[k - 1]
    return ids


# --- model --------------------------------------------------------------------
def build_modules(cfg_dtype):
    from transformers import CLIPVisionConfig, CLIPVisionModel, Phi3Config, Phi3ForCausalLM
    vcfg = CLIPVisionConfig(hidden_size=VISION["hidden_size"],
                            intermediate_size=VISION["intermediate_size"],
                            num_hidden_layers=VISION["num_hidden_layers"],
                            num_attention_heads=VISION["num_attention_heads"],
                            image_size=VISION["image_size"], patch_size=VISION["patch_size"],
                            hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=32,
                            attention_dropout=0.0)
    vcfg._attn_implementation = "eager"
    clip = CLIPVisionModel(vcfg)
    rope = {"type": "longrope", "rope_type": "longrope", "short_factor": SHORT_FACTOR,
            "long_factor": LONG_FACTOR}
    kw = dict(vocab_size=LM["vocab_size"], hidden_size=LM["hidden_size"],
              intermediate_size=LM["intermediate_size"],
              num_hidden_layers=LM["num_hidden_layers"],
              num_attention_heads=LM["num_attention_heads"],
              num_key_value_heads=LM["num_key_value_heads"], rms_norm_eps=LM["rms_norm_eps"],
              max_position_embeddings=LM["max_position_embeddings"],
              original_max_position_embeddings=LM["original_max_position_embeddings"],
              bos_token_id=1, eos_token_id=2, pad_token_id=LM.get("pad_token_id", 32000),
              tie_word_embeddings=False,
              sliding_window=None, attention_dropout=0.0, resid_pdrop=0.0, embd_pdrop=0.0)
    try:
        lcfg = Phi3Config(rope_scaling=rope, rope_theta=LM["rope_theta"], **kw)
    except TypeError:
        rope["rope_theta"] = LM["rope_theta"]
        lcfg = Phi3Config(rope_parameters=rope, **kw)
    lcfg._attn_implementation = "eager"
    lm = Phi3ForCausalLM(lcfg)
    return clip, lm


def init_weights(clip, lm, d_img, d_lm, gen):
    """Random weights with spread-out logits (std ~ 1/sqrt(fan_in)) so greedy
    choices are far from ties."""
    def rnd(shape, std):
        return torch.randn(*shape, generator=gen) * std
    for mod in (clip, lm):
        for name, p in mod.named_parameters():
            with torch.no_grad():
                if p.ndim == 1 and ("norm" in name or "layrnorm" in name):
                    if name.endswith("weight"):
                        p.copy_(1.0 + rnd(p.shape, 0.1))
                    else:
                        p.copy_(rnd(p.shape, 0.1))
                elif p.ndim == 1:
                    p.copy_(rnd(p.shape, 0.1))
                elif "embed_tokens" in name:
                    p.copy_(rnd(p.shape, 1.0))
                elif "position_embedding" in name or "class_embedding" in name:
                    p.copy_(rnd(p.shape, 0.5))
                else:
                    fan_in = int(np.prod(p.shape[1:]))
                    p.copy_(rnd(p.shape, 1.0 / math.sqrt(fan_in)))
    glue = {
        "model.vision_embed_tokens.glb_GN": rnd((1, 1, 4 * d_img), 0.5),
        "model.vision_embed_tokens.sub_GN": rnd((1, 1, 1, 4 * d_img), 0.5),
        "model.vision_embed_tokens.img_projection.0.weight": rnd((d_lm, 4 * d_img),
                                                                 1 / math.sqrt(4 * d_img)),
        "model.vision_embed_tokens.img_projection.0.bias": rnd((d_lm,), 0.1),
        "model.vision_embed_tokens.img_projection.2.weight": rnd((d_lm, d_lm), 1 / math.sqrt(d_lm)),
        "model.vision_embed_tokens.img_projection.2.bias": rnd((d_lm,), 0.1),
    }
    return glue


VPREFIX = "model.vision_embed_tokens.img_processor.vision_model."


def published_state(clip, lm, glue):
    sd = {}
    for k, v in clip.state_dict().items():
        if "position_ids" in k:
            continue
        k2 = k[len("vision_model."):] if k.startswith("vision_model.") else k
        sd[VPREFIX + k2] = v
    for k, v in lm.state_dict().items():
        if "rotary_emb" in k:
            continue
        sd[k] = v
    sd.update(glue)
    return sd


def load_published(clip, lm, sd):
    """Load published names back into the transformers modules (float32)."""
    csd = {}
    ckeys = set(clip.state_dict().keys())
    for k, v in sd.items():
        if k.startswith(VPREFIX):
            k2 = k[len(VPREFIX):]
            if k2 not in ckeys and ("vision_model." + k2) in ckeys:
                k2 = "vision_model." + k2
            csd[k2] = v.float()
    missing, unexpected = clip.load_state_dict(csd, strict=False)
    assert not unexpected, unexpected
    assert all("position_ids" in m for m in missing), missing
    lsd = {k: v.float() for k, v in sd.items()
           if not k.startswith("model.vision_embed_tokens.")}
    missing, unexpected = lm.load_state_dict(lsd, strict=False)
    assert not unexpected, unexpected
    assert all("rotary" in m for m in missing), missing
    return {k: v.float() for k, v in sd.items()
            if k.startswith("model.vision_embed_tokens.") and not k.startswith(VPREFIX)}


def clip_features(clip, pv):
    out = clip(pixel_values=pv, output_hidden_states=True)
    return out.hidden_states[-2][:, 1:]  # drop CLS


def hd_glue(feats, image_size, glue, d_img):
    """feats: [num_crops+1, P, C] CLIP features of one image; spec section 5."""
    g = int(math.isqrt(feats.shape[1]))
    m = g // 2
    C = d_img
    H, W = image_size
    hc, wc = H // CROP, W // CROP
    sub_GN = glue["model.vision_embed_tokens.sub_GN"]
    glb_GN = glue["model.vision_embed_tokens.glb_GN"]
    glb = feats[:1].reshape(1, g, g, C).reshape(1, m, 2, m, 2, C).permute(0, 1, 3, 2, 4, 5)
    glb = glb.reshape(1, m, m, 4 * C)
    glb = torch.cat([glb, sub_GN.repeat(1, m, 1, 1)], dim=2).reshape(1, -1, 4 * C)
    nb = hc * wc
    sub = feats[1:1 + nb].reshape(nb, g, g, C).reshape(nb, m, 2, m, 2, C)
    sub = sub.permute(0, 1, 3, 2, 4, 5).reshape(nb, m * m, 4 * C)
    sub = sub.reshape(1, hc, wc, m, m, -1).permute(0, 1, 3, 2, 4, 5).reshape(1, hc * m, wc * m,
                                                                            4 * C)
    sub = torch.cat([sub, sub_GN.repeat(1, hc * m, 1, 1)], dim=2).reshape(1, -1, 4 * C)
    seq = torch.cat([sub, glb_GN, glb], dim=1)[0]
    p = F.linear(seq, glue["model.vision_embed_tokens.img_projection.0.weight"],
                 glue["model.vision_embed_tokens.img_projection.0.bias"])
    p = F.gelu(p)
    p = F.linear(p, glue["model.vision_embed_tokens.img_projection.2.weight"],
                 glue["model.vision_embed_tokens.img_projection.2.bias"])
    return p


def make_images(outdir):
    os.makedirs(outdir, exist_ok=True)
    specs = {"landscape": (500, 375), "wide": (640, 320), "portrait": (300, 600)}
    rng = np.random.default_rng(SEED)
    paths = {}
    for name, (w, h) in specs.items():
        x = np.arange(w)[None, :, None]
        y = np.arange(h)[:, None, None]
        c = np.arange(3)[None, None, :]
        arr = ((3 * x + 5 * y + 85 * c + 4 * ((x ^ y) & 31)) & 255).astype(np.uint8)
        img = Image.fromarray(arr, "RGB")
        d = ImageDraw.Draw(img)
        for _ in range(4):
            x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            s = int(rng.integers(20, 40))
            col = tuple(int(v) for v in rng.integers(0, 256, 3))
            d.ellipse([x0, y0, x0 + s, y0 + s], fill=col)
        p = os.path.join(outdir, name + ".png")
        img.save(p)
        paths[name] = p
    return paths


CASES = [
    ("text_only", "<|user|>\nWhat is the capital of France?<|end|>\n<|assistant|>\n", []),
    ("one_image", "<|user|>\n<|image_1|>\nDescribe the image.<|end|>\n<|assistant|>\n", ["wide"]),
    ("two_images", "<|user|>\n<|image_1|>\n<|image_2|>\nCompare the two pictures.<|end|>\n"
                   "<|assistant|>\n", ["landscape", "portrait"]),
    ("multi_turn", "<|user|>\n<|image_1|>\nWhat shape is this?<|end|>\n<|assistant|>\n"
                   "A red circle.<|end|>\n<|user|>\nAnd what colour is it?<|end|>\n<|assistant|>\n",
     ["portrait"]),
    ("system", "<|system|>\nYou are a careful assistant.<|end|>\n<|user|>\nName three colours."
               "<|end|>\n<|assistant|>\n", []),
]


def write_f32(path, t):
    np.ascontiguousarray(t.detach().cpu().numpy().astype("<f4")).tofile(path)


@torch.no_grad()
def run_reference(clip, lm, glue, tok, images, outdir, d_img, cols):
    os.makedirs(outdir, exist_ok=True)
    emb = lm.get_input_embeddings()
    summary = {}
    for name, prompt, imgs in CASES:
        pvs, sizes, ntoks, feats_all = [], [], [], []
        for iname in imgs:
            pv, size, nt = preprocess(Image.open(images[iname]), NUM_CROPS)
            pvs.append(pv)
            sizes.append(size)
            ntoks.append(nt)
        ids = prompt_ids(tok, prompt, ntoks)
        record = {"case": name, "prompt": prompt, "images": [i + ".png" for i in imgs],
                  "num_crops": NUM_CROPS, "image_sizes": sizes, "num_img_tokens": ntoks,
                  "input_ids": ids, "n_tokens": len(ids)}
        for k, pv in enumerate(pvs):
            f = clip_features(clip, pv)
            if k == 0:
                hc, wc = sizes[0][0] // CROP, sizes[0][1] // CROP
                write_f32(os.path.join(outdir, f"{name}.clip0.f32"), f[:1 + hc * wc])
                record["clip0_shape"] = [1 + hc * wc, f.shape[1], f.shape[2]]
            p = hd_glue(f, sizes[k], glue, d_img)
            assert p.shape[0] == ntoks[k], (p.shape, ntoks[k])
            write_f32(os.path.join(outdir, f"{name}.features{k}.f32"), p)
            feats_all.append(p)
        ids_t = torch.tensor(ids)
        x = emb(ids_t.clamp(min=0))
        if feats_all:
            pos = (ids_t < 0).nonzero()[:, 0]
            x[pos] = torch.cat(feats_all, 0)
        # Prefill logits at every position.
        logits = lm(inputs_embeds=x[None], use_cache=False).logits[0].float()
        write_f32(os.path.join(outdir, f"{name}.logits_cols.f32"), logits[:, cols])
        write_f32(os.path.join(outdir, f"{name}.logits_last.f32"), logits[-1])
        record["logits_cols_shape"] = [logits.shape[0], len(cols)]
        # Greedy: the whole sequence is recomputed each step, which equals the
        # reference's cache-with-recompute-at-the-LongRoPE-switch semantics.
        gen = []
        seq = x
        for _ in range(NEW_TOKENS):
            hid = lm.model(inputs_embeds=seq[None], use_cache=False).last_hidden_state
            lg = lm.lm_head(hid[0, -1]).float()
            nxt = int(torch.argmax(lg))
            gen.append(nxt)
            seq = torch.cat([seq, emb(torch.tensor([nxt]))], 0)
        record["greedy_ids"] = gen
        top2 = torch.topk(logits[-1], 2).values
        record["last_top2_gap"] = float(top2[0] - top2[1])
        with open(os.path.join(outdir, f"{name}.json"), "w") as f:
            json.dump(record, f)
        summary[name] = {"n_tokens": len(ids), "greedy_head": gen[:8]}
        print(name, summary[name], flush=True)
    return summary


def save_checkpoint(sd, outdir, dtype, shards, tokdir):
    from safetensors.torch import save_file
    os.makedirs(outdir, exist_ok=True)
    names = sorted(sd.keys())
    # Vision first, then the LM, as in the published shard 1.
    names.sort(key=lambda n: (0 if n.startswith("model.vision_embed_tokens") else 1, n))
    conv = {n: sd[n].to(dtype).contiguous() for n in names}
    meta = {"format": "pt"}
    if shards == 1:
        save_file(conv, os.path.join(outdir, "model.safetensors"), metadata=meta)
    else:
        half = len(names) // 2
        parts = [names[:half], names[half:]]
        wm = {}
        total = 0
        for i, part in enumerate(parts):
            fn = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
            save_file({n: conv[n] for n in part}, os.path.join(outdir, fn), metadata=meta)
            for n in part:
                wm[n] = fn
                total += conv[n].numel() * conv[n].element_size()
        with open(os.path.join(outdir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2)
    cfg = make_config()
    cfg["torch_dtype"] = {torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype]
    with open(os.path.join(outdir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(outdir, "preprocessor_config.json"), "w") as f:
        json.dump({"num_crops": NUM_CROPS, "image_mean": list(MEAN), "image_std": list(STD),
                   "image_processor_type": "Phi3VImageProcessor", "processor_class":
                   "Phi3VProcessor", "num_img_tokens": 144}, f, indent=2)
    with open(os.path.join(outdir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": [32007, 32001, 32000],
                   "pad_token_id": 32000}, f, indent=2)
    for fn in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(outdir, fn)):
            os.remove(os.path.join(outdir, fn))
        shutil.copy(os.path.join(tokdir, fn), os.path.join(outdir, fn))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer-dir", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(SEED)
    torch.set_num_threads(8)
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(args.tokenizer_dir, "tokenizer.json"))

    clip, lm = build_modules(torch.float32)
    gen = torch.Generator().manual_seed(SEED)
    glue = init_weights(clip, lm, VISION["hidden_size"], LM["hidden_size"], gen)
    sd = published_state(clip, lm, glue)
    print("tensors:", len(sd), "params:", sum(v.numel() for v in sd.values()))
    rot = getattr(lm.model, "rotary_emb", None)
    print("rotary:", type(rot).__name__, getattr(rot, "rope_type", None),
          getattr(rot, "attention_scaling", None))

    images = make_images(os.path.join(args.out, "images"))
    cols = sorted(set(list(range(0, 32064, 128)) + [1, 2, 13, 29871, 32000, 32001, 32007]))
    with open(os.path.join(args.out, "logit_cols.json"), "w") as f:
        json.dump(cols, f)

    save_checkpoint(sd, os.path.join(args.out, "f32"), torch.float32, 2, args.tokenizer_dir)
    save_checkpoint(sd, os.path.join(args.out, "bf16"), torch.bfloat16, 1, args.tokenizer_dir)

    clip.eval()
    lm.eval()
    for variant, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        # Reload from the published names (bf16 weights widened to f32): the
        # same numbers the C engine reads from the file.
        rsd = {k: v.to(dtype) for k, v in sd.items()}
        g = load_published(clip, lm, rsd)
        run_reference(clip, lm, g, tok, images, os.path.join(args.out, "ref", variant),
                      VISION["hidden_size"], cols)


if __name__ == "__main__":
    main()
