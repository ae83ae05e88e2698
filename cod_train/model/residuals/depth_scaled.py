"""Depth-scaled branches (depth-muP, CompleteP; Bordelon et al. 2024, Dey et al. 2025): every branch output times
(L / depth_base_layers)^(-depth_alpha); alpha 0.5 is depth-muP, 1.0 CompleteP. With `depth_hparams`, CompleteP's
optimizer rules too: m = L / depth_base_layers, the learning rate of every parameter inside the blocks
x m^(alpha - 1), Adam's eps x m^(-alpha)."""

from __future__ import annotations

from typing import Any

from cod_train.model.zoo import Residual, axis, placement_names, register_residual


def branch_scale(config: Any) -> float:
    return float((config.num_hidden_layers / config.depth_base_layers) ** -config.depth_alpha)


@register_residual
class DepthScaled(Residual):
    name = "depth_scaled"
    keys = ("depth_alpha", "depth_base_layers", "depth_hparams")
    label_keys = ("depth_alpha", "depth_hparams")
    summary = "every branch scaled by (L / L_base)^(-alpha) (depth-muP 0.5, CompleteP 1.0)"
    equations = "x (+) f = x + (L / L_base)^(-alpha) * f"
    paper = "Dey et al. 2025, arXiv 2505.01618"
    foldable = True

    def label(self, axes: Any) -> str:
        if axis(axes, "depth_alpha") == 1.0 and axis(axes, "depth_hparams"):
            return "completep"  # the preset's name: the paper's parametrization, rules included
        return f"depth{axis(axes, 'depth_alpha'):g}" + ("_hp" if axis(axes, "depth_hparams") else "")

    def problems(self, axes: Any) -> list[str]:
        problems = []
        if axis(axes, "norm_type") == "deepnorm":
            problems.append("residual=depth_scaled does not combine with norm_type=deepnorm (both rescale the "
                            "residual stream by depth: DeepNorm up-weights x by (2L)^(1/4)); depth_scaled combines "
                            "with every other placement: " + ", ".join(t for t in placement_names() if t != "deepnorm"))
        if axis(axes, "depth_hparams") and axis(axes, "scaled_init"):
            problems.append("depth_hparams=true keeps the init independent of depth (CompleteP), so scaled_init=true "
                            "does not combine with it")
        return problems

    def key_problems(self, axes: Any) -> list[str]:
        problems = []
        if axis(axes, "depth_alpha") < 0:
            problems.append(f"depth_alpha must be >= 0 (0.5 = depth-muP, 1.0 = CompleteP), got {axis(axes, 'depth_alpha')}")
        if axis(axes, "depth_base_layers") < 1:
            problems.append(f"depth_base_layers must be >= 1, got {axis(axes, 'depth_base_layers')}")
        if axis(axes, "depth_hparams") and axis(axes, "residual") != self.name:
            problems.append("depth_hparams=true (the CompleteP learning-rate / Adam-epsilon rules) belongs to "
                            "residual=depth_scaled; set residual=depth_scaled or depth_hparams=false")
        return problems

    def card_axes(self, axes: Any) -> dict[str, Any]:
        return {"depth_alpha": axis(axes, "depth_alpha"), "depth_base_layers": axis(axes, "depth_base_layers")}

    def build_layer(self, block: Any, config: Any) -> None:
        block.branch_scale = branch_scale(config)  # a plain float: `to_empty()` would wipe a buffer

    def branch(self, b: Any, f: Any, site: str) -> Any:
        return f * b.branch_scale if b.branch_scale != 1.0 else f

    def branch_factor(self, state: dict[str, Any], prefix: str, site: str, config: Any) -> Any:
        return branch_scale(config)

    def optimizer_scales(self, config: Any) -> tuple[float, float]:
        if not config.depth_hparams:
            return 1.0, 1.0
        m = config.num_hidden_layers / config.depth_base_layers
        return m ** (config.depth_alpha - 1.0), m ** -config.depth_alpha
