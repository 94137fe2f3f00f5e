#!/usr/bin/python3
"""Reference outputs for the CPU ops and a tiny Phi-3-vision model, in plain
PyTorch, written from docs/phi3v-spec.md (independent of the C code).

Writes, under tests/data/model_ref/:
  ops.safetensors            inputs and expected outputs of each op
  tiny/config.json           an HF-style Phi3V config.json (+ our vision_config)
  tiny/model.safetensors     random weights with the real tensor names
                             (CLIP in F32, decoder in BF16, projector in F16)
  expected.safetensors       pixel crops, CLIP features, image features,
                             prompt ids, logits at every position, greedy ids,
                             multi-turn conversations and their logits

The tiny model: LM width 64, 2 layers, 4 heads (head_dim 16), vocab 300,
LongRoPE with original_max_position_embeddings 64 (so the short/long switch
happens at 65 tokens); CLIP width 64, 3 layers (hidden_states[-2] = output of
layer 1), 4 heads, 56-pixel crops with 14-pixel patches (a 4x4 grid, 2x2 after
the merge). Run: /usr/bin/python3 reference/ops_ref.py (Debian python3-torch 1.13, numpy).
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "model_ref")

# ----------------------------------------------------------------------------
# safetensors writing (the format: u64 header length, JSON header, raw data)


def to_bf16_bits(a):
    """float32 array -> uint16 bf16 bits, round to nearest even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def from_bf16_bits(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path):
    """{name: (float32 tensor (int32 for I32), dtype)} of a safetensors file:
    the W layout the functions below read (W[name][0])."""
    with open(path, "rb") as f:
        buf = f.read()
    (hl,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + hl])
    base, out = 8 + hl, {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        raw = buf[base + b: base + end]
        dt = e["dtype"]
        if dt == "F32":
            a = np.frombuffer(raw, dtype="<f4")
        elif dt == "F16":
            a = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif dt == "BF16":
            a = from_bf16_bits(np.frombuffer(raw, dtype="<u2"))
        elif dt == "I32":
            a = np.frombuffer(raw, dtype="<i4")
        else:
            raise ValueError(dt)
        out[name] = (torch.from_numpy(a.reshape(e["shape"]).copy()), dt)
    return out


class Tensors:
    def __init__(self):
        self.items = {}

    def add(self, name, arr, dtype="F32"):
        arr = np.asarray(arr)
        if dtype == "F32":
            raw = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        elif dtype == "BF16":
            raw = to_bf16_bits(arr).astype("<u2").tobytes()
        elif dtype == "F16":
            raw = np.ascontiguousarray(arr, dtype="<f2").tobytes()
        elif dtype == "I32":
            raw = np.ascontiguousarray(arr, dtype="<i4").tobytes()
        else:
            raise ValueError(dtype)
        assert name not in self.items, name
        self.items[name] = (dtype, list(arr.shape), raw)

    def write(self, path):
        header, off, blobs = {}, 0, []
        for name in sorted(self.items):
            dtype, shape, raw = self.items[name]
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
            blobs.append(raw)
            off += len(raw)
        h = json.dumps(header, separators=(",", ":")).encode()
        h += b" " * ((8 - len(h) % 8) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(h)))
            f.write(h)
            for b in blobs:
                f.write(b)


def stored(arr, dtype):
    """The float32 values a tensor has after storing it as dtype."""
    arr = np.asarray(arr, dtype=np.float32)
    if dtype == "BF16":
        return from_bf16_bits(to_bf16_bits(arr)).reshape(arr.shape)
    if dtype == "F16":
        return arr.astype(np.float16).astype(np.float32)
    return arr


# ----------------------------------------------------------------------------
# the operations, from the spec


def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def layernorm(x, w, b, eps):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def gelu_exact(x):
    return F.gelu(x)  # erf form, torch's default


def rope_inv_freq(factors, head_dim, theta):
    # Phi3SuScaledRotaryEmbedding: float32 throughout.
    ext = torch.tensor(factors, dtype=torch.float32)
    shape = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return 1.0 / (ext * theta ** shape)


