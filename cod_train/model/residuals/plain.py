"""The plain residual sum: x (+) f = x + f."""

from __future__ import annotations

from cod_train.model.zoo import Residual, register_residual


@register_residual
class Plain(Residual):
    name = "plain"
    summary = "the plain sum"
    equations = "x (+) f = x + f"
    foldable = True
