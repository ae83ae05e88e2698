"""A plain, independent formulation of the decoder equations (docs/design.md section 2.3), for the tests.

Written from the equations, not from cod_train's code: explicit softmax attention with a -inf causal mask,
RoPE as a rotation of the (j, j + d/2) pairs, GQA by indexing the kv head of each query head.
"""

import math

import torch
import torch.nn.functional as F


def rms(x, w, eps):
    return w * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope(x, theta):
    """x: [T, H, hd]; rotate pair (j, j + hd/2) at position p by angle p * theta^(-2j/hd)."""
    T, _, hd = x.shape
    half = hd // 2
    out = torch.empty_like(x)
    for p in range(T):
        ang = p * theta ** (-2.0 * torch.arange(half, dtype=torch.float64) / hd)
        c, s = torch.cos(ang).to(x.dtype), torch.sin(ang).to(x.dtype)
        a, b = x[p, :, :half], x[p, :, half:]
        out[p, :, :half] = a * c - b * s
        out[p, :, half:] = b * c + a * s
    return out


def attention(x, sd, prefix, cfg):
    T, _ = x.shape
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = cfg.hidden_size // H
    theta = cfg.rope_parameters["rope_theta"]
    q = rope((x @ sd[prefix + "q_proj.weight"].T).view(T, H, hd), theta)
    k = rope((x @ sd[prefix + "k_proj.weight"].T).view(T, KV, hd), theta)
    v = (x @ sd[prefix + "v_proj.weight"].T).view(T, KV, hd)
    heads = []
    causal = torch.full((T, T), float("-inf")).triu(1)
    for h in range(H):
        g = h // (H // KV)
        scores = q[:, h] @ k[:, g].T / math.sqrt(hd) + causal
        heads.append(torch.softmax(scores, dim=-1) @ v[:, g])
    return torch.cat(heads, dim=-1) @ sd[prefix + "o_proj.weight"].T


def mlp(x, sd, prefix):
    return (F.silu(x @ sd[prefix + "gate_proj.weight"].T) * (x @ sd[prefix + "up_proj.weight"].T)) @ sd[
        prefix + "down_proj.weight"
    ].T


def reference_logits(model, ids, layer_kinds):
    """Logits for a single sequence `ids` [T]; `layer_kinds[l-1]` is the placement of layer l."""
    cfg = model.config
    sd = {k: v.detach().double() for k, v in model.state_dict().items()}
    eps, L = cfg.rms_norm_eps, cfg.num_hidden_layers
    x = sd["model.embed_tokens.weight"][ids]
    if cfg.norm_type == "peri_ln":
        x = rms(x, sd["model.embed_norm.weight"], eps)
    for idx, kind in enumerate(layer_kinds):
        p, depth = f"model.layers.{idx}.", idx + 1
        n1, n2 = sd[p + "input_layernorm.weight"], sd[p + "post_attention_layernorm.weight"]

        def A(h, p=p):
            return attention(h, sd, p + "self_attn.", cfg)

        def M(h, p=p):
            return mlp(h, sd, p + "mlp.")

        if kind == "pre_ln":
            h = x + A(rms(x, n1, eps))
            x = h + M(rms(h, n2, eps))
        elif kind == "post_ln":
            h = rms(x + A(x), n1, eps)
            x = rms(h + M(h), n2, eps)
        elif kind == "lns":
            h = x + A(rms(x, n1, eps) / math.sqrt(depth))
            x = h + M(rms(h, n2, eps) / math.sqrt(depth))
        elif kind == "deepnorm":
            a = (2 * L) ** 0.25
            h = rms(a * x + A(x), n1, eps)
            x = rms(a * h + M(h), n2, eps)
        elif kind == "sandwich":
            na, nm = sd[p + "post_attn_out_norm.weight"], sd[p + "post_mlp_out_norm.weight"]
            h = x + rms(A(rms(x, n1, eps)), na, eps)
            x = h + rms(M(rms(h, n2, eps)), nm, eps)
        else:
            raise AssertionError(kind)
    x = rms(x, sd["model.norm.weight"], eps)
    return x @ sd["lm_head.weight"].T