def rope_cos_sin(positions, inv_freq, mscale):
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * mscale, emb.sin() * mscale


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def attention(q, k, v, causal, q_pos0):
    """q [H, n_q, hd], k/v [KVH, n_kv, hd] -> [n_q, H*hd]; f32 softmax."""
    H, n_q, hd = q.shape
    kvh = k.shape[0]
    k = k.repeat_interleave(H // kvh, dim=0)
    v = v.repeat_interleave(H // kvh, dim=0)
    s = (q @ k.transpose(1, 2)) / math.sqrt(hd)
    if causal:
        qi = torch.arange(n_q)[:, None] + q_pos0
        kj = torch.arange(k.shape[1])[None, :]
        s = s.masked_fill(kj > qi, float("-inf"))
    p = torch.softmax(s if s.dtype == torch.float64 else s.float(), dim=-1)
    return (p @ v).transpose(0, 1).reshape(n_q, H * hd)


# ----------------------------------------------------------------------------
# the tiny model

CFG = {
    "architectures": ["Phi3VForCausalLM"],
    "model_type": "phi3_v",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 300,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "max_position_embeddings": 2048,
    "original_max_position_embeddings": 64,
    "rope_scaling": {
        "type": "su",
        "short_factor": [1.0, 1.05, 1.1, 1.3, 1.6, 2.0, 2.5, 3.0],
        "long_factor": [1.0, 1.2, 1.9, 3.7, 6.1, 9.3, 14.0, 20.5],
    },
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "sliding_window": 262144,
    "torch_dtype": "float32",
    "embd_layer": {
        "embedding_cls": "image",
        "hd_transform_order": "sub_glb",
        "projection_cls": "mlp",
        "use_hd_transform": True,
        "with_learnable_separator": True,
    },
    "img_processor": {
        "image_dim_out": 64,
        "model_name": "openai/clip-vit-large-patch14-336",
        "name": "clip_vision_model",
        "num_img_tokens": 4,
    },
    "vision_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "image_size": 56,
        "patch_size": 14,
        "layer_norm_eps": 1e-05,
        "hidden_act": "quick_gelu",
        "layer_idx": -2,
    },
}

V_PREFIX = "model.vision_embed_tokens.img_processor.vision_model"


def make_weights(gen):
    """name -> (float32 values as stored, dtype)."""
    c, vc = CFG, CFG["vision_config"]
    d, ff, L, voc = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    hd = d // c["num_attention_heads"]
    qkv = (c["num_attention_heads"] + 2 * c["num_key_value_heads"]) * hd
    D, I, P = vc["hidden_size"], vc["intermediate_size"], vc["patch_size"]
    g = vc["image_size"] // P
    W = {}

    def lin(out, inp, scale=1.0):
        return torch.randn(out, inp, generator=gen) * (scale / math.sqrt(inp))

    def vec(n, s=0.1, base=0.0):
        return base + s * torch.randn(n, generator=gen)

    # decoder: BF16, lm_head F16 (mixed on purpose: every widening path runs)
    W["model.embed_tokens.weight"] = (torch.randn(voc, d, generator=gen), "BF16")
    for l in range(L):
        p = f"model.layers.{l}."
        W[p + "input_layernorm.weight"] = (vec(d, 0.1, 1.0), "BF16")
        W[p + "self_attn.qkv_proj.weight"] = (lin(qkv, d, 1.5), "BF16")
        W[p + "self_attn.o_proj.weight"] = (lin(d, d), "BF16")
        W[p + "post_attention_layernorm.weight"] = (vec(d, 0.1, 1.0), "BF16")
        W[p + "mlp.gate_up_proj.weight"] = (lin(2 * ff, d), "BF16")
        W[p + "mlp.down_proj.weight"] = (lin(d, ff), "BF16")
    W["model.norm.weight"] = (vec(d, 0.1, 1.0), "BF16")
    W["lm_head.weight"] = (lin(voc, d, 4.0), "F16")
    # glue: F16 projector, F32 separators
    W["model.vision_embed_tokens.glb_GN"] = (torch.randn(1, 1, 4 * D, generator=gen), "F32")
    W["model.vision_embed_tokens.sub_GN"] = (torch.randn(1, 1, 1, 4 * D, generator=gen), "F32")
    W["model.vision_embed_tokens.img_projection.0.weight"] = (lin(d, 4 * D), "F16")
    W["model.vision_embed_tokens.img_projection.0.bias"] = (vec(d), "F16")
    W["model.vision_embed_tokens.img_projection.2.weight"] = (lin(d, d), "F16")
    W["model.vision_embed_tokens.img_projection.2.bias"] = (vec(d), "F16")
    # CLIP: F32 (all layers, the unused last one and post_layernorm included)
    v = V_PREFIX + "."
    W[v + "embeddings.class_embedding"] = (torch.randn(D, generator=gen), "F32")
    W[v + "embeddings.patch_embedding.weight"] = (
        torch.randn(D, 3, P, P, generator=gen) / math.sqrt(3 * P * P), "F32")
    W[v + "embeddings.position_embedding.weight"] = (0.5 * torch.randn(g * g + 1, D, generator=gen), "F32")
    W[v + "pre_layrnorm.weight"] = (vec(D, 0.1, 1.0), "F32")
    W[v + "pre_layrnorm.bias"] = (vec(D), "F32")
    for l in range(vc["num_hidden_layers"]):
        p = v + f"encoder.layers.{l}."
        for n in ("layer_norm1", "layer_norm2"):
            W[p + n + ".weight"] = (vec(D, 0.1, 1.0), "F32")
            W[p + n + ".bias"] = (vec(D), "F32")
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            W[p + "self_attn." + n + ".weight"] = (lin(D, D, 1.5), "F32")
            W[p + "self_attn." + n + ".bias"] = (vec(D), "F32")
        W[p + "mlp.fc1.weight"] = (lin(I, D), "F32")
        W[p + "mlp.fc1.bias"] = (vec(I), "F32")
        W[p + "mlp.fc2.weight"] = (lin(D, I), "F32")
        W[p + "mlp.fc2.bias"] = (vec(D), "F32")
    W[v + "post_layernorm.weight"] = (vec(D, 0.1, 1.0), "F32")
    W[v + "post_layernorm.bias"] = (vec(D), "F32")
    return {k: (torch.from_numpy(stored(t.numpy(), dt)), dt) for k, (t, dt) in W.items()}


def clip_features(W, px):
    """px [N,3,S,S] -> hidden_states[layer_idx] without CLS: [N, g*g, D]."""
    vc = CFG["vision_config"]
    v = lambda n: W[V_PREFIX + "." + n][0]
    D, H, eps = vc["hidden_size"], vc["num_attention_heads"], vc["layer_norm_eps"]
    x = F.conv2d(px, v("embeddings.patch_embedding.weight"), stride=vc["patch_size"])
    x = x.flatten(2).transpose(1, 2)  # [N, g*g, D], patches row-major
    cls = v("embeddings.class_embedding").expand(px.shape[0], 1, D)
    x = torch.cat([cls, x], dim=1) + v("embeddings.position_embedding.weight")[None]
    x = layernorm(x, v("pre_layrnorm.weight"), v("pre_layrnorm.bias"), eps)
    hs = [x]
    for l in range(vc["num_hidden_layers"]):
        p = f"encoder.layers.{l}."
        lin = lambda t, n: t @ v(p + n + ".weight").T + v(p + n + ".bias")
        h = layernorm(x, v(p + "layer_norm1.weight"), v(p + "layer_norm1.bias"), eps)
        N, T, _ = h.shape
        q = lin(h, "self_attn.q_proj").reshape(N, T, H, -1).transpose(1, 2)
        k = lin(h, "self_attn.k_proj").reshape(N, T, H, -1).transpose(1, 2)
        vv = lin(h, "self_attn.v_proj").reshape(N, T, H, -1).transpose(1, 2)
        s = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-1, -2)
        a = (torch.softmax(s, dim=-1) @ vv).transpose(1, 2).reshape(N, T, D)
        x = x + lin(a, "self_attn.out_proj")
        h = layernorm(x, v(p + "layer_norm2.weight"), v(p + "layer_norm2.bias"), eps)
        x = x + lin(quick_gelu(lin(h, "mlp.fc1")), "mlp.fc2")
        hs.append(x)
    return hs[vc["layer_idx"]][:, 1:]


