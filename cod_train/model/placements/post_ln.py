"""Post-LN (the original Transformer):  h = N1(x (+) Attn(x)),  y = N2(h (+) MLP(h))."""

from __future__ import annotations

from typing import Any

from cod_train.model.zoo import Placement, register_placement


@register_placement
class PostLN(Placement):
    name = "post_ln"
    paper = "Vaswani et al. 2017, arXiv 1706.03762"
    mid_stream = "mlp"  # the MLP reads the stream h itself
    summary = "Post-LN: the norm follows each residual sum (the original Transformer, BERT)"
    equations = "h = N1(x (+) Attn(x)),  y = N2(h (+) MLP(h))"

    def forward(self, b: Any, x: Any, attn: Any) -> Any:
        h = b.input_layernorm(b.skip(x) + b.branch(attn(x), "attn"))
        return b.post_attention_layernorm(b.skip(h) + b.branch(b.mlp(h), "mlp"))
