"""Pre-LN (the LLaMA block):  h = x (+) Attn(N1(x)),  y = h (+) MLP(N2(h))."""

from __future__ import annotations

from typing import Any

from cod_train.model.zoo import Placement, register_placement


@register_placement
class PreLN(Placement):
    name = "pre_ln"
    summary = "Pre-LN: each sub-layer reads a normalized copy of the stream (LLaMA, GPT-2)"
    equations = "h = x (+) Attn(N1(x)),  y = h (+) MLP(N2(h))"
    paper = "Xiong et al. 2020, arXiv 2002.04745"
    pre_norm = True
    export_form = "pre_ln"

    def forward(self, b: Any, x: Any, attn: Any) -> Any:
        h = b.join(x, attn(b.input_layernorm(x)), "attn")
        return b.join(h, b.mlp(b.post_attention_layernorm(h)), "mlp")
