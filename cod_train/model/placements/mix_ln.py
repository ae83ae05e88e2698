"""Mix-LN (Li et al. 2025): the first floor(mix_ln_ratio * L) layers are Post-LN, the rest Pre-LN."""

from __future__ import annotations

import math
from typing import Any

from cod_train.model.zoo import AXIS_DEFAULTS, Placement, axis, placement, register_placement


def num_post_ln_layers(config: Any) -> int:
    """How many leading layers are Post-LN (floor(ratio * L))."""
    return math.floor(config.mix_ln_ratio * config.num_hidden_layers + 1e-9)


@register_placement
class MixLN(Placement):
    name = "mix_ln"
    keys = ("mix_ln_ratio",)
    label_keys = ("mix_ln_ratio",)
    summary = "Mix-LN: Post-LN in the first layers, Pre-LN in the rest"
    equations = "l <= floor(mix_ln_ratio L): h = N1(x (+) Attn(x)), y = N2(h (+) MLP(h));  the rest Pre-LN"
    paper = "Li et al. 2025, arXiv 2412.13795"

    def layer(self, depth: int, config: Any) -> Placement:
        return placement("post_ln" if depth <= num_post_ln_layers(config) else "pre_ln")

    def key_problems(self, axes: Any) -> list[str]:
        ratio = axis(axes, "mix_ln_ratio")
        if isinstance(ratio, (int, float)) and 0.0 <= ratio <= 1.0:
            return []
        return [f"mix_ln_ratio must be in [0, 1], got {ratio!r}"]

    def detail(self, axes: Any) -> str:
        ratio = axis(axes, "mix_ln_ratio")
        return "" if ratio == AXIS_DEFAULTS["mix_ln_ratio"] else f" (ratio {ratio})"

    def card_axes(self, axes: Any) -> dict[str, Any]:
        return {"mix_ln_ratio": axis(axes, "mix_ln_ratio")}
