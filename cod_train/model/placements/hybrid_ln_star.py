"""HybridNorm* (Zhuo et al. 2025): HybridNorm, but the first layer is Pre-LN with the QKV-normalized attention."""

from __future__ import annotations

from typing import Any

from cod_train.model.placements.hybrid_ln import HybridLN
from cod_train.model.zoo import Placement, placement, register_placement


@register_placement
class HybridLNStar(HybridLN):
    name = "hybrid_ln_star"
    summary = "HybridNorm*: HybridNorm with a Pre-LN first layer"
    equations = "layer 1: h = x (+) Attn_qkv(N1(x)), y = h (+) MLP(N2(h));  the rest HybridNorm"

    def layer(self, depth: int, config: Any) -> Placement:
        return placement("pre_ln") if depth == 1 else placement("hybrid_ln")
