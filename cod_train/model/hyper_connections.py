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
Precision and memory: every weight is computed in fp32 and the read and the write accumulate in fp32, also under
autocast (which is switched off around them); the streams keep the activation dtype. For the backward the streams
are kept once per sub-layer, in the compute dtype (`kept_for_backward`: the streams as they are, or their bf16
copy where autocast runs over fp32 streams), never as an fp32 copy: the projection, the read and the write are
autograd Functions that upcast in their forward and again in their backward, Sinkhorn-Knopp recomputes its
iterations from the logits, and DHC's N(H) W is recomputed in the backward from the kept streams. Nothing here is
a buffer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
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


def _sinkhorn_steps(logits: torch.Tensor, iters: int, eps: float) -> tuple[torch.Tensor, list[int], list[torch.Tensor]]:
    """(softmax p, the normalized dims, [den, m] after each normalization)."""
    p = torch.softmax(logits, dim=-1)
    m, dims, steps = p + eps, [-2] + [-1, -2] * (iters - 1), []
    for dim in dims:
        den = m.sum(dim=dim, keepdim=True) + eps
        m = m / den
        steps += [den, m]
    return p, dims, steps


class _SinkhornKnopp(torch.autograd.Function):
    """`sinkhorn` with its exact gradient written out: each normalization y = m / (sum m + eps) pulls back g to
    (g - sum(g y)) / (sum m + eps), the softmax p to p (g - sum(g p)). Autograd would record ~4 nodes per
    normalization (2 `iters` - 1 of them, on [..., n, n] tensors: op overhead, not arithmetic); this is ~half the
    ops and no graph. Only the logits are kept: the backward runs the iterations again (kept, the 2 `iters`
    intermediates of n x n per token would outweigh the bf16 streams themselves at d = 256)."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
        ctx.iters, ctx.eps = iters, eps
        ctx.save_for_backward(logits)
        return _sinkhorn_steps(logits, iters, eps)[2][-1]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (logits,) = ctx.saved_tensors
        p, dims, steps = _sinkhorn_steps(logits, ctx.iters, ctx.eps)
        for i in reversed(range(len(dims))):
            den, y = steps[2 * i], steps[2 * i + 1]
            grad = (grad - (grad * y).sum(dim=dims[i], keepdim=True)) / den
        return p * (grad - (grad * p).sum(dim=-1, keepdim=True)), None, None


def no_autocast(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off on `t`'s device: the connections compute in fp32 whatever autocast would pick."""
    return torch.autocast(t.device.type, enabled=False)


def kept_for_backward(streams: torch.Tensor) -> torch.Tensor:
    """The streams as the connections keep them for the backward: in autocast's dtype where autocast runs over
    wider streams (its bf16 copy, made once per sub-layer, as autocast keeps a matmul's input), else as they are
    (no copy). Differentiable (a cast), so DHC's recomputed terms pass their gradient back to the streams."""
    device = streams.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        if streams.dtype.itemsize > dtype.itemsize:
            return streams.to(dtype)
    return streams


def _rms_linear(streams: torch.Tensor, weight: torch.Tensor, eps: float, kept: torch.Tensor | None = None
                ) -> torch.Tensor:
    """RMS(flatten(H)) weight^T in fp32 (`kept`: the streams as kept for the backward, `kept_for_backward`)."""
    kept = streams if kept is None else kept
    return cast(torch.Tensor, _RmsLinear.apply(streams, kept.detach(), weight, eps))


