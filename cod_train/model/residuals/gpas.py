"""GPAS, Gradient-Preserving Activation Scaling (Chen et al. 2025): after the residual sum z = x + f,
z - SiLU(g) * stopgrad(z): the forward scales the stream down, the backward keeps its gradient. One gate g per
layer (`gpas_gate`), init 0, shared by both sub-layers. In post-norm layers the gate scales the skip before the
add, N(a * (x - SiLU(g) * stopgrad(x)) + f), as in the authors' code."""

from __future__ import annotations

from typing import Any

from cod_train.model.zoo import Residual, register_residual


@register_residual
class GPAS(Residual):
    name = "gpas"
    summary = "Gradient-Preserving Activation Scaling: a learned, gradient-free down-scaling of the stream"
    equations = "z = x + f,  x (+) f = z - SiLU(g) * stopgrad(z),  one gate g per layer, init 0"
    paper = "Chen et al. 2025, arXiv 2506.22049"
    scalar_params = ("gpas_gate.weight",)

    def build_layer(self, block: Any, config: Any) -> None:
        from cod_train.model.norms import Gain

        block.gpas_gate = Gain(1, 0.0)

    def scale(self, b: Any, z: Any) -> Any:
        from torch.nn.functional import silu

        return z - silu(b.gpas_gate.weight) * z.detach()

    def join(self, b: Any, x: Any, f: Any, site: str) -> Any:
        return self.scale(b, x + f)

    def skip(self, b: Any, x: Any) -> Any:
        return self.scale(b, x)
