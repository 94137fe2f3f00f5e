#!/usr/bin/env python3
"""transformers on the same shapes as build/gpu_model_bench (GPU machine).

The Phi-3.5-vision decoder as Phi3ForCausalLM (bf16, sdpa, LongRoPE, the
config of ../shared/models/phi-3.5-vision-instruct/config.reconstructed.json,
else phi-3-vision-128k-instruct/config.json) and the CLIP ViT-L/14-336 tower
as CLIPVisionModel (bf16, sdpa), random weights, on the GPU:
  - decode: a 16-token prompt, then 64 greedy steps, each one token with the
    KV cache (past_key_values), argmax on the GPU; tokens/s;
  - prefill: 800 tokens into an empty cache, logits of the last position
    only where the version allows (logits_to_keep / num_logits_to_keep);
    ms, median of 3 after a warm-up;
  - vision: 5 and 17 crops of 336 x 336 through 23 CLIP layers (the
    model uses the hidden state of layer 23 of 24, so 23 is the work it
    does); ms, median of 3. The HD glue and projector (two small linears on
    the merged rows) are not in this figure; gpu_model_bench includes them.
Usage (repository root): python3 reference/bench_hf.py [OUT_JSON]
Prints one line per figure and writes OUT_JSON (default bench_hf.json)."""
import json
import os
import sys
import time

import torch
import transformers
from transformers import CLIPVisionConfig, CLIPVisionModel, Phi3Config, Phi3ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("VLM_SHARED_DIR") or os.path.join(HERE, "..", "..", "shared")
DEV = "cuda"
DT = torch.bfloat16


def load_config():
    for rel in ("models/phi-3.5-vision-instruct/config.reconstructed.json",
                "models/phi-3.5-vision-instruct/config.json",
                "models/phi-3-vision-128k-instruct/config.json"):
        p = os.path.join(SHARED, rel)
        if os.path.exists(p):
            with open(p) as f:
                return json.load(f), p
    # No shared folder on this machine: Phi-3.5-vision's sizes as published,
    # LongRoPE factors of 1 (the same work per token; named in the report).
    print(f"bench_hf: no config under {SHARED}/models: built-in Phi-3.5-vision sizes")
    return dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192,
                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                max_position_embeddings=131072, original_max_position_embeddings=4096,
                rope_theta=10000.0, rms_norm_eps=1e-5,
                rope_scaling={"short_factor": [1.0] * 48, "long_factor": [1.0] * 48}), \
        "built-in (no shared folder)"


def sync_ms(t0):
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def median3(fn):
    fn()  # warm-up
    ts = []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        ts.append(sync_ms(t0))
    return sorted(ts)[1]


def build_decoder(cfg):
    rs = cfg["rope_scaling"]
    common = dict(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
        max_position_embeddings=cfg["max_position_embeddings"],
        original_max_position_embeddings=cfg["original_max_position_embeddings"],
        rope_theta=cfg["rope_theta"], rms_norm_eps=cfg["rms_norm_eps"], hidden_act="silu",
        tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, attn_implementation="sdpa")
    sf, lf = rs["short_factor"], rs["long_factor"]
    # transformers 4.x takes rope_scaling {"type": "longrope" (or "su")};
    # 5.x rope_parameters {"rope_type": "longrope", "rope_theta": ...}.
    variants = [
        dict(rope_parameters={"rope_type": "longrope", "rope_theta": cfg["rope_theta"],
                              "short_factor": sf, "long_factor": lf}),
        dict(rope_scaling={"rope_type": "longrope", "short_factor": sf, "long_factor": lf}),
        dict(rope_scaling={"type": "longrope", "short_factor": sf, "long_factor": lf}),
        dict(rope_scaling={"type": "su", "short_factor": sf, "long_factor": lf}),
    ]
    last = None
    for v in variants:
        try:
            conf = Phi3Config(**v, **common)
            with torch.device(DEV):  # random init on the card: seconds, not minutes
                torch.manual_seed(0)
                lm = Phi3ForCausalLM(conf).to(DT).eval()
            lm(torch.tensor([[1, 2, 3]], device=DEV))  # the RoPE setup runs here in some versions
            return lm
        except Exception as e:  # this version wants another spelling
            last = e
            torch.cuda.empty_cache()
    raise last


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else "bench_hf.json"
    cfg, cfg_path = load_config()
    rep = {"transformers": transformers.__version__, "torch": torch.__version__,
           "device": torch.cuda.get_device_name(0), "config": cfg_path}
    print(f"device: {rep['device']}  transformers {rep['transformers']}  torch {rep['torch']}")
    lm = build_decoder(cfg)
    n_params = sum(p.numel() for p in lm.parameters())
    emb = lm.get_input_embeddings().weight.numel()
    step_bytes = 2 * (n_params - emb)  # every weight but the embedding table, per token
    rep["step_gb"] = step_bytes / 1e9
    g = torch.Generator(device="cpu").manual_seed(1)
    prompt = torch.randint(1, 32000, (1, 16), generator=g).to(DEV)
    long_ids = torch.randint(1, 32000, (1, 800), generator=g).to(DEV)

    def forward(ids, past=None, last_only=True):
        kw = dict(past_key_values=past, use_cache=True)
        if last_only:
            for k in ("logits_to_keep", "num_logits_to_keep"):
                try:
                    return lm(ids, **kw, **{k: 1})
                except TypeError:
                    continue
        return lm(ids, **kw)

    @torch.inference_mode()
    def decode(n):
        out = forward(prompt)
        past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            out = forward(tok, past)
            past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        return sync_ms(t0)

    decode(4)  # warm-up
    dec_ms = decode(64)
    rep["decode_tok_s"] = 64 / (dec_ms * 1e-3)
    print(f"{'decode (16-token prompt, greedy)':36s} {rep['decode_tok_s']:10.1f} tok/s "
          f"({rep['step_gb']:.2f} GB per token)")

    with torch.inference_mode():
        rep["prefill_ms"] = median3(lambda: forward(long_ids))
    print(f"{'prefill (800 tokens)':36s} {rep['prefill_ms']:10.2f} ms")
    del lm
    torch.cuda.empty_cache()

    clip = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
        image_size=336, patch_size=14, num_channels=3, hidden_act="quick_gelu",
        layer_norm_eps=1e-5, attn_implementation="sdpa")).to(DEV, DT).eval()
    for n in (5, 17):
        px = torch.randn(n, 3, 336, 336, generator=g).to(DEV, DT)
        with torch.inference_mode():
            ms = median3(lambda: clip(px))
        rep[f"vision_{n}_crops_ms"] = ms
        print(f"{'vision tower, ' + str(n) + ' crops (23 layers)':36s} {ms:10.2f} ms")
    with open(out_path, "w") as f:
        json.dump(rep, f, indent=1)
    print(json.dumps(rep))


if __name__ == "__main__":
    main()
