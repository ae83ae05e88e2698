"""Sandwich-LN (CogView): a norm before and after each sub-layer,  h = x (+) Na(Attn(N1(x))),
y = h (+) Nm(MLP(N2(h)))."""

from __future__ import annotations

from typing import Any

from cod_train.model.zoo import Placement, register_placement


@register_placement
class SandwichLN(Placement):
    name = "sandwich_ln"
    summary = "Sandwich-LN: a norm on each sub-layer's input and on its output"
    equations = "h = x (+) Na(Attn(N1(x))),  y = h (+) Nm(MLP(N2(h)))"
    paper = "Ding et al. 2021 (CogView), arXiv 2105.13290"
    norms = (("input_layernorm", "attn"), ("post_attn_out_norm", "attn"),
             ("post_attention_layernorm", "mlp"), ("post_mlp_out_norm", "mlp"))

    def forward(self, b: Any, x: Any, attn: Any) -> Any:
        h = b.join(x, b.post_attn_out_norm(attn(b.input_layernorm(x))), "attn")
        return b.join(h, b.post_mlp_out_norm(b.mlp(b.post_attention_layernorm(h))), "mlp")
