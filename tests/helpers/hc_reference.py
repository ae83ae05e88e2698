"""Hyper-Connections and mHC as a plain float64 formulation written from the papers (streams as a Python list, the
HC matrix entries indexed by hand, Sinkhorn-Knopp from exp()), and ``perturb_hc``: every connection weight off its
init. The expectation of tests/model/test_hyper_connections.py, test_hyper_precision.py and
tests/eval/test_sublayer_streams.py."""

import math

import torch

from cod_train.model import CodLlamaForCausalLM
from tests.helpers.zoo import perturb
from tests.model.zoo_reference import attention, mlp, norm, params

EPS = 1e-6  # mHC's eps (H_pre offset, softmax offset, Sinkhorn denominators): the DeepSeek-V4 / Megatron value


def perturb_hc(model: CodLlamaForCausalLM, seed: int = 2) -> None:
    """Norm weights and every connection weight off its init (HC's one-hot / identity / ones, DHC's zeros)."""
    perturb(model, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith("static_alpha"):
                p.add_(0.3 * r)
            elif name.endswith(("dynamic_alpha_fn", "dynamic_beta_fn")):  # tanh off zero but not saturated
                p.copy_(0.1 * r)
            elif name.endswith(("attn_hc.fn", "mlp_hc.fn", "hc_head.hc_fn")):
                p.copy_(0.1 * r)
            elif name.endswith(("attn_hc.base", "mlp_hc.base", "hc_head.hc_base")):
                p.copy_(0.5 * r)


# -- the plain formulation (float64, one sequence; H is a list of n streams [T, d]) --

def plain_sinkhorn(z, iters):
    """Row-normalized exp (+eps), then column / row normalizations, as the mHC paper's Sinkhorn-Knopp."""
    m = torch.exp(z - z.max(-1, keepdim=True).values)
    m = m / m.sum(-1, keepdim=True) + EPS
    for it in range(iters):
        m = m / (m.sum(-2, keepdim=True) + EPS)
        if it < iters - 1:
            m = m / (m.sum(-1, keepdim=True) + EPS)
    return m


def unit_rms(flat, cfg):
    """``flat`` divided by its RMS (no weight)."""
    return flat / torch.sqrt(flat.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps)


def connection(H, sd, p, cfg):
    """(A_m [T, n], B [T, n], A_r [T, n, n]) with A_r[t, j, i] = weight of stream j in new stream i."""
    n, T = len(H), H[0].shape[0]
    if cfg.residual == "hc":
        alpha = sd[p + "static_alpha"].expand(T, n, n + 1).clone()
        beta = sd[p + "static_beta"].expand(T, n).clone()
        if cfg.hc_dynamic:  # Algorithm 2: each stream's normalized vector gives its row of [A_m | A_r] and its B
            for j in range(n):
                hn = norm(H[j], sd, p + "norm", cfg)
                alpha[:, j] = alpha[:, j] + sd[p + "dynamic_alpha_scale"] * torch.tanh(hn @ sd[p + "dynamic_alpha_fn"])
                beta[:, j] = beta[:, j] + sd[p + "dynamic_beta_scale"] * torch.tanh(hn @ sd[p + "dynamic_beta_fn"])
        return alpha[:, :, 0], beta, alpha[:, :, 1:]
    m = unit_rms(torch.cat(H, dim=-1), cfg) @ sd[p + "fn"].T
    b, a = sd[p + "base"], sd[p + "scale"]
    pre = torch.sigmoid(a[0] * m[:, :n] + b[:n]) + EPS
    post = 2 * torch.sigmoid(a[1] * m[:, n:2 * n] + b[n:2 * n])
    res = plain_sinkhorn((a[2] * m[:, 2 * n:] + b[2 * n:]).view(T, n, n), cfg.hc_sinkhorn_iters)
    return pre, post, res


def sublayer(H, sd, p, cfg, F, log=None):
    """One sub-layer ``F`` read from and written back into the n streams ``H`` through connection p."""
    Am, B, Ar = connection(H, sd, p, cfg)
    n = len(H)
    h = sum(Am[:, j, None] * H[j] for j in range(n))
    f = F(h)
    if log is not None:
        log.append((Am, B, Ar, h, f))
    return [sum(Ar[:, j, i, None] * H[j] for j in range(n)) + B[:, i, None] * f for i in range(n)]


def collapse(H, sd, cfg, log=None):
    """The n streams collapsed into one (sum, mean or mHC's head weights)."""
    n = len(H)
    if cfg.residual_scheme.collapse(cfg) == "sum":
        w = torch.ones(H[0].shape[0], n, dtype=H[0].dtype)
    elif cfg.residual_scheme.collapse(cfg) == "mean":
        w = torch.full((H[0].shape[0], n), 1 / n, dtype=H[0].dtype)
    else:
        m = unit_rms(torch.cat(H, dim=-1), cfg) @ sd["model.hc_head.hc_fn"].T
        w = torch.sigmoid(sd["model.hc_head.hc_scale"] * m + sd["model.hc_head.hc_base"]) + EPS
    out = sum(w[:, j, None] * H[j] for j in range(n))
    if log is not None:
        log.append((w, out))
    return out


def hc_reference_logits(model, ids, sd=None, log=None, skip=None, states=None):
    """Logits; `log` (a list) receives (A_m, B, A_r, h, F(h)) of each sub-layer, then (collapse weights, collapsed
    stream). `skip`: a 0-based layer left out (the streams pass it unchanged); `states` (a list) receives the
    collapsed stream entering the first layer and after each layer (the skipped one: its input)."""
    cfg = model.config
    sd = params(model) if sd is None else sd
    x = sd["model.embed_tokens.weight"][ids]
    if "model.embed_scale.weight" in sd:  # on by default with dyt / derf
        x = x * sd["model.embed_scale.weight"]
    H = [x] * cfg.hc_streams
    for idx in range(cfg.num_hidden_layers):
        if states is not None:
            states.append(collapse(H, sd, cfg))
        if idx == skip:
            continue
        p = f"model.layers.{idx}."
        s = 1 / math.sqrt(idx + 1) if cfg.norm_type == "lns" else 1.0
        H = sublayer(H, sd, p + "attn_hc.", cfg, lambda h, p=p, s=s: attention(
            norm(h, sd, p + "input_layernorm", cfg) * s, sd, p + "self_attn.", cfg), log)
        H = sublayer(H, sd, p + "mlp_hc.", cfg,
                     lambda h, p=p, s=s: mlp(norm(h, sd, p + "post_attention_layernorm", cfg) * s, sd, p + "mlp."), log)
    final = collapse(H, sd, cfg, log)
    if states is not None:
        states.append(final)
    return norm(final, sd, "model.norm", cfg) @ sd["lm_head.weight"].T
