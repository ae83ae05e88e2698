"""The depth-utilization summary: one or two numbers per model from the per-layer curves (docs/depth.md).

- ``depth_utilization``: the fraction of the measured layers whose removal raises the held-out perplexity by
  more than ``PRUNE_THRESHOLD_PCT`` percent (the pruning curve). 1.0 = every layer matters; a model whose deep
  layers act as the identity scores about the fraction of its layers that do work.
  ``depth_utilization_range``: the same count taken with each layer's bootstrap 95% interval (lower end above
  the threshold: surely costly; upper end above it: possibly costly).
- ``settling_depth``: the logit-lens settling layer divided by L, where the settling layer is the first layer
  from which the lens' top-1 agreement with the final prediction stays >= 50%. Near 1.0 = the prediction is
  still being formed in the last layers (the depth is used); small = the last layers only refine it.

Pure Python (no torch): cod-report computes the same summary from the analysis files and from the in-training
rows of ``metrics.jsonl``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PRUNE_THRESHOLD_PCT = 1.0
SETTLE_TOP1 = 0.5


def settling_layer(top1: Sequence[float | None], threshold: float = SETTLE_TOP1) -> int:
    """The first layer l (1..L) such that the lens top-1 agreement is >= ``threshold`` at l and every later
    layer (``top1[0]`` is the embedding; ``top1[L]`` is 1 by definition, so the answer is at most L)."""
    n_layers = len(top1) - 1
    settle = n_layers
    for layer in range(n_layers, 0, -1):
        value = top1[layer]
        if value is None or value < threshold:
            break
        settle = layer
    return settle


def _fraction(values: Sequence[float | None], threshold: float) -> float | None:
    usable = [v for v in values if v is not None]
    return sum(v > threshold for v in usable) / len(usable) if usable else None


def depth_summary(
    pruning: dict[str, Any] | None, lens: dict[str, Any] | None, threshold: float = PRUNE_THRESHOLD_PCT
) -> dict[str, Any]:
    """``{"depth_utilization", "depth_utilization_range", "settling_depth", "settling_layer", ...}`` from one
    model's ``layer_pruning`` and ``logit_lens`` entries (either may be None; its fields are then None)."""
    out: dict[str, Any] = {"threshold_pct": threshold, "depth_utilization": None,
                           "depth_utilization_range": None, "settling_depth": None, "settling_layer": None}  # fmt: skip
    if pruning and pruning.get("ppl") and pruning.get("base_ppl"):
        pct = pruning.get("delta_ppl_pct") or [
            100.0 * (p / pruning["base_ppl"] - 1.0) for p in pruning["ppl"]
        ]
        out["depth_utilization"] = _fraction(pct, threshold)
        out["layers_measured"] = len(pct)
        if pruning.get("delta_ppl_pct_lo") and pruning.get("delta_ppl_pct_hi"):
            out["depth_utilization_range"] = [
                _fraction(pruning["delta_ppl_pct_lo"], threshold),
                _fraction(pruning["delta_ppl_pct_hi"], threshold),
            ]
    if lens and lens.get("top1"):
        layer = settling_layer(lens["top1"])
        out["settling_layer"], out["settling_depth"] = layer, layer / (len(lens["top1"]) - 1)
    return out
