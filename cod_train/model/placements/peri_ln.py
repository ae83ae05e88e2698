"""Peri-LN (Kim et al. 2025): Sandwich-LN layers plus a norm on the embedding output (`embed_norm`)."""

from __future__ import annotations

from typing import Any

from cod_train.model.placements.sandwich_ln import SandwichLN
from cod_train.model.zoo import Placement, placement, register_placement


@register_placement
class PeriLN(SandwichLN):
    name = "peri_ln"
    summary = "Peri-LN: Sandwich-LN layers and a normalized embedding"
    equations = "x_0 = Ne(embedding),  h = x (+) Na(Attn(N1(x))),  y = h (+) Nm(MLP(N2(h)))"
    paper = "Kim et al. 2025, arXiv 2502.02732"
    embed_norm_default = True

    def layer(self, depth: int, config: Any) -> Placement:
        return placement("sandwich_ln")