def hd_glue(W, feats, hc, wc):
    """feats [1+hc*wc(+pad), g*g, C] -> projected rows (spec §5)."""
    g = CFG["vision_config"]["image_size"] // CFG["vision_config"]["patch_size"]
    m, C = g // 2, feats.shape[-1]
    sub_gn = W["model.vision_embed_tokens.sub_GN"][0]
    glb_gn = W["model.vision_embed_tokens.glb_GN"][0]

    def merge(x):
        n = x.shape[0]
        return x.reshape(n, m, 2, m, 2, C).permute(0, 1, 3, 2, 4, 5).reshape(n, m * m, 4 * C)

    glb = merge(feats[0:1]).reshape(1, m, m, 4 * C)
    glb = torch.cat([glb, sub_gn.expand(1, m, 1, 4 * C)], dim=2).reshape(-1, 4 * C)
    sub = merge(feats[1:1 + hc * wc]).reshape(1, hc, wc, m, m, 4 * C)
    sub = sub.permute(0, 1, 3, 2, 4, 5).reshape(1, hc * m, wc * m, 4 * C)
    sub = torch.cat([sub, sub_gn.expand(1, hc * m, 1, 4 * C)], dim=2).reshape(-1, 4 * C)
    seq = torch.cat([sub, glb_gn.reshape(1, 4 * C), glb], dim=0)
    p = "model.vision_embed_tokens.img_projection."
    h = gelu_exact(seq @ W[p + "0.weight"][0].T + W[p + "0.bias"][0])
    return h @ W[p + "2.weight"][0].T + W[p + "2.bias"][0]


