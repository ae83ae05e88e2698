"""Hyper-Connections (HC; Zhu et al., ICLR 2025, arXiv 2409.19606) and manifold-constrained HC (mHC; Xie et al.,
DeepSeek, arXiv 2512.24880) as residual schemes: `residual=hc` (static, or dynamic with `hc_dynamic`) and
`residual=mhc`, on Pre-LN or LNS blocks.

The residual stream is n = `hc_streams` parallel streams H [B, T, n, d]: n copies of the embedding output at the
first layer. Each sub-layer F (attention: F(h) = Attn(N1(h) s), MLP: F(h) = MLP(N2(h) s); s = 1/sqrt(l) under
`lns`, 1 under `pre_ln`) reads one input from the streams, and writes its output back while the streams mix:

    h     = sum_j pre_j H_j                       (read;   HC: A_m,  mHC: H_pre)
    H'_i  = sum_j res_ji H_j  +  post_i F(h)      (mix;    HC: A_r,  mHC: H_res)   (write; HC: B, mHC: H_post)

that is H' = res^T H + post^T F(pre^T H), one weight set per sub-layer (`attn_hc`, `mlp_hc` in each layer).

HC, static (SHC): pre = A_m, res = A_r, post = B are parameters (`static_alpha` = [A_m | A_r], n x (n+1);
`static_beta` = B). Initialised as the paper's Pre-Norm equivalent: for sub-layer k = 2(l-1) (attention) and
2(l-1)+1 (MLP), A_m = e_(k mod n), A_r = I, B = 1: the streams stay equal copies and the model is Pre-LN at init.
HC, dynamic (DHC, the paper's Algorithm 2): with Hn = N(H) per stream (N = the model's `norm_fn`; the paper's
LayerNorm models use a LayerNorm), [A_m | A_r] += s_a tanh(Hn W_a) and B += s_b tanh(Hn w_b), W_a [d, n+1] and
w_b [d] initialised to 0, the scales s_a, s_b to 0.01 (so DHC also starts as Pre-LN).

mHC, in the form of transformers' `DeepseekV4HyperConnection` (parameters `fn`, `base`, `scale` as there): with
x = RMS(flatten(H)) (unweighted RMSNorm over all n*d entries, in fp32) and [m_pre, m_post, m_res] = x fn^T,

    pre  = sigmoid(a_pre m_pre + b_pre) + eps     post = 2 sigmoid(a_post m_post + b_post)
    res  = SinkhornKnopp(softmax(a_res m_res + b_res) + eps)        (doubly stochastic, `hc_sinkhorn_iters`)

eps = 1e-6; init fn ~ normal(0, initializer_range), b = 0, a = 1 (transformers' DeepSeek-V4 init). Megatron-LM's
`HyperConnectionModule` computes the same mappings with three differences: the RMS eps is added to the RMS
outside the square root, fn is Xavier-uniform with the a's starting at a small gating factor, and the streams
are averaged at the end of the stack instead of passing a learned head (`hc_collapse=mean` selects that end).

Before the final norm the streams become one (`hc_collapse`): `sum` (the HC paper), `mean` (Megatron-LM) or
`head` (DeepSeek-V4's `hc_head`: y = sum_j (sigmoid(a m_j + b_j) + eps) H_j, m = RMS(flatten(H)) fn^T).
Every weight is computed in fp32; the streams keep the activation dtype. Nothing here is a buffer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from cod_train.model.configuration import CodLlamaConfig
from cod_train.model.norms import make_norm

HC_EPS = 1e-6  # mHC: added to H_pre and to the softmax before Sinkhorn, and to every Sinkhorn denominator
DHC_SCALE_INIT = 0.01  # DHC: initial s_a, s_b (the paper's Algorithm 2)

Weights = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # pre [..., n], post [..., n], res [..., n, n]


def sinkhorn(logits: torch.Tensor, iters: int, eps: float = HC_EPS) -> torch.Tensor:
    """A doubly stochastic matrix from logits [..., n, n]: softmax over each row (+eps), then columns and rows
    normalized in turn, `iters` column normalizations in all (transformers' DeepSeek-V4 / Megatron-LM order)."""
    m = torch.softmax(logits, dim=-1) + eps
    m = m / (m.sum(dim=-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        m = m / (m.sum(dim=-1, keepdim=True) + eps)
        m = m / (m.sum(dim=-2, keepdim=True) + eps)
    return m


def _rms(flat: torch.Tensor, eps: float) -> torch.Tensor:
    return flat * torch.rsqrt(flat.square().mean(-1, keepdim=True) + eps)


class HyperConnection(nn.Module):
    """HC weights of one sub-layer (k = its index among the 2L sub-layers), static or dynamic."""

    def __init__(self, config: CodLlamaConfig, sublayer: int):
        super().__init__()
        n, d = config.hc_streams, config.hidden_size
        self.n, self.sublayer = n, sublayer
        self.static_alpha = nn.Parameter(torch.empty(n, n + 1))
        self.static_beta = nn.Parameter(torch.empty(n))
        self.dynamic = config.hc_dynamic
        if self.dynamic:
            self.norm = make_norm(config, d, "mlp" if sublayer % 2 else "attn")
            self.dynamic_alpha_fn = nn.Parameter(torch.empty(d, n + 1))
            self.dynamic_alpha_scale = nn.Parameter(torch.empty(1))
            self.dynamic_beta_fn = nn.Parameter(torch.empty(d))
            self.dynamic_beta_scale = nn.Parameter(torch.empty(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        alpha = torch.cat([torch.zeros(self.n, 1), torch.eye(self.n)], dim=1)
        alpha[self.sublayer % self.n, 0] = 1.0
        init.copy_(self.static_alpha, alpha.to(self.static_alpha.device))
        init.ones_(self.static_beta)
        if self.dynamic:
            init.zeros_(self.dynamic_alpha_fn)
            init.zeros_(self.dynamic_beta_fn)
            init.constant_(self.dynamic_alpha_scale, DHC_SCALE_INIT)
            init.constant_(self.dynamic_beta_scale, DHC_SCALE_INIT)

    def forward(self, streams: torch.Tensor) -> Weights:
        alpha, beta = self.static_alpha.float(), self.static_beta.float()
        if self.dynamic:
            hn = self.norm(streams).float()
            alpha = alpha + self.dynamic_alpha_scale.float() * torch.tanh(hn @ self.dynamic_alpha_fn.float())
            beta = beta + self.dynamic_beta_scale.float() * torch.tanh(hn @ self.dynamic_beta_fn.float())
        return alpha[..., 0], beta, alpha[..., 1:]


class ManifoldHyperConnection(nn.Module):
    """mHC weights of one sub-layer: transformers' `DeepseekV4HyperConnection` mappings (same parameters)."""

    def __init__(self, config: CodLlamaConfig):
        super().__init__()
        n = config.hc_streams
        self.n, self.iters, self.norm_eps = n, config.hc_sinkhorn_iters, config.rms_norm_eps
        self.init_std = config.initializer_range
        self.fn = nn.Parameter(torch.empty((n + 2) * n, n * config.hidden_size))
        self.base = nn.Parameter(torch.empty((n + 2) * n))
        self.scale = nn.Parameter(torch.empty(3))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.normal_(self.fn, mean=0.0, std=self.init_std)
        init.zeros_(self.base)
        init.ones_(self.scale)

    def forward(self, streams: torch.Tensor) -> Weights:
        return self.mappings(F.linear(_rms(streams.flatten(-2).float(), self.norm_eps), self.fn.float()))

    def mappings(self, mix: torch.Tensor) -> Weights:
        """pre, post, res from the projected streams `mix` [..., (n+2) n] (zeros: the input-independent part)."""
        n = self.n
        pre_w, post_w, res_w = mix.split([n, n, n * n], dim=-1)
        pre_b, post_b, res_b = self.base.float().split([n, n, n * n])
        a_pre, a_post, a_res = self.scale.float().unbind(0)
        pre = torch.sigmoid(pre_w * a_pre + pre_b) + HC_EPS
        post = 2.0 * torch.sigmoid(post_w * a_post + post_b)
        res = sinkhorn((res_w * a_res + res_b).unflatten(-1, (n, n)), self.iters)
        return pre, post, res


class HyperHead(nn.Module):
    """The n streams -> one before the final norm (`hc_collapse`); parameters only for `head` (DeepSeek-V4's
    `hc_head`: `hc_fn`, `hc_base`, `hc_scale`)."""

    def __init__(self, config: CodLlamaConfig):
        super().__init__()
        n = config.hc_streams
        self.n, self.mode, self.norm_eps = n, config.resolved_hc_collapse, config.rms_norm_eps
        self.init_std = config.initializer_range
        if self.mode == "head":
            self.hc_fn = nn.Parameter(torch.empty(n, n * config.hidden_size))
            self.hc_base = nn.Parameter(torch.empty(n))
            self.hc_scale = nn.Parameter(torch.empty(1))
            self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.mode == "head":
            init.normal_(self.hc_fn, mean=0.0, std=self.init_std)
            init.zeros_(self.hc_base)
            init.ones_(self.hc_scale)

    @staticmethod
    def expand(x: torch.Tensor, n: int) -> torch.Tensor:
        """[..., d] -> [..., n, d]: n copies (a view; each layer writes new streams)."""
        return x.unsqueeze(-2).expand(*x.shape[:-1], n, x.shape[-1])

    def forward(self, streams: torch.Tensor) -> torch.Tensor:
        if self.mode == "sum":
            return streams.sum(-2)
        if self.mode == "mean":
            return streams.mean(-2)
        mix = F.linear(_rms(streams.flatten(-2).float(), self.norm_eps), self.hc_fn.float())
        pre = torch.sigmoid(mix * self.hc_scale.float() + self.hc_base.float()) + HC_EPS
        return _read(pre, streams)


def _read(pre: torch.Tensor, streams: torch.Tensor) -> torch.Tensor:
    """sum_j pre_j H_j, in fp32, rounded to the streams' dtype."""
    return torch.einsum("...j,...jd->...d", pre, streams.float()).to(streams.dtype)


def hyper_sublayer(hc: nn.Module, streams: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """H' = res^T H + post^T F(pre^T H) for one sub-layer F = `fn`."""
    pre, post, res = hc(streams)
    out = fn(_read(pre, streams))
    dtype = streams.dtype
    mixed = torch.einsum("...ji,...jd->...id", res.to(dtype), streams)
    return mixed + post.to(dtype).unsqueeze(-1) * out.unsqueeze(-2)


def hyper_block(b: Any, streams: torch.Tensor, attn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """A Pre-LN / LNS decoder layer `b` on the streams: both sub-layers read and write through `b.attn_hc` and
    `b.mlp_hc` (`attn` = the layer's attention with its RoPE, mask and KV cache bound)."""
    s = b.lns_scale

    def scaled(h: torch.Tensor) -> torch.Tensor:
        return h * s if s != 1.0 else h

    streams = hyper_sublayer(b.attn_hc, streams, lambda h: attn(scaled(b.input_layernorm(h))))
    return hyper_sublayer(b.mlp_hc, streams, lambda h: b.mlp(scaled(b.post_attention_layernorm(h))))


def make_hyper_connections(config: CodLlamaConfig, layer_idx: int) -> tuple[nn.Module | None, nn.Module | None]:
    """(`attn_hc`, `mlp_hc`) of the layer at 0-based `layer_idx`; (None, None) without hyper-connections."""
    if config.residual == "hc":
        return HyperConnection(config, 2 * layer_idx), HyperConnection(config, 2 * layer_idx + 1)
    if config.residual == "mhc":
        return ManifoldHyperConnection(config), ManifoldHyperConnection(config)
    return None, None
