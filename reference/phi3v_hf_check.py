#!/usr/bin/env python3
"""Cross-check of the tiny Phi3V fixtures against transformers (GPU machine).

tests/data/model_ref/ was made by reference/ops_ref.py, a plain-PyTorch
re-implementation of the spec. This script runs the same tiny checkpoint
through transformers' own modules -- CLIPVisionModel for the tower and
Phi3ForCausalLM for the decoder (eager attention, float32, LongRoPE) -- with
the HD glue ported from the spec (ops_ref.hd_glue; transformers has no Phi3V
glue), and compares every expected tensor.

Usage (repository root; needs torch, transformers, numpy):
    python3 reference/phi3v_hf_check.py [OUT_DIR]
Writes OUT_DIR/hf_check.json (max |diff| per tensor, greedy ids equal or not,
library versions) and OUT_DIR/hf_expected.safetensors (the transformers
outputs under the names of expected.safetensors). Exit status 1 when a tensor
differs by more than 1e-4 or the greedy ids differ. Runs on CPU or GPU.
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ops_ref  # noqa: E402

import transformers  # noqa: E402
from transformers import CLIPVisionConfig, CLIPVisionModel, Phi3Config, Phi3ForCausalLM  # noqa: E402

torch.set_grad_enabled(False)
DEV = "cuda" if torch.cuda.is_available() else "cpu"
DATA = os.path.join(ops_ref.ROOT, "tests", "data", "model_ref")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "."
    os.makedirs(out_dir, exist_ok=True)
    cfg = json.load(open(os.path.join(DATA, "tiny", "config.json")))
    W = ops_ref.read_safetensors(os.path.join(DATA, "tiny", "model.safetensors"))
    E = {k: v[0] for k, v in ops_ref.read_safetensors(os.path.join(DATA, "expected.safetensors")).items()}
    vc = cfg["vision_config"]

    # --- CLIP through transformers ------------------------------------------
    clip = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=vc["hidden_size"], intermediate_size=vc["intermediate_size"],
        num_hidden_layers=vc["num_hidden_layers"], num_attention_heads=vc["num_attention_heads"],
        image_size=vc["image_size"], patch_size=vc["patch_size"], num_channels=3,
        hidden_act="quick_gelu", layer_norm_eps=vc["layer_norm_eps"],
        attn_implementation="eager")).float().eval()
    keys = set(clip.state_dict().keys())
    flat = not any(k.startswith("vision_model.") for k in keys)  # transformers 5 flattened it
    sd = {}
    for name, (t, _) in W.items():
        if name.startswith(ops_ref.V_PREFIX + "."):
            k = name[len(ops_ref.V_PREFIX) + 1:]
            sd[k if flat else "vision_model." + k] = t
    missing, unexpected = clip.load_state_dict(sd, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    assert not missing and not unexpected, (missing, unexpected)
    clip.to(DEV)

    report, H = {"transformers": transformers.__version__, "torch": torch.__version__,
                 "device": DEV, "max_abs_diff": {}}, ops_ref.Tensors()

    def cmp(name, got):
        got = got.detach().float().cpu()
        report["max_abs_diff"][name] = float((got - E[name]).abs().max())
        H.add(name, got.numpy())

    feats = {}
    for key in ("a", "b"):
        hc, wc = (int(v) for v in E[f"img_{key}.grid"])
        px = E[f"img_{key}.pixels"].to(DEV)
        hs = clip(px, output_hidden_states=True).hidden_states[vc["layer_idx"]][:, 1:]
        cmp(f"img_{key}.clip", hs[: 1 + hc * wc])
        feats[key] = ops_ref.hd_glue(W, hs.cpu(), hc, wc)
        cmp(f"img_{key}.features", feats[key])

    # --- the decoder through transformers -------------------------------------
    rs = cfg["rope_scaling"]
    common = dict(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"],
        max_position_embeddings=cfg["max_position_embeddings"],
        original_max_position_embeddings=cfg["original_max_position_embeddings"],
        rope_theta=cfg["rope_theta"], rms_norm_eps=cfg["rms_norm_eps"], hidden_act="silu",
        tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, attn_implementation="eager")
    lm = None
    for rtype in ("longrope", "su"):
        try:
            lm = Phi3ForCausalLM(Phi3Config(rope_scaling={
                "type": rtype, "short_factor": rs["short_factor"],
                "long_factor": rs["long_factor"]}, **common))
            break
        except Exception as e:  # older versions accept only "su"
            last = e
    if lm is None:
        raise last
    lm = lm.float().eval()
    sd = {n: t for n, (t, _) in W.items() if not n.startswith("model.vision_embed_tokens.")}
    missing, unexpected = lm.load_state_dict(sd, strict=False)
    missing = [k for k in missing if "rotary" not in k]
    assert not missing and not unexpected, (missing, unexpected)
    lm.to(DEV)
    emb_w = W["model.embed_tokens.weight"][0]

    def logits(ids, rows):
        ids_t = torch.tensor(ids, dtype=torch.int64)
        x = emb_w[ids_t.clamp(min=0)].clone()
        neg = (ids_t < 0).nonzero().flatten()
        if len(neg):
            x[neg] = rows
        pos = torch.arange(len(ids))[None].to(DEV)
        return lm(inputs_embeds=x[None].to(DEV), position_ids=pos, use_cache=False).logits[0].cpu()

    p1 = [int(v) for v in E["p1.ids"]]
    cmp("p1.logits", logits(p1, feats["a"]))
    seq, greedy, steps = list(p1), [], []
    for _ in range(len(E["p1.greedy"])):
        lg = logits(seq, feats["a"])[-1]
        steps.append(lg)
        t = int(torch.argmax(lg))
        greedy.append(t)
        seq.append(t)
    cmp("p1.step_logits", torch.stack(steps))
    report["p1.greedy_equal"] = greedy == [int(v) for v in E["p1.greedy"]]
    H.add("p1.greedy", np.array(greedy, dtype=np.int32), "I32")

    t2 = [int(v) for v in E["mt.turn2"]]
    conv = p1 + greedy[:6] + t2
    both = torch.cat([feats["a"], feats["b"]])
    cmp("mt.logits", logits(conv, both)[len(p1) + 6:])
    s1 = [int(v) for v in E["st.turn1"]]
    sg = [int(v) for v in E["st.greedy"]]
    s2 = [int(v) for v in E["st.turn2"]]
    cmp("st.logits", logits(s1 + sg + s2, None)[len(s1) + len(sg):])

    H.write(os.path.join(out_dir, "hf_expected.safetensors"))
    with open(os.path.join(out_dir, "hf_check.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    worst = max(report["max_abs_diff"].values())
    sys.exit(0 if worst <= 1e-4 and report["p1.greedy_equal"] else 1)


if __name__ == "__main__":
    main()
