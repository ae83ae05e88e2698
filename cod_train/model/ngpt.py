"""The nn.Modules of nGPT (Loshchilov et al. 2024, arXiv 2410.01131), `norm_type=ngpt`; the equations and the
choices are the placement's (`cod_train/model/placements/ngpt.py`).

Every learned scale follows the paper's parametrization: the parameter p starts at `scaling` and the model uses
s = p * (init / scaling), so s starts at `init` while Adam moves p on the scale of `scaling` (the paper's
s_init / s_scale; `NgptScale`). The weight vectors along the embedding dimension are kept on the unit sphere by
`unit_normalize_`: at init (the module attribute `unit_dim`, read by `CodLlamaPreTrainedModel._init_weights`)
and after every optimizer step (`NgptRenormalize`, a training-loop callback). Nothing here is a buffer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from cod_train.model.param_init import copy_full_

NGPT_ALPHA_INIT = 0.05  # alpha_A, alpha_M: the eigen learning rates start here (the paper: ~1 / n_layers)


def unit_sphere(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """x / ||x|| along `dim` (the paper's Norm): the inverse norm in fp32, rounded to x's dtype before the multiply,
    so the backward keeps x in its own dtype and one number per vector (not an fp32 copy of x)."""
    inverse = torch.rsqrt(x.float().square().sum(dim, keepdim=True).clamp_min(1e-24))
    return x * inverse.to(x.dtype)


@torch.no_grad()
def unit_normalize_(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """weight <- its vectors along `dim` scaled to unit L2 norm, in place. A sharded weight (FSDP2's DTensor) is
    normalized whole: along a sharded dim the norm needs every rank's part."""
    if hasattr(weight, "device_mesh") and hasattr(weight, "placements"):
        full = weight.full_tensor()  # type: ignore[attr-defined]
        return copy_full_(weight, unit_sphere(full, dim))
    return weight.mul_(torch.rsqrt(weight.float().square().sum(dim, keepdim=True).clamp_min(1e-24)).to(weight.dtype))


class NgptScale(nn.Module):
    """The paper's learned per-channel scale: s = p * (init / scaling), p initialized to `scaling`."""

    def __init__(self, size: int, init_value: float, scaling: float):
        super().__init__()
        self.init_value, self.scaling = init_value, scaling
        self.scale = nn.Parameter(torch.full((size,), scaling))

    def value(self) -> torch.Tensor:
        return self.scale * (self.init_value / self.scaling)

    def reset_parameters(self) -> None:
        init.constant_(self.scale, self.scaling)


class NgptQKScale(nn.Module):
    """q, k <- Norm(q) s_qk, Norm(k) s_qk per head, after RoPE (the KV cache holds the scaled k); one s_qk
    [n_heads * head_dim] shared by q and k (init 1, scaling 1/sqrt(d_model))."""

    def __init__(self, n_heads: int, head_dim: int, d_model: int):
        super().__init__()
        self.s_qk = NgptScale(n_heads * head_dim, 1.0, 1.0 / math.sqrt(d_model))
        self.n_heads, self.head_dim = n_heads, head_dim

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.s_qk.value().view(self.n_heads, 1, self.head_dim).to(q.dtype)  # q, k: [B, heads, T, head_dim]
        return unit_sphere(q) * s, unit_sphere(k) * s


class NgptGateUpScale(nn.Module):
    """The SwiGLU's inputs: u <- u s_u, v <- v s_v sqrt(d_model) (v = the gate, SiLU's input; init 1, scaling 1)."""

    def __init__(self, intermediate: int, d_model: int):
        super().__init__()
        self.s_u, self.s_v = NgptScale(intermediate, 1.0, 1.0), NgptScale(intermediate, 1.0, 1.0)
        self.sqrt_d = math.sqrt(d_model)

    def forward(self, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return gate * (self.s_v.value() * self.sqrt_d).to(gate.dtype), up * self.s_u.value().to(up.dtype)


class NgptEigenLR(nn.Module):
    """The eigen learning rates of one layer, per channel: alpha_A (`alpha_attn`) and alpha_M (`alpha_mlp`),
    init 0.05, scaling 1/sqrt(d_model)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.alpha_attn = NgptScale(d_model, NGPT_ALPHA_INIT, 1.0 / math.sqrt(d_model))
        self.alpha_mlp = NgptScale(d_model, NGPT_ALPHA_INIT, 1.0 / math.sqrt(d_model))

    def step(self, h: torch.Tensor, branch: torch.Tensor, site: str) -> torch.Tensor:
        """h <- Norm(h + |alpha| (Norm(branch) - h)): one step on the sphere towards the sub-layer's suggestion."""
        alpha = getattr(self, f"alpha_{site}").value().abs().to(h.dtype)
        return unit_sphere(h + alpha * (unit_sphere(branch) - h))


class NgptHead(nn.Module):
    """The output embedding: logits z = s_z * (h E^T), E's rows on the unit sphere (`weight`, LLaMA's name for
    lm_head's matrix), s_z per vocabulary entry (init 1, scaling 1/sqrt(d_model))."""

    unit_dim = 1

    def __init__(self, d_model: int, vocab_size: int, init_std: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
        self.s_z = NgptScale(vocab_size, 1.0, 1.0 / math.sqrt(d_model))
        self.init_std = init_std

    def loss_weight(self) -> torch.Tensor:
        """diag(s_z) E: the fused loss's matrix, so that h (diag(s_z) E)^T = s_z * (h E^T) = the logits."""
        return self.weight * self.s_z.value()[:, None].to(self.weight.dtype)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight) * self.s_z.value().to(h.dtype)

    def reset_parameters(self) -> None:
        # normal_full_ (not init.normal_): a sharded weight draws the whole matrix (param_init)
        from cod_train.model.param_init import normal_full_

        normal_full_(self.weight, mean=0.0, std=self.init_std)  # unit rows: _init_weights' `unit_dim`


def unit_weights(model: nn.Module) -> list[tuple[torch.Tensor, int]]:
    """(weight, dim) of every module whose weight vectors live on the unit sphere (`unit_dim`), each once
    (a tied lm_head shares the embedding's matrix)."""
    seen: set[int] = set()
    out = []
    for module in model.modules():
        dim = getattr(module, "unit_dim", None)
        weight = getattr(module, "weight", None)
        if dim is not None and weight is not None and id(weight) not in seen:
            seen.add(id(weight))
            out.append((weight, dim))
    return out


class NgptRenormalize:
    """The training-loop callback (`cod_train.train.loop.Callback`'s `after_optimizer_step`): every weight
    vector back on the unit sphere after each optimizer step (the paper's normalization step)."""

    def before_optimizer_step(self, model: nn.Module, step: int, batch: Any) -> dict[str, Any]:
        return {}

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        for weight, dim in unit_weights(model):  # looked up each step: a checkpoint load may assign new tensors
            unit_normalize_(weight, dim)

    def on_step_end(self, row: dict[str, Any], step: int) -> None:
        pass
