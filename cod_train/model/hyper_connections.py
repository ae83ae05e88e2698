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
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from cod_train.model.configuration import CodLlamaConfig
from cod_train.model.norms import make_norm
from cod_train.model.param_init import copy_full_, normal_full_

HC_EPS = 1e-6  # mHC: added to H_pre and to the softmax before Sinkhorn, and to every Sinkhorn denominator
DHC_SCALE_INIT = 0.01  # DHC: initial s_a, s_b (the paper's Algorithm 2)

Weights = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # pre [..., n], post [..., n], res [..., n, n]
Value = Callable[[torch.Tensor], torch.Tensor]  # a parameter -> its full value (gathered where it is sharded)


def _as_is(param: torch.Tensor) -> torch.Tensor:
    return param


def sinkhorn(logits: torch.Tensor, iters: int, eps: float = HC_EPS) -> torch.Tensor:
    """A doubly stochastic matrix from logits [..., n, n]: softmax over each row (+eps), then columns and rows
    normalized in turn, `iters` column normalizations in all (transformers' DeepSeek-V4 / Megatron-LM order)."""
    return cast(torch.Tensor, _SinkhornKnopp.apply(logits, iters, eps))


class _SinkhornKnopp(torch.autograd.Function):
    """`sinkhorn` with its exact gradient written out: each normalization y = m / (sum m + eps) pulls back g to
    (g - sum(g y)) / (sum m + eps), the softmax p to p (g - sum(g p)). Autograd would record ~4 nodes per
    normalization (2 `iters` - 1 of them, on [..., n, n] tensors: op overhead, not arithmetic); this is ~half the
    ops and no graph."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
        p = torch.softmax(logits, dim=-1)
        m, dims, saved = p + eps, [-2] + [-1, -2] * (iters - 1), []
        for dim in dims:
            den = m.sum(dim=dim, keepdim=True) + eps
            m = m / den
            saved += [den, m]
        ctx.dims = dims
        ctx.save_for_backward(p, *saved)
        return m

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        p, *saved = ctx.saved_tensors
        for i in reversed(range(len(ctx.dims))):
            den, y = saved[2 * i], saved[2 * i + 1]
            grad = (grad - (grad * y).sum(dim=ctx.dims[i], keepdim=True)) / den
        return p * (grad - (grad * p).sum(dim=-1, keepdim=True)), None, None


def _rms_linear(streams: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS(flatten(H)) weight^T in fp32, as (flatten(H) weight^T) / rms: the per-token scale moves past the
    projection, so the normalized copy of the n-wide stream is neither made nor kept for the backward, and the
    mean square comes from one norm pass (no squared copy)."""
    flat = streams.flatten(-2).float()
    mean_square = torch.linalg.vector_norm(flat, dim=-1, keepdim=True).square() / flat.shape[-1]
    return F.linear(flat, weight.float()) * torch.rsqrt(mean_square + eps)


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
        copy_full_(self.static_alpha, alpha)
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
        normal_full_(self.fn, mean=0.0, std=self.init_std)
        init.zeros_(self.base)
        init.ones_(self.scale)

    def forward(self, streams: torch.Tensor) -> Weights:
        return self.mappings(_rms_linear(streams, self.fn, self.norm_eps))

    def mappings(self, mix: torch.Tensor) -> Weights:
        """pre, post, res from the projected streams `mix` [..., (n+2) n] (zeros: the input-independent part)."""
        return _mhc_mappings(mix, self.base.float(), self.scale.float(), self.iters)


