"""LayerScale (Touvron et al. 2021, CaiT): x + g * f with a learnable per-channel gain g per branch (`attn_gain`,
`mlp_gain`), initialized to `layerscale_init`."""

from __future__ import annotations

from typing import Any, ClassVar

from cod_train.model.zoo import Residual, register_residual


@register_residual
class LayerScale(Residual):
    name = "layerscale"
    keys: ClassVar[tuple[str, ...]] = ("layerscale_init",)
    summary = "a learnable per-channel gain on each branch"
    equations = "x (+) f = x + g * f,  g per channel (attn_gain / mlp_gain), init layerscale_init"
    paper = "Touvron et al. 2021, arXiv 2103.17239"
    foldable = True
    scalar_params = ("attn_gain.weight", "mlp_gain.weight")  # logged as their mean over channels

    def gain_size(self, config: Any) -> int:
        return int(config.hidden_size)

    def gain_init(self, config: Any) -> float:
        return float(config.layerscale_init)

    def build_layer(self, block: Any, config: Any) -> None:
        from cod_train.model.norms import Gain

        block.attn_gain = Gain(self.gain_size(config), self.gain_init(config))
        block.mlp_gain = Gain(self.gain_size(config), self.gain_init(config))

    def branch(self, b: Any, f: Any, site: str) -> Any:
        return (b.attn_gain if site == "attn" else b.mlp_gain)(f)

    def branch_factor(self, state: dict[str, Any], prefix: str, site: str, config: Any) -> Any:
        return state.pop(f"{prefix}.{site}_gain.weight").float()
