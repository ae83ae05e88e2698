"""The norm functions (`norm_fn`) and the learnable gains of the residual schemes (`residual`).

    rmsnorm    N(x) = w * x / sqrt(mean(x^2) + eps)                    (LlamaRMSNorm; param `weight`)
    layernorm  N(x) = w * (x - mean(x)) / sqrt(var(x) + eps) [+ b]     (`weight`, `bias` with norm_bias)
    dyt        N(x) = w * tanh(alpha * x) [+ b]                        (Zhu et al. 2025, arXiv 2503.10622)
    derf       N(x) = w * erf(alpha * x + s) [+ b]                     (Chen et al. 2025, arXiv 2512.10938)

alpha (`alpha`, one scalar per norm) starts at `norm_alpha_attn` / `norm_alpha_mlp` / `norm_alpha_final` by the
norm's site; s (`shift`, one scalar) starts at 0. Every norm computes in fp32 and rounds to the input dtype before
the weight, as LlamaRMSNorm does. `Gain` is a learnable multiplier (per channel for LayerScale, one scalar for
ReZero, the GPAS gate and the embedding scale). Nothing here is a buffer: `to_empty()` would wipe one; every
parameter is (re)set by `reset_parameters()`, which `CodLlamaPreTrainedModel._init_weights` calls.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from cod_train.model import kernels
from cod_train.model.configuration import CodLlamaConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, use_kernels: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.use_kernels = use_kernels  # resolved `kernels.wanted(config)`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernels.active(self.use_kernels, x):
            return kernels.rms_norm(x, self.weight, self.eps)
        # weight * (x / rms(x)) with fp32 statistics whatever the activation dtype, rounded to x's dtype before
        # the weight multiply, as LlamaRMSNorm (logits match it). `F.rms_norm` is one fused kernel where torch
        # has one, and saves fewer tensors for the backward than the five-op composite.
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)

    def reset_parameters(self) -> None:
        init.ones_(self.weight)


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        out = self.weight * F.layer_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return out + self.bias if self.bias is not None else out

    def reset_parameters(self) -> None:
        init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)


class DynamicTanh(nn.Module):
    """DyT. The authors' LLaMA code drops the bias (our default, `norm_bias=false`)."""

    def __init__(self, dim: int, alpha_init: float, bias: bool = False):
        super().__init__()
        self.alpha_init = alpha_init
        self.alpha = nn.Parameter(torch.full((1,), alpha_init))
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def squash(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.alpha * x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.weight * self.squash(x.float()).to(x.dtype)
        return out + self.bias if self.bias is not None else out

    def reset_parameters(self) -> None:
        init.constant_(self.alpha, self.alpha_init)
        init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)


class DynamicErf(DynamicTanh):
    """Derf: erf in place of tanh, plus a learnable scalar shift s inside it (init 0)."""

    def __init__(self, dim: int, alpha_init: float, bias: bool = False):
        super().__init__(dim, alpha_init, bias)
        self.shift = nn.Parameter(torch.zeros(1))

    def squash(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(self.alpha * x + self.shift)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        init.zeros_(self.shift)


class Gain(nn.Module):
    """x * g with a learnable g of `size` entries (1 = one scalar), initialised to `init_value`."""

    def __init__(self, size: int, init_value: float):
        super().__init__()
        self.init_value = init_value
        self.weight = nn.Parameter(torch.full((size,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    def reset_parameters(self) -> None:
        init.constant_(self.weight, self.init_value)


def make_norm(config: CodLlamaConfig, dim: int, site: str) -> nn.Module:
    """The block norm of `config.norm_fn` at `site` (attn | mlp | final) over `dim` channels."""
    fn, eps, bias = config.norm_fn, config.rms_norm_eps, config.norm_bias
    if fn == "rmsnorm":
        return RMSNorm(dim, eps, kernels.wanted(config))
    if fn == "layernorm":
        return LayerNorm(dim, eps, bias)
    alpha = getattr(config, f"norm_alpha_{site}")
    return (DynamicErf if fn == "derf" else DynamicTanh)(dim, alpha, bias)


def embed_scale(dim: int) -> Gain:
    """The learnable scalar after the embedding of the DyT / Derf language models, init sqrt(d)."""
    return Gain(1, math.sqrt(dim))
