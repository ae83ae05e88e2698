"""Reordered norm (OLMo 2): the norm on each sub-layer's output only,  h = x (+) Na(Attn(x)),
y = h (+) Nm(MLP(h)). With full-width QK-norm it is `Olmo2ForCausalLM` exactly."""

from __future__ import annotations

from typing import Any

from cod_train.model.zoo import Placement, register_placement


@register_placement
class ReorderedLN(Placement):
    name = "reordered_ln"
    mid_stream = "mlp"  # the MLP reads the stream h itself
    summary = "Reordered norm (OLMo 2): a norm on each sub-layer's output, none on its input"
    equations = "h = x (+) Na(Attn(x)),  y = h (+) Nm(MLP(h))"
    paper = "OLMo 2, arXiv 2501.00656"
    norms = (("post_attn_out_norm", "attn"), ("post_mlp_out_norm", "mlp"))
    export_form = "reordered_ln"

    def forward(self, b: Any, x: Any, attn: Any) -> Any:
        h = b.join(x, b.post_attn_out_norm(attn(x)), "attn")
        return b.join(h, b.post_mlp_out_norm(b.mlp(h)), "mlp")

    def fold_layer(self, state: dict[str, Any], prefix: str, depth: int, attn_g: Any, mlp_g: Any,
                   scale_rows: Any) -> None:
        """The branch ends in a norm: g (w * n) = (g w) * n."""
        scale_rows(state, f"{prefix}.post_attn_out_norm", attn_g)
        scale_rows(state, f"{prefix}.post_mlp_out_norm", mlp_g)
