"""The residual stream of a scheme whose layers read earlier layers' outputs (`Residual.layer_reads_history`):
the outputs themselves, in order, as references (never a stacked copy: autograd keeps each output once, O(L)
activations for L layers, not one [S, B, T, d] copy per reader).

`ResidualHistory` is what such a scheme's `open` makes from the embedding, what every layer reads and extends
(a new tuple each time: the recorded states of earlier layers stay valid), and what its `close` makes one hidden
state of. It is a NamedTuple, so torch.compile, FSDP2, DeepSpeed and activation checkpointing pass it through
like a tuple of tensors; the depth diagnostics (`cod_train.eval.depth_hooks`) pass an object with
`residual_stream` whole instead of taking its first item as "the hidden state".

`outputs[i]` is an output [B, T, d] or None (a slot nothing has been written to yet, e.g. a block of Block
AttnRes whose layers all were removed); `scales[i]` is whatever the scheme caches per output (AttnRes: the
inverse RMS of the output, [B, T, 1], so each output is normalized once, not once per reader), None where unused.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class ResidualHistory(NamedTuple):
    outputs: tuple[torch.Tensor | None, ...]
    scales: tuple[torch.Tensor | None, ...]

    @property
    def residual_stream(self) -> bool:
        """Marks a scheme's stream object that is not one tensor (see `cod_train.eval.depth_hooks.first_tensor`)."""
        return True

    def detach(self) -> ResidualHistory:
        return ResidualHistory(*(tuple(None if t is None else t.detach() for t in part) for part in self))

    def present(self) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """The outputs written so far and their cached scales, in order (None slots left out)."""
        keep = [i for i, t in enumerate(self.outputs) if t is not None]
        return [self.outputs[i] for i in keep], [self.scales[i] for i in keep]  # type: ignore[misc]

    def appended(self, output: torch.Tensor, scale: torch.Tensor | None = None) -> ResidualHistory:
        return ResidualHistory(self.outputs + (output,), self.scales + (scale,))

    def replaced(self, slot: int, output: torch.Tensor, scale: torch.Tensor | None = None) -> ResidualHistory:
        outputs, scales = list(self.outputs), list(self.scales)
        outputs[slot], scales[slot] = output, scale
        return ResidualHistory(tuple(outputs), tuple(scales))


def history_of(x: torch.Tensor, slots: int = 1) -> ResidualHistory:
    """The history at the first layer: the embedding output `x` in slot 0, then `slots - 1` empty slots."""
    return ResidualHistory((x,) + (None,) * (slots - 1), (None,) * slots)


def weighted_sum(weights: list[torch.Tensor], outputs: list[torch.Tensor]) -> torch.Tensor:
    """sum_i weights[i][..., None] * outputs[i] as a running sum: autograd keeps the references (and [B, T]
    weights), never a stacked [S, B, T, d] copy."""
    total = weights[0].unsqueeze(-1) * outputs[0]
    for w, h in zip(weights[1:], outputs[1:], strict=True):
        total = total + w.unsqueeze(-1) * h
    return total