def n_image_tokens(hc, wc):
    g = CFG["vision_config"]["image_size"] // CFG["vision_config"]["patch_size"]
    m = g // 2
    return (hc * wc + 1) * m * m + 1 + (hc + 1) * m


def mscale():
    c = CFG
    s = c["max_position_embeddings"] / c["original_max_position_embeddings"]
    return 1.0 if s <= 1 else math.sqrt(1 + math.log(s) / math.log(c["original_max_position_embeddings"]))


def lm_logits(W, ids, img_feats, plain_rope=False, hidden=None):
    """Full-sequence forward (no cache) of ids with image features spliced at
    the negative ids; LongRoPE factors by the total length (eager rule), or
    plain RoPE (no rope_scaling: factors 1, no mscale). hidden: a list to
    which the input embeddings and each layer's output are appended."""
    c = CFG
    d, H, KV = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd, eps, L = d // H, c["rms_norm_eps"], len(ids)
    ids_t = torch.tensor(ids, dtype=torch.int64)
    x = W["model.embed_tokens.weight"][0][ids_t.clamp(min=0)]
    neg = (ids_t < 0).nonzero().flatten()
    if len(neg):
        x[neg] = img_feats
    factors = c["rope_scaling"]["long_factor" if L > c["original_max_position_embeddings"] else "short_factor"]
    if plain_rope:
        cos, sin = rope_cos_sin(torch.arange(L), rope_inv_freq([1.0] * (hd // 2), hd, c["rope_theta"]), 1.0)
    else:
        cos, sin = rope_cos_sin(torch.arange(L), rope_inv_freq(factors, hd, c["rope_theta"]), mscale())
    if hidden is not None:
        hidden.append(x)
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        w = lambda n: W[p + n][0]
        h = rmsnorm(x, w("input_layernorm.weight"), eps)
        qkv = h @ w("self_attn.qkv_proj.weight").T
        q = qkv[:, : H * hd].reshape(L, H, hd).transpose(0, 1)
        k = qkv[:, H * hd: (H + KV) * hd].reshape(L, KV, hd).transpose(0, 1)
        v = qkv[:, (H + KV) * hd:].reshape(L, KV, hd).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        x = x + attention(q, k, v, True, 0) @ w("self_attn.o_proj.weight").T
        h = rmsnorm(x, w("post_attention_layernorm.weight"), eps)
        gate, up = (h @ w("mlp.gate_up_proj.weight").T).chunk(2, dim=-1)
        x = x + (up * F.silu(gate)) @ w("mlp.down_proj.weight").T
        if hidden is not None:
            hidden.append(x)
    x = rmsnorm(x, W["model.norm.weight"][0], eps)
    return x @ W["lm_head.weight"][0].T


def greedy(W, ids, img_feats, n_new, steps=None):
    ids, out, margins = list(ids), [], []
    for _ in range(n_new):
        lg = lm_logits(W, ids, img_feats)[-1]
        if steps is not None:
            steps.append(lg)
        top = torch.topk(lg, 2).values
        margins.append(float(top[0] - top[1]))
        t = int(torch.argmax(lg))
        out.append(t)
        ids.append(t)
    return out, min(margins)


# ----------------------------------------------------------------------------
# op cases


def op_cases(gen, T):
    r = lambda *s: torch.randn(*s, generator=gen)
    f64 = lambda a: torch.as_tensor(a).double()

    def mm(name, n, inp, out, wdtype, bias):
        x = r(n, inp)
        w = torch.from_numpy(stored((r(out, inp) / math.sqrt(inp)).numpy(), wdtype))
        T.add(f"{name}.x", x.numpy())
        T.add(f"{name}.w", w.numpy(), wdtype)
        y = f64(x) @ f64(w).T
        if bias:
            b = torch.from_numpy(stored(r(out).numpy(), wdtype))
            T.add(f"{name}.b", b.numpy(), wdtype)
            y = y + f64(b)
        T.add(f"{name}.y", y.float().numpy())

    mm("mm_f32", 5, 37, 19, "F32", True)
    mm("mm_f32_big", 70, 300, 13, "F32", False)  # crosses the k tile and the token block
    mm("mm_bf16", 7, 300, 11, "BF16", True)
    mm("mm_f16", 3, 40, 6, "F16", False)

    x = r(4, 64) * 3
    w = torch.from_numpy(stored((1 + 0.1 * r(64)).numpy(), "BF16"))
    T.add("rms.x", x.numpy()); T.add("rms.w", w.numpy(), "BF16")
    T.add("rms.y", rmsnorm(f64(x), f64(w), 1e-5).float().numpy())
    x, w, b = r(4, 64) * 2 + 1, 1 + 0.1 * r(64), 0.1 * r(64)
    T.add("ln.x", x.numpy()); T.add("ln.w", w.numpy()); T.add("ln.b", b.numpy())
    T.add("ln.y", layernorm(f64(x), f64(w), f64(b), 1e-5).float().numpy())

    # RoPE, head_dim 16, the tiny model's factors, positions across the switch
    # and one far out (large angles need accurate cos/sin).
    hd, rs = 16, CFG["rope_scaling"]
    pos = torch.tensor([0, 1, 5, 63, 64, 65, 1000, 100000])
    for kind in ("short", "long"):
        inv = rope_inv_freq(rs[kind + "_factor"], hd, CFG["rope_theta"])
        cos, sin = rope_cos_sin(pos, inv, mscale())
        T.add(f"rope.{kind}.inv_freq", inv.numpy())
        T.add(f"rope.{kind}.cos", cos[:, : hd // 2].numpy())
        T.add(f"rope.{kind}.sin", sin[:, : hd // 2].numpy())
        x = r(len(pos), 2 * hd)
        xh = x.reshape(len(pos), 2, hd).transpose(0, 1)
        y = (xh * cos + rotate_half(xh) * sin).transpose(0, 1).reshape(len(pos), 2 * hd)
        T.add(f"rope.{kind}.x", x.numpy()); T.add(f"rope.{kind}.y", y.numpy())
    T.add("rope.pos", pos.numpy().astype(np.int32), "I32")
    T.add("rope.mscale", np.array([mscale()], dtype=np.float32))

    def att(name, n_q, n_kv, H, KVH, hd, causal, pos0):
        q, k, v = r(n_q, H * hd), r(n_kv, KVH * hd), r(n_kv, KVH * hd)
        out = attention(f64(q).reshape(n_q, H, hd).transpose(0, 1),
                        f64(k).reshape(n_kv, KVH, hd).transpose(0, 1),
                        f64(v).reshape(n_kv, KVH, hd).transpose(0, 1), causal, pos0)
        for n_, a in (("q", q), ("k", k), ("v", v), ("out", out.float())):
            T.add(f"{name}.{n_}", a.numpy())

    att("att_causal", 5, 9, 2, 2, 16, True, 4)   # queries at positions 4..8
    att("att_gqa", 3, 6, 4, 2, 8, True, 3)
    att("att_full", 7, 7, 3, 3, 8, False, 0)

    x = torch.linspace(-6, 6, 1001)
    T.add("act.x", x.numpy())
    T.add("act.gelu", gelu_exact(f64(x)).float().numpy())
    T.add("act.quick_gelu", quick_gelu(f64(x)).float().numpy())
    gu = r(3, 100) * 2
    T.add("silu.gu", gu.numpy())
    g_, u_ = f64(gu).chunk(2, dim=-1)
    T.add("silu.y", (u_ * F.silu(g_)).float().numpy())

    img, w = r(3, 28, 28), r(8, 3, 14, 14) / 24
    T.add("patch.img", img.numpy()); T.add("patch.w", w.numpy())
    y = F.conv2d(f64(img)[None], f64(w), stride=14).flatten(2).transpose(1, 2)[0]
    T.add("patch.y", y.float().numpy())


# ----------------------------------------------------------------------------


def main():
    torch.set_grad_enabled(False)  # here, not at import: importers train
    os.makedirs(os.path.join(OUT, "tiny"), exist_ok=True)
    gen = torch.Generator().manual_seed(20261126)

    T = Tensors()
    op_cases(gen, T)
    T.write(os.path.join(OUT, "ops.safetensors"))

    W = make_weights(gen)
    M = Tensors()
    for k, (t, dt) in W.items():
        M.add(k, t.numpy(), dt)
    M.write(os.path.join(OUT, "tiny", "model.safetensors"))
    with open(os.path.join(OUT, "tiny", "config.json"), "w") as f:
        json.dump(CFG, f, indent=2)

    vc = CFG["vision_config"]
    S = vc["image_size"]
    E = Tensors()
    # Image A: 2x2 tiles; image B: 1x2 tiles. Each padded with zero crops up
    # to 6 entries, as pixel_values is (num_crops + 1) long.
    images = {"a": (2, 2), "b": (1, 2)}
    feats = {}
    for key, (hc, wc) in images.items():
        px = torch.zeros(6, 3, S, S)
        px[: 1 + hc * wc] = torch.randn(1 + hc * wc, 3, S, S, generator=gen)
        cf = clip_features(W, px)
        feats[key] = hd_glue(W, cf, hc, wc)
        assert feats[key].shape[0] == n_image_tokens(hc, wc)
        E.add(f"img_{key}.pixels", px.numpy())
        E.add(f"img_{key}.grid", np.array([hc, wc], dtype=np.int32), "I32")
        E.add(f"img_{key}.clip", cf[: 1 + hc * wc].numpy())
        E.add(f"img_{key}.features", feats[key].numpy())

    na, nb = n_image_tokens(2, 2), n_image_tokens(1, 2)
    rnd = lambda n: [int(t) for t in torch.randint(3, 300, (n,), generator=gen)]
    # Prompt 1: text, image A, text (short RoPE: under 64 tokens).
    p1 = [1] + rnd(5) + [-1] * na + [1] + rnd(6)
    # Turn 2 of the multi-turn case: image B and text; the conversation
    # crosses 64 tokens here, so the cache is rebuilt with the long factors.
    t2 = rnd(3) + [-2] * nb + [1] + rnd(7)
    # A text-only conversation that stays short.
    s1, s2 = [1] + rnd(11), rnd(9)

    feats_p1 = feats["a"]
    E.add("p1.ids", np.array(p1, dtype=np.int32), "I32")
    E.add("p1.logits", lm_logits(W, p1, feats_p1).numpy())
    # The same with the config's rope_scaling removed (plain RoPE).
    E.add("p1.logits_plain_rope", lm_logits(W, p1, feats_p1, plain_rope=True).numpy())
    steps = []
    g1, m1 = greedy(W, p1, feats_p1, 40, steps)  # 40 + 40 tokens: crosses 64 while decoding
    E.add("p1.greedy", np.array(g1, dtype=np.int32), "I32")
    # Row i: the logits that chose greedy token i (sequence p1 + g1[:i]); rows
    # 24 and 25 are the 64- and 65-token sequences on either side of the switch.
    E.add("p1.step_logits", torch.stack(steps).numpy())

    # Multi-turn with images: turn 1 = p1, 6 greedy tokens, turn 2 = t2.
    ans = g1[:6]
    conv = p1 + ans + t2
    assert len(p1) + len(ans) <= 64 < len(conv)
    both = torch.cat([feats["a"], feats["b"]])
    E.add("mt.turn2", np.array(t2, dtype=np.int32), "I32")
    E.add("mt.logits", lm_logits(W, conv, both)[len(p1) + len(ans):].numpy())

    # Multi-turn text only, short.
    gs, m2 = greedy(W, s1, None, 5)
    conv = s1 + gs + s2
    assert len(conv) <= 64
    E.add("st.turn1", np.array(s1, dtype=np.int32), "I32")
    E.add("st.greedy", np.array(gs, dtype=np.int32), "I32")
    E.add("st.turn2", np.array(s2, dtype=np.int32), "I32")
    E.add("st.logits", lm_logits(W, conv, None)[len(s1) + len(gs):].numpy())
    E.write(os.path.join(OUT, "expected.safetensors"))

    print(f"p1 {len(p1)} tokens, greedy min margin {m1:.4f}; text greedy min margin {m2:.4f}")
    if min(m1, m2) < 1e-3:
        sys.exit("greedy margins too small for a stable test: change the seed")
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(OUT) for f in fs)
    print(f"fixtures: {total} bytes under {OUT}")


if __name__ == "__main__":
    main()
