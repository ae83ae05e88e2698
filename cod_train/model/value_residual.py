"""Value residual learning (ResFormer; Zhou et al. 2024, arXiv 2410.17897), the `value_residual` axis: every layer
after the first mixes its attention values with the first layer's, v_n <- lambda_self * v_n + lambda_first * v_1,
before attention and before the KV cache stores them (the "Learnable-ResFormer" form: two learned scalars per layer,
both initialized to 0.5, the paper's fixed ResFormer weights). v_1 is the first layer's v (after v_norm, where the
placement has one) of the tokens of the same forward: a per-forward state (`FirstLayerValues`) that the backbone
hands every layer alongside the residual stream, so it composes with every placement and residual scheme, and a
cached decoding step mixes with the new tokens' own first-layer values (the cache holds already-mixed values).

The first layer that runs fills the state: the first layer, or the next one where the layer removal diagnostics
leave the first out (then nothing is mixed into it).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init

VALUE_LAMBDA_INIT = 0.5  # ResFormer's lambda_1 = lambda_2 = 0.5


class FirstLayerValues:
    """The first layer's attention values v_1 [B, kv_heads, T, head_dim] of this forward (None before it runs)."""

    def __init__(self, v: torch.Tensor | None = None) -> None:
        self.v = v

    def snapshot(self) -> FirstLayerValues:
        """A copy as it is now (the layer removal replays start from the state a removed layer saw)."""
        return FirstLayerValues(self.v)


class ValueResidualMix(nn.Module):
    """v <- lambda_self * v + lambda_first * v_1, two learned scalars (`lambda_self`, `lambda_first`)."""

    def __init__(self) -> None:
        super().__init__()
        self.lambda_self = nn.Parameter(torch.full((1,), VALUE_LAMBDA_INIT))
        self.lambda_first = nn.Parameter(torch.full((1,), VALUE_LAMBDA_INIT))

    def forward(self, v: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        return v * self.lambda_self + first * self.lambda_first

    def reset_parameters(self) -> None:
        init.constant_(self.lambda_self, VALUE_LAMBDA_INIT)
        init.constant_(self.lambda_first, VALUE_LAMBDA_INIT)


def mixed_values(v: torch.Tensor, state: FirstLayerValues | None, mix: ValueResidualMix | None) -> torch.Tensor:
    """The values a layer attends with: its own where value residuals are off; the first layer that runs stores
    its own as v_1; every later layer mixes v_1 in."""
    if state is None:
        return v
    if state.v is None:
        state.v = v
        return v
    return mix(v, state.v) if mix is not None else v
