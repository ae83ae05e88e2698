"""A placement and a residual scheme defined outside cod_train, registered as a plugin
(``COD_TRAIN_PLUGINS=tests.helpers.toy_schemes``): the registry's acceptance test (tests/cli/test_scheme_plugin.py)
trains, resumes, analyzes, exports and reports them with no edit to cod_train.

- ``toy_parallel``: the parallel block (GPT-J, PaLM): attention and MLP read the same normalized input,
  y = x (+) Attn(N1(x)) (+) MLP(N2(x)).
- ``toy_gate``: x (+) f = x + 2 sigmoid(g) f with one learnable gate g per layer and branch (`toy_gate`, a module
  of its own with its own `reset_parameters`), init 0 (so the plain sum at init); cod-analyze draws its gates
  (`figures`: analysis/toy_gates.png, by :func:`plot_gates`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cod_train.model.zoo import Placement, Residual, register_placement, register_residual


class ToyGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2))  # [attn, mlp]

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.zero_()

    def factor(self, site: str) -> torch.Tensor:
        return 2 * torch.sigmoid(self.weight[0 if site == "attn" else 1])


@register_placement
class ToyParallel(Placement):
    name = "toy_parallel"
    summary = "the parallel block: attention and MLP read the same normalized stream"
    equations = "y = x (+) Attn(N1(x)) (+) MLP(N2(x))"
    pre_norm = True
    mid_stream = "input_layernorm"  # both sub-layers read the layer's input: no stream between them

    def forward(self, b: Any, x: Any, attn: Any) -> Any:
        a, m = attn(b.input_layernorm(x)), b.mlp(b.post_attention_layernorm(x))
        return b.join(b.join(x, a, "attn"), m, "mlp")


@register_residual
class ToyGateResidual(Residual):
    name = "toy_gate"
    summary = "a learned sigmoid gate per branch"
    equations = "x (+) f = x + 2 sigmoid(g) f"
    scalar_params = ("toy_gate.weight",)
    figures = {"toy_gates": "tests.helpers.toy_schemes:plot_gates"}

    def build_layer(self, block: Any, config: Any) -> None:
        block.toy_gate = ToyGate()

    def branch(self, b: Any, f: Any, site: str) -> Any:
        return b.toy_gate.factor(site) * f


def plot_gates(entries: list[dict[str, Any]], path: Any) -> Any:
    """Each model's toy gates per layer (its learned scalars), one line per model; None without toy_gate models."""
    usable = [e for e in entries if "toy_gate" in e.get("learned_scalars", {})]
    if not usable:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for entry in usable:
        gates = entry["learned_scalars"]["toy_gate"]
        ax.plot(range(1, len(gates) + 1), gates, marker="o", label=entry["label"])
    ax.set(xlabel="layer", ylabel="gate g", title="toy_gate")
    ax.legend()
    fig.savefig(path)
    plt.close(fig)
    return path
