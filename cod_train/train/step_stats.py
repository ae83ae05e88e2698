"""What the loop learns at each step, kept on the device until a logging step reads it.

Reading a device value on the host (``.item()``, ``float()``, ``bool()``) blocks until every kernel queued so
far has run, so the host can no longer run ahead and queue the next step. The loss, the gradient norm and
the non-finite-step counters therefore stay on the device and are read all at once, in one transfer, on
logging steps (and before a checkpoint, whose metadata holds the counters).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StatsReading:
    loss: float
    grad_norm: float | None  # None where the engine reports none (DeepSpeed without a norm) or the step was skipped
    skipped: bool  # the last step was skipped (non-finite loss or gradient norm)
    nonfinite_total: int
    nonfinite_in_a_row: int
    longest_nonfinite_run: int  # the longest run of skipped steps since the previous reading


class StepStats:
    def __init__(self, device: torch.device, nonfinite_total: int = 0, nonfinite_in_a_row: int = 0) -> None:
        def scalar(value: float) -> torch.Tensor:
            return torch.tensor(float(value), device=device)

        self.loss, self.grad_norm, self.skipped = scalar(0.0), scalar(float("nan")), scalar(0.0)
        self.total, self.in_a_row = scalar(nonfinite_total), scalar(nonfinite_in_a_row)
        self.longest = self.in_a_row.clone()

    def update(self, loss: torch.Tensor, grad_norm: torch.Tensor | None, skip: torch.Tensor) -> None:
        """Record one step (device ops only). ``skip`` is the step's 0-d bool "not applied" tensor."""
        skipped = skip.to(self.total.dtype)
        self.loss = loss.detach().to(self.total.dtype)
        self.grad_norm = (grad_norm.detach().to(self.total) if grad_norm is not None
                          else torch.full_like(self.total, float("nan")))
        self.skipped = skipped
        self.total = self.total + skipped
        self.in_a_row = (self.in_a_row + 1) * skipped
        self.longest = torch.maximum(self.longest, self.in_a_row)

    def read(self) -> StatsReading:
        """The values on the host (one device-to-host transfer); starts a new window for the longest run."""
        loss, norm, skipped, total, in_a_row, longest = torch.stack(
            [self.loss, self.grad_norm, self.skipped, self.total, self.in_a_row, self.longest]).tolist()
        self.longest = self.in_a_row.clone()
        has_norm = not (skipped or norm != norm)  # norm != norm: NaN, "no norm reported"
        return StatsReading(loss=loss, grad_norm=norm if has_norm else None, skipped=bool(skipped),
                            nonfinite_total=int(total), nonfinite_in_a_row=int(in_a_row),
                            longest_nonfinite_run=int(longest))
