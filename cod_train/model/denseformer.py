"""DenseFormer's depth-weighted averages (`residual=denseformer`; the scheme is `residuals/denseformer.py`).

The stream is a `ResidualHistory` (`cod_train.model.history`, shared with Attention Residuals): `outputs[i]` is
the block output B_i at depth i (B_0 the embedding output), `scales[i]` what DenseFormer caches there: the stream
X_i after depth i's average, the hidden state the next layer reads. A layer left out by the layer removal
diagnostics leaves None at its depth: the later averages read the same depths minus that one, and the next layer
reads the stream the removed one would have read.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from transformers import initialization as init

from cod_train.model.history import ResidualHistory, weighted_sum


def dwa_sources(depth: int, dilation: int) -> list[int]:
    """The depths the average after block `depth` reads: j <= depth with (depth - j) divisible by `dilation`."""
    return list(range(depth % dilation, depth + 1, dilation))


def has_dwa(depth: int, period: int) -> bool:
    """A depth-weighted average follows block `depth` every `period` blocks."""
    return depth % period == 0


class DepthWeightedAverage(nn.Module):
    """X_i = sum_j alpha_ij B_j over the depths j in `sources` (`dwa_sources`): one learned weight per source
    (`weight`), initialized to the identity (1 on the block's own output, 0 on the earlier ones)."""

    def __init__(self, sources: list[int]) -> None:
        super().__init__()
        self.sources = sources  # a plain list: `to_empty()` keeps it
        self.weight = nn.Parameter(torch.empty(len(sources)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.copy_(self.weight, torch.eye(len(self.sources), device=self.weight.device)[-1])

    def forward(self, outputs: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
        weights, present = [], []
        for k, j in enumerate(self.sources):
            h = outputs[j]
            if h is not None:  # None: a layer left out
                weights.append(self.weight[k])
                present.append(h)
        return weighted_sum(weights, present)


def current(stream: ResidualHistory) -> torch.Tensor:
    """The stream after the last depth written: what the next layer (and the final norm) reads."""
    return next(s for s in reversed(stream.scales) if s is not None)


def open_history(x: torch.Tensor) -> ResidualHistory:
    return ResidualHistory((x,), (x,))


def dense_block(b: Any, stream: ResidualHistory, attn: Any) -> ResidualHistory:
    """Block b on the current stream, its output written at its depth, then its depth-weighted average."""
    y = b.placement_scheme.forward(b, current(stream), attn)
    gap = (None,) * (b.depth - len(stream.outputs))
    outputs = stream.outputs + gap + (y,)
    dwa = getattr(b, "denseformer_dwa", None)
    x = dwa(outputs) if dwa is not None else y
    return ResidualHistory(outputs, stream.scales + gap + (x,))


def dwa_weights(backbone: nn.Module, value: Any = None) -> list[list[float | None] | None]:
    """Per layer, its average's weight on each depth 0..l (None where not a source); None for a layer without
    an average. `value` gathers a sharded parameter (a collective: every rank calls it, layer by layer)."""
    rows: list[list[float | None] | None] = []
    for layer in cast(nn.ModuleList, backbone.layers):
        dwa = getattr(layer, "denseformer_dwa", None)
        if dwa is None:
            rows.append(None)
            continue
        weight = (value(dwa.weight) if value is not None else dwa.weight.detach()).float().tolist()
        row: list[float | None] = [None] * (dwa.sources[-1] + 1)  # its last source is its own depth
        for k, j in enumerate(dwa.sources):
            row[j] = weight[k]
        rows.append(row)
    return rows
