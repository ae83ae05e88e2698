"""HybridNorm (Zhuo et al. 2025): attention normalizes q, k and v inside (QKV-norm, no pre-norm); the MLP is
Post-Norm with the skip taken after N2:  h = x (+) Attn_qkv(x),  y = N2(h) (+) MLP(N2(h))."""

from __future__ import annotations

from typing import Any

from cod_train.model.zoo import Placement, axis, register_placement


@register_placement
class HybridLN(Placement):
    name = "hybrid_ln"
    summary = "HybridNorm: QKV-normalized attention and a Post-Norm MLP"
    equations = "h = x (+) Attn_qkv(x),  y = N2(h) (+) MLP(N2(h))"
    paper = "Zhuo et al. 2025, arXiv 2503.04598"
    norms = (("post_attention_layernorm", "mlp"),)
    qk_norm_default = "head"
    v_norm = True

    def forward(self, b: Any, x: Any, attn: Any) -> Any:
        h = b.join(x, attn(x), "attn")
        n = b.post_attention_layernorm(h)
        return b.join(n, b.mlp(n), "mlp")

    def problems(self, axes: Any) -> list[str]:
        if axis(axes, "qk_norm") != "none":
            return []
        return [f"norm_type={self.name} normalizes q, k and v by definition, so qk_norm=none does not combine "
                "with it; use qk_norm=head (the default for HybridNorm) or qk_norm=full"]