class _RmsLinear(torch.autograd.Function):
    """y = (x W^T) r with x = flatten(H) in fp32, r = 1 / sqrt(mean(x^2) + eps): the per-token scale moves past
    the projection, so no normalized n-wide copy is made, and only the kept streams (compute dtype), W, r and
    x W^T (small) are saved. Backward, with z = x W^T: gz = g r, gW = gz^T x, gx = gz W - (sum(g z) r^3 / N) x."""

    @staticmethod
    def forward(ctx: Any, streams: torch.Tensor, kept: torch.Tensor, weight: torch.Tensor, eps: float
                ) -> torch.Tensor:
        flat = streams.flatten(-2).float()
        mean_square = torch.linalg.vector_norm(flat, dim=-1, keepdim=True).square() / flat.shape[-1]
        rsqrt, z = torch.rsqrt(mean_square + eps), F.linear(flat, weight.float())
        ctx.save_for_backward(kept, weight, rsqrt, z)
        ctx.dtype = streams.dtype
        return z * rsqrt

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor, None]:
        kept, weight, rsqrt, z = ctx.saved_tensors
        flat = kept.flatten(-2).float()
        grad_z = grad * rsqrt
        grad_rsqrt = (grad * z).sum(-1, keepdim=True)
        with no_autocast(grad):
            grad_flat = grad_z @ weight.float() - flat * (grad_rsqrt * rsqrt.pow(3) / flat.shape[-1])
            grad_weight = grad_z.flatten(0, -2).T @ flat.flatten(0, -2)
        return grad_flat.unflatten(-1, kept.shape[-2:]).to(ctx.dtype), None, grad_weight.to(weight.dtype), None


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

    def forward(self, streams: torch.Tensor, kept: torch.Tensor | None = None) -> Weights:
        """`kept`: the streams as kept for the backward (`kept_for_backward`; default: `streams`)."""
        alpha, beta = self.static_alpha.float(), self.static_beta.float()
        if self.dynamic:
            terms = self.recomputed_dynamic_terms(streams, streams if kept is None else kept)
            alpha, beta = alpha + terms[..., :-1], beta + terms[..., -1]
        return alpha[..., 0], beta, alpha[..., 1:]

    def recomputed_dynamic_terms(self, streams: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """`dynamic_terms` of the streams, recomputed in the backward from `kept` (checkpointed). Where `kept` is
        a bf16 copy (autocast over fp32 streams) the value is still that of the fp32 streams: the gradient comes
        from the copy, as autocast takes a matmul's gradient from its bf16 input, the value is corrected to the
        exact one outside autograd (one more forward of the terms, only there)."""
        if not (torch.is_grad_enabled() and kept.requires_grad):
            return self.dynamic_terms(streams)
        terms = cast(torch.Tensor, checkpoint(self.dynamic_terms, kept, use_reentrant=False))
        if kept is streams:
            return terms
        with torch.no_grad():
            exact = self.dynamic_terms(streams)
        return terms + (exact - terms.detach())

    def dynamic_terms(self, streams: torch.Tensor) -> torch.Tensor:
        """[s_a tanh(N(H) W_a) | s_b tanh(N(H) w_b)] [..., n, n + 2] in fp32. Recomputed in the backward from the
        kept streams (`forward`), so neither N(H) nor its fp32 copy (n-wide both) is kept."""
        with no_autocast(streams):
            hn = self.norm(streams).float()
            fn = torch.cat([self.dynamic_alpha_fn, self.dynamic_beta_fn.unsqueeze(-1)], dim=-1).float()
            scale = torch.cat([self.dynamic_alpha_scale.expand(self.n + 1), self.dynamic_beta_scale]).float()
            return scale * torch.tanh(hn @ fn)


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

    def forward(self, streams: torch.Tensor, kept: torch.Tensor | None = None) -> Weights:
        """`kept`: the streams as kept for the backward (`kept_for_backward`; default: `streams`)."""
        with no_autocast(streams):
            return self.mappings(_rms_linear(streams, self.fn, self.norm_eps, kept))

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

    def __init__(self, config: CodLlamaConfig, mode: str):
        super().__init__()
        n = config.hc_streams
        self.n, self.mode, self.norm_eps = n, mode, config.rms_norm_eps
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
        kept = kept_for_backward(streams)
        return _read(self.weights(streams, kept=kept), streams, kept)

    def weights(self, streams: torch.Tensor | None = None, value: Value | None = None,
                kept: torch.Tensor | None = None) -> torch.Tensor:
        """The collapse weights [..., n] of each stream; without `streams` their input-independent part (`head`:
        sigmoid(b) + eps). `value`: a parameter's full value (gathered where sharded); `kept`: the streams as
        kept for the backward."""
        value = value or _as_is
        if self.mode != "head":
            return torch.full((self.n,), 1.0 if self.mode == "sum" else 1.0 / self.n)
        base, scale = value(self.hc_base).float(), value(self.hc_scale).float()
        if streams is None:
            return torch.sigmoid(base) + HC_EPS
        with no_autocast(streams):
            mix = _rms_linear(streams, value(self.hc_fn), self.norm_eps, kept)
            return torch.sigmoid(mix * scale + base) + HC_EPS


def _read(pre: torch.Tensor, streams: torch.Tensor, kept: torch.Tensor | None = None) -> torch.Tensor:
    """sum_j pre_j H_j, in fp32, rounded to the streams' dtype (`kept`: the streams as kept for the backward)."""
    kept = streams if kept is None else kept
    with no_autocast(streams):
        return cast(torch.Tensor, _Read.apply(pre, streams, kept.detach()))


class _Read(torch.autograd.Function):
    """h = pre^T H in fp32 from the streams in their dtype; keeps pre and the kept streams (no fp32 copy)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, streams: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(pre, kept)
        ctx.dtype = streams.dtype
        return torch.einsum("...j,...jd->...d", pre, streams.float()).to(streams.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        pre, kept = ctx.saved_tensors
        grad = grad.float()
        with no_autocast(grad):
            grad_pre = torch.einsum("...d,...jd->...j", grad, kept.float())
        return grad_pre, (pre.unsqueeze(-1) * grad.unsqueeze(-2)).to(ctx.dtype), None


class _Write(torch.autograd.Function):
    """H' = res^T H + post^T F in fp32, rounded once to the streams' dtype; keeps res, post, F and the kept
    streams (no fp32 copy)."""

    @staticmethod
    def forward(ctx: Any, res: torch.Tensor, streams: torch.Tensor, kept: torch.Tensor, post: torch.Tensor,
                out: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(res, kept, post, out)
        ctx.dtype = streams.dtype
        mixed = torch.einsum("...ji,...jd->...id", res, streams.float())
        return torch.addcmul(mixed, post.unsqueeze(-1), out.float().unsqueeze(-2)).to(streams.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, torch.Tensor,
                                                         torch.Tensor]:
        res, kept, post, out = ctx.saved_tensors
        grad = grad.float()
        with no_autocast(grad):
            grad_res = torch.einsum("...id,...jd->...ji", grad, kept.float())
            grad_streams = torch.einsum("...ji,...id->...jd", res, grad).to(ctx.dtype)
            grad_post = torch.einsum("...id,...d->...i", grad, out.float())
            grad_out = torch.einsum("...i,...id->...d", post, grad).to(out.dtype)
        return grad_res, grad_streams, None, grad_post, grad_out


def hyper_sublayer(hc: nn.Module, streams: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """H' = res^T H + post^T F(pre^T H) for one sub-layer F = `fn`; the connections in fp32, F as the caller runs
    it (under autocast where on)."""
    kept = kept_for_backward(streams)
    pre, post, res = hc(streams, kept)
    out = fn(_read(pre, streams, kept))
    with no_autocast(streams):
        return cast(torch.Tensor, _Write.apply(res, streams, kept.detach(), post, out))


def hyper_block(b: Any, streams: torch.Tensor, attn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """A Pre-LN / LNS decoder layer `b` on the streams: both sub-layers read and write through `b.attn_hc` and
    `b.mlp_hc` (`attn` = the layer's attention with its RoPE, mask and KV cache bound)."""
    s = b.lns_scale

    def scaled(h: torch.Tensor) -> torch.Tensor:
        return h * s if s != 1.0 else h

    streams = hyper_sublayer(b.attn_hc, streams, lambda h: attn(scaled(b.input_layernorm(h))))
    return hyper_sublayer(b.mlp_hc, streams, lambda h: b.mlp(scaled(b.post_attention_layernorm(h))))


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