def _mhc_mappings(mix: torch.Tensor, base: torch.Tensor, scale: torch.Tensor, iters: int) -> Weights:
    n = round((base.numel() + 1) ** 0.5) - 1  # base holds (n + 2) n = (n + 1)^2 - 1 entries
    pre_w, post_w, res_w = mix.split([n, n, n * n], dim=-1)
    pre_b, post_b, res_b = base.split([n, n, n * n])
    a_pre, a_post, a_res = scale.unbind(0)
    pre = torch.sigmoid(pre_w * a_pre + pre_b) + HC_EPS
    post = 2.0 * torch.sigmoid(post_w * a_post + post_b)
    res = sinkhorn((res_w * a_res + res_b).unflatten(-1, (n, n)), iters)
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
            normal_full_(self.hc_fn, mean=0.0, std=self.init_std)
            init.zeros_(self.hc_base)
            init.ones_(self.hc_scale)

    @staticmethod
    def expand(x: torch.Tensor, n: int) -> torch.Tensor:
        """[..., d] -> [..., n, d]: n copies, materialized: torch's CPU bmm (the read and the mix) falls back to a
        per-token loop on a stride-0 operand (~4x slower on the first sub-layer)."""
        return x.unsqueeze(-2).expand(*x.shape[:-1], n, x.shape[-1]).contiguous()

    def forward(self, streams: torch.Tensor) -> torch.Tensor:
        if self.mode == "sum":
            return streams.sum(-2)
        if self.mode == "mean":
            return streams.mean(-2)
        return _read(self.weights(streams), streams)

    def weights(self, streams: torch.Tensor | None = None, value: Value | None = None) -> torch.Tensor:
        """The collapse weights [..., n] of each stream; without `streams` their input-independent part (`head`:
        sigmoid(b) + eps). `value`: a parameter's full value (gathered where sharded)."""
        value = value or _as_is
        if self.mode != "head":
            return torch.full((self.n,), 1.0 if self.mode == "sum" else 1.0 / self.n)
        base, scale = value(self.hc_base).float(), value(self.hc_scale).float()
        if streams is None:
            return torch.sigmoid(base) + HC_EPS
        mix = _rms_linear(streams, value(self.hc_fn), self.norm_eps)
        return torch.sigmoid(mix * scale + base) + HC_EPS


def _read(pre: torch.Tensor, streams: torch.Tensor) -> torch.Tensor:
    """sum_j pre_j H_j, in fp32, rounded to the streams' dtype."""
    return torch.einsum("...j,...jd->...d", pre, streams.float()).to(streams.dtype)


