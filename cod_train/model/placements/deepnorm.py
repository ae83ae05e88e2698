"""DeepNorm (Wang et al. 2022, DeepNet), decoder-only: Post-LN with the skip up-weighted,

    h = N1(a x (+) Attn(x)),  y = N2(a h (+) MLP(h)),   a = (2L)^(1/4),

and v_proj, o_proj and the MLP's projections initialized with std x beta, beta = (8L)^(-1/4).
"""

from __future__ import annotations

from typing import Any

from cod_train.model.placements.post_ln import PostLN
from cod_train.model.zoo import register_placement


@register_placement
class DeepNorm(PostLN):
    name = "deepnorm"
    summary = "DeepNorm: Post-LN with the skip up-weighted by (2L)^(1/4) and a down-scaled init"
    equations = "h = N1(a x (+) Attn(x)),  y = N2(a h (+) MLP(h)),  a = (2L)^(1/4)"
    paper = "Wang et al. 2022, arXiv 2203.00555"

    def build_layer(self, block: Any, config: Any) -> None:
        L = config.num_hidden_layers
        block.residual_scale = (2.0 * L) ** 0.25
        beta = (8.0 * L) ** -0.25
        attn, mlp = block.self_attn, block.mlp
        for proj in (attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj):
            proj.init_std = config.initializer_range * beta
