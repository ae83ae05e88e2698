"""A plain, independent formulation of every depth-zoo scheme (README "Normalization and residual schemes").

Written from the papers' equations, not from cod_train's code: norms as explicit formulas, attention as an
explicit softmax with a -inf causal mask (reference.py's RoPE), the q/k/v norms applied per head or over the whole
projection by reshaping by hand, each residual join spelled out. Works in float64 on a copy of the parameters; the
parameters stay differentiable so that gradients (GPAS's stop-gradient) can be compared too.
"""

import math

import torch
import torch.nn.functional as F

from tests.model.reference import rope


def params(model, requires_grad=False):
    return {k: v.detach().double().clone().requires_grad_(requires_grad) for k, v in model.named_parameters()}


def norm(x, sd, prefix, cfg):
    """The norm whose parameters are `prefix.*`, of function cfg.norm_fn."""
    w, b = sd[prefix + ".weight"], sd.get(prefix + ".bias")
    eps = cfg.rms_norm_eps
    if cfg.norm_fn == "rmsnorm":
        out = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
    elif cfg.norm_fn == "layernorm":
        mu = x.mean(-1, keepdim=True)
        var = (x - mu).pow(2).mean(-1, keepdim=True)
        out = (x - mu) / torch.sqrt(var + eps) * w
    elif cfg.norm_fn == "dyt":
        out = w * torch.tanh(sd[prefix + ".alpha"] * x)
    else:  # derf
        out = w * torch.erf(sd[prefix + ".alpha"] * x + sd[prefix + ".shift"])
    return out + b if b is not None else out


def rms(x, w, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def qkv(x, sd, p, cfg, name, heads):
    """x W for q / k / v as [T, heads, hd], with its RMSNorm (per head or over the full width) when present."""
    T = x.shape[0]
    hd = cfg.hidden_size // cfg.num_attention_heads
    y = x @ sd[p + f"{name}_proj.weight"].T
    w = sd.get(p + f"{name}_norm.weight")
    if w is not None and cfg.resolved_qk_norm == "full":  # over the whole projection width
        y = rms(y, w, cfg.rms_norm_eps)
    y = y.view(T, heads, hd)
    if w is not None and cfg.resolved_qk_norm == "head":  # over each head's head_dim
        y = torch.stack([rms(y[:, h], w, cfg.rms_norm_eps) for h in range(heads)], dim=1)
    return y


def attention(x, sd, p, cfg):
    T = x.shape[0]
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    hd, theta = cfg.hidden_size // H, cfg.rope_parameters["rope_theta"]
    q, k, v = rope(qkv(x, sd, p, cfg, "q", H), theta), rope(qkv(x, sd, p, cfg, "k", KV), theta), qkv(x, sd, p, cfg, "v", KV)
    causal = torch.full((T, T), float("-inf"), dtype=x.dtype).triu(1)
    heads = []
    for h in range(H):
        g = h // (H // KV)
        heads.append(torch.softmax(q[:, h] @ k[:, g].T / math.sqrt(hd) + causal, dim=-1) @ v[:, g])
    return torch.cat(heads, dim=-1) @ sd[p + "o_proj.weight"].T


def mlp(x, sd, p):
    return (F.silu(x @ sd[p + "gate_proj.weight"].T) * (x @ sd[p + "up_proj.weight"].T)) @ sd[p + "down_proj.weight"].T


def branch_factor(sd, p, cfg, which):
    """What multiplies a branch output: L^-alpha (depth_scaled), the LayerScale vector, the ReZero scalar."""
    if cfg.residual == "depth_scaled":
        return (cfg.num_hidden_layers / cfg.depth_base_layers) ** (-cfg.depth_alpha)
    if cfg.residual in ("layerscale", "rezero"):
        return sd[p + f"{which}_gain.weight"]
    return 1.0


def gpas(z, sd, p, cfg):
    if cfg.residual != "gpas":
        return z
    return z - F.silu(sd[p + "gpas_gate.weight"]) * z.detach()


def layer(x, sd, idx, kind, cfg):
    p, depth, L = f"model.layers.{idx}.", idx + 1, cfg.num_hidden_layers

    def N(name, h):
        return norm(h, sd, p + name, cfg)

    def attn(h):
        return attention(h, sd, p + "self_attn.", cfg)

    def ffn(h):
        return mlp(h, sd, p + "mlp.")

    fa, fm = branch_factor(sd, p, cfg, "attn"), branch_factor(sd, p, cfg, "mlp")

    def G(z):
        return gpas(z, sd, p, cfg)

    if kind == "pre_ln":
        h = G(x + fa * attn(N("input_layernorm", x)))
        return G(h + fm * ffn(N("post_attention_layernorm", h)))
    if kind == "lns":
        s = 1 / math.sqrt(depth)
        h = G(x + fa * attn(N("input_layernorm", x) * s))
        return G(h + fm * ffn(N("post_attention_layernorm", h) * s))
    if kind in ("post_ln", "deepnorm"):
        a = (2 * L) ** 0.25 if kind == "deepnorm" else 1.0
        h = N("input_layernorm", a * G(x) + fa * attn(x))
        return N("post_attention_layernorm", a * G(h) + fm * ffn(h))
    if kind == "sandwich":
        h = G(x + fa * N("post_attn_out_norm", attn(N("input_layernorm", x))))
        return G(h + fm * N("post_mlp_out_norm", ffn(N("post_attention_layernorm", h))))
    if kind == "reordered":
        h = G(x + fa * N("post_attn_out_norm", attn(x)))
        return G(h + fm * N("post_mlp_out_norm", ffn(h)))
    if kind == "hybrid":
        h = G(x + fa * attn(x))
        n = N("post_attention_layernorm", h)
        return G(n + fm * ffn(n))
    raise AssertionError(kind)


def zoo_reference_logits(model, ids, layer_kinds, sd=None):
    """Logits for one sequence `ids` [T]; `layer_kinds[l-1]` is the placement of layer l."""
    cfg = model.config
    sd = params(model) if sd is None else sd
    x = sd["model.embed_tokens.weight"][ids]
    if "model.embed_scale.weight" in sd:
        x = x * sd["model.embed_scale.weight"]
    if any(k.startswith("model.embed_norm.") for k in sd):
        x = norm(x, sd, "model.embed_norm", cfg)
    for idx, kind in enumerate(layer_kinds):
        x = layer(x, sd, idx, kind, cfg)
    x = norm(x, sd, "model.norm", cfg)
    return x @ sd["lm_head.weight"].T