def hyper_sublayer(hc: nn.Module, streams: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """H' = res^T H + post^T F(pre^T H) for one sub-layer F = `fn`."""
    pre, post, res = hc(streams)
    out = fn(_read(pre, streams))
    dtype = streams.dtype
    mixed = torch.einsum("...ji,...jd->...id", res.to(dtype), streams)
    return torch.addcmul(mixed, post.to(dtype).unsqueeze(-1), out.unsqueeze(-2))  # one pass, no product copy


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


# -- the connection weights as diagnostics (per sub-layer read / write weights, ||res - I||, the unfolded map) --


def connection_modules(model: nn.Module) -> list[nn.Module]:
    """The 2L sub-layer connections in order (layer 1 attention, layer 1 MLP, layer 2 attention, ...); [] for a
    model without hyper-connections. `model`: the causal LM or its backbone."""
    layers = getattr(getattr(model, "model", model), "layers", None) or []
    return [hc for layer in layers for hc in (getattr(layer, "attn_hc", None), getattr(layer, "mlp_hc", None))
            if hc is not None]


def _input_dependent(hc: nn.Module) -> bool:
    return isinstance(hc, ManifoldHyperConnection) or bool(getattr(hc, "dynamic", False))


def static_weights(hc: nn.Module, value: Value | None = None) -> Weights:
    """The input-independent part of one sub-layer's (pre, post, res): static HC's parameters (A_m, B, A_r), also
    DHC's (its tanh terms left out: they are 0 where N(H) W = 0), mHC's mappings of a zero projection
    (sigmoid(b_pre) + eps, 2 sigmoid(b_post), Sinkhorn(b_res))."""
    value = value or _as_is
    if isinstance(hc, HyperConnection):
        alpha, beta = value(hc.static_alpha).float(), value(hc.static_beta).float()
        return alpha[:, 0], beta, alpha[:, 1:]
    assert isinstance(hc, ManifoldHyperConnection)
    base = value(hc.base).float()
    return _mhc_mappings(torch.zeros_like(base), base, value(hc.scale).float(), hc.iters)


def _distance_from_identity(res: torch.Tensor) -> torch.Tensor:
    """||res - I||_F per token."""
    return torch.linalg.matrix_norm(res - torch.eye(res.shape[-1], device=res.device))


class WeightMeans:
    """While active (a context manager), the token means of every sub-layer's (pre, post, res), of ||res - I||_F
    per token, and of the collapse weights (`hc_head`'s, on the last layer's output) over the forwards run; `mask` [B, T] (bool) keeps only those tokens. Records nothing for weights that do not depend on
    the input (static HC, a model without hyper-connections)."""

    def __init__(self, model: nn.Module, mask: torch.Tensor | None = None):
        hcs = connection_modules(model)
        self.hcs = hcs if hcs and _input_dependent(hcs[0]) else []
        inner = getattr(model, "model", model)
        self.head: HyperHead | None = getattr(inner, "hc_head", None)
        self.last: nn.Module | None = getattr(inner, "layers")[-1] if self.hcs else None  # noqa: B009
        self.n = int(getattr(self.hcs[0], "n", 0)) if self.hcs else 0
        self.mask = mask
        self.sums: list[list[torch.Tensor] | None] = [None] * (len(self.hcs) + 1)
        self.counts = [0] * (len(self.hcs) + 1)
        self.handles: list[Any] = []

    def _tokens(self, t: torch.Tensor, trailing: int) -> torch.Tensor:
        t = t.detach().float()
        if self.mask is not None and t.dim() == 2 + trailing and t.shape[:2] == self.mask.shape:
            t = t[self.mask.to(t.device)]
        return t.reshape(-1, *t.shape[t.dim() - trailing:])

    def _add(self, idx: int, parts: list[torch.Tensor]) -> None:
        sums = [p.sum(0) for p in parts]
        old = self.sums[idx]
        self.sums[idx] = sums if old is None else [a + b for a, b in zip(old, sums, strict=True)]
        self.counts[idx] += parts[0].shape[0]

    def __enter__(self) -> WeightMeans:
        for idx, hc in enumerate(self.hcs):
            def hook(_m: nn.Module, _args: Any, out: Weights, idx: int = idx) -> None:
                pre, post, res = self._tokens(out[0], 1), self._tokens(out[1], 1), self._tokens(out[2], 2)
                self._add(idx, [pre, post, res, _distance_from_identity(res)])

            self.handles.append(hc.register_forward_hook(hook))
        head, final = self.head, cast(list[torch.Tensor], [])
        if head is not None and self.last is not None:
            def last_hook(_m: nn.Module, _args: Any, out: torch.Tensor) -> None:
                final[:] = [out]

            def head_hook(_m: nn.Module, args: tuple) -> None:  # a pre-hook: ZeRO-3 has gathered the head's weights
                if final and args and args[0] is final[0]:  # the model's own collapse, not a diagnostic's call
                    self._add(len(self.hcs), [self._tokens(head.weights(args[0].detach()), 1)])
                    final.clear()

            self.handles += [self.last.register_forward_hook(last_hook), head.register_forward_pre_hook(head_hook)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def means(self) -> tuple[list[Weights], list[float], torch.Tensor] | None:
        """(per sub-layer mean (pre, post, res), per sub-layer mean ||res - I||_F, mean collapse weights); None
        before a forward."""
        if any(s is None for s in self.sums[:-1]) or not self.hcs:
            return None
        means = [[t / c for t in s] for s, c in zip(self.sums, self.counts, strict=True) if s is not None]
        head = means[-1][0] if self.sums[-1] is not None else torch.ones(self.n)
        return [(m[0], m[1], m[2]) for m in means[: len(self.hcs)]], [float(m[3]) for m in means[: len(self.hcs)]], head

    def stats(self) -> dict[str, list[float]]:
        """`hyper_connection_stats`' keys with the suffix `.tokens`; {} before a forward."""
        means = self.means()
        return {} if means is None else _stat_lists(means[0], means[1], ".tokens")


def _stat_lists(weights: list[Weights], dists: list[float], suffix: str) -> dict[str, list[float]]:
    n_layers = len(weights) // 2
    out: dict[str, list[float]] = {}
    for k, (pre, post, _res) in enumerate(weights):
        sub, layer = ("attn", "mlp")[k % 2], k // 2
        for kind, w in (("read", pre), ("write", post)):
            for j, v in enumerate(w.reshape(-1).tolist()):
                out.setdefault(f"{sub}_hc.{kind}.{j}{suffix}", [0.0] * n_layers)[layer] = v
        out.setdefault(f"{sub}_hc.res_dist{suffix}", [0.0] * n_layers)[layer] = dists[k]
    return out


def _record(model: nn.Module, batch: dict[str, torch.Tensor]) -> WeightMeans:
    """A no-grad forward of the backbone on `batch` (its real tokens: `attention_mask` where given) recorded."""
    mask = batch.get("attention_mask")
    inner = getattr(model, "model", model)
    with torch.no_grad(), WeightMeans(model, mask.bool() if mask is not None else None) as rec:
        inner(input_ids=batch["input_ids"], attention_mask=mask, use_cache=False)
    return rec


def hyper_connection_stats(model: nn.Module, batch: dict[str, torch.Tensor] | None = None,
                           value: Value | None = None) -> dict[str, list[float]]:
    """Per layer (lists of L floats): `{attn,mlp}_hc.read.j` (pre_j: how much the sub-layer reads stream j),
    `{attn,mlp}_hc.write.j` (post_j: how much of its output stream j receives) and `{attn,mlp}_hc.res_dist`
    (||res - I||_F, the stream mixing's distance from the identity), from the input-independent part of the
    weights (`static_weights`); for input-dependent weights (DHC, mHC) and a `batch`, also the same keys with
    the suffix `.tokens`: their means over the batch's tokens (res_dist: the mean of each token's distance), from
    one no-grad forward. {} without hyper-connections. `value` gathers a sharded parameter (FSDP2 / ZeRO-3: a
    collective, call on every rank)."""
    hcs = connection_modules(model)
    if not hcs:
        return {}
    with torch.no_grad():
        static = [static_weights(hc, value) for hc in hcs]
        out = _stat_lists(static, [float(_distance_from_identity(w[2])) for w in static], "")
    if batch is not None and _input_dependent(hcs[0]):
        out.update(_record(model, batch).stats())
    return out


def unfold_connections(weights: list[Weights], head: torch.Tensor) -> torch.Tensor:
    """The HC paper's unfolded connection map M [2L + 1, 2L + 1]: M[k, s] = the weight with which source s (0: the
    embedding, s >= 1: the output of sub-layer s) enters reader k (k < 2L: the input of sub-layer k + 1, 2L: the
    collapsed stream before the final norm), through every later mix: M[k, s] = pre_k^T res_(k-1)^T ... res_s^T v_s
    with v_0 = 1 (the n copies of the embedding), v_s = post_(s-1). Pre-LN is the lower triangle of ones."""
    n, K = head.numel(), len(weights)
    coef = torch.zeros(n, K + 1)  # coef[i, s]: the weight of source s in stream i
    coef[:, 0] = 1.0
    rows = []
    for k, (pre, post, res) in enumerate(weights):
        rows.append(pre.float().cpu() @ coef)
        coef = res.float().cpu().T @ coef
        coef[:, k + 1] += post.float().cpu()
    rows.append(head.float().cpu() @ coef)
    return torch.stack(rows)


def hyper_connection_map(model: nn.Module, batch: dict[str, torch.Tensor] | None = None,
                         value: Value | None = None) -> list[list[float]]:
    """`unfold_connections` of the model's weights: for input-dependent weights and a `batch`, of their token
    means (a map of the mean weights, not the mean of each token's map), else of their static part. [] without
    hyper-connections."""
    hcs = connection_modules(model)
    if not hcs:
        return []
    head_module = cast(HyperHead, getattr(model, "model", model).hc_head)
    means = _record(model, batch).means() if batch is not None and _input_dependent(hcs[0]) else None
    if means is not None:
        return unfold_connections(means[0], means[2]).tolist()
    with torch.no_grad():
        static = [static_weights(hc, value) for hc in hcs]
        return unfold_connections(static, head_module.weights(value=value)).tolist()
