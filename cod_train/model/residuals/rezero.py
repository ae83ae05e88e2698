"""ReZero (Bachlechner et al. 2021): x + g * f with one learnable scalar g per branch, initialized to 0."""

from __future__ import annotations

from typing import Any, ClassVar

from cod_train.model.residuals.layerscale import LayerScale
from cod_train.model.zoo import register_residual


@register_residual
class ReZero(LayerScale):
    name = "rezero"
    keys: ClassVar[tuple[str, ...]] = ()
    summary = "one learnable scalar gain per branch, starting at 0"
    equations = "x (+) f = x + g * f,  g one scalar per branch, init 0"
    paper = "Bachlechner et al. 2021, arXiv 2003.04887"

    def gain_size(self, config: Any) -> int:
        return 1

    def gain_init(self, config: Any) -> float:
        return 0.0
