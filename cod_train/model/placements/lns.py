"""LayerNorm Scaling (Sun et al. 2025, "The Curse of Depth"): Pre-LN with each norm output scaled by 1/sqrt(l),

    h = x (+) Attn(N1(x) / sqrt(l)),  y = h (+) MLP(N2(h) / sqrt(l))      (l = 1..L, the layer's depth)
"""

from __future__ import annotations

import math
from typing import Any

from cod_train.model.zoo import Placement, register_placement


@register_placement
class LNS(Placement):
    name = "lns"
    summary = "LayerNorm Scaling: Pre-LN with each norm output scaled by 1/sqrt(depth)"
    equations = "h = x (+) Attn(N1(x) / sqrt(l)),  y = h (+) MLP(N2(h) / sqrt(l))"
    paper = "Sun et al. 2025, arXiv 2502.05795"
    pre_norm = True
    export_form = "pre_ln"

    def build_layer(self, block: Any, config: Any) -> None:
        block.lns_scale = 1.0 / math.sqrt(block.depth)  # a plain float: `to_empty()` would wipe a buffer

    def forward(self, b: Any, x: Any, attn: Any) -> Any:
        s = b.lns_scale
        h = b.join(x, attn(b.input_layernorm(x) * s), "attn")
        return b.join(h, b.mlp(b.post_attention_layernorm(h) * s), "mlp")

    def fold_layer(self, state: dict[str, Any], prefix: str, depth: int, attn_g: Any, mlp_g: Any,
                   scale_rows: Any) -> None:
        """N(x) / sqrt(l) = (w / sqrt(l)) * x / rms(x): the norm weights absorb the scale."""
        for norm in ("input_layernorm", "post_attention_layernorm"):
            scale_rows(state, f"{prefix}.{norm}", 1.0 / math.sqrt(depth))
        super().fold_layer(state, prefix, depth, attn_g, mlp_g, scale_rows)
