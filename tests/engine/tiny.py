"""Run as a script (under torchrun or not): each argument is one run of tests.helpers.engine_run's tiny model, a
space-separated Hydra-style dotlist applied to its ``tiny_config`` (plus ``nan_steps=2,3``: NaN losses on those
steps; ``inf_grad_steps=2,3``: a finite loss with infinite gradients on those steps); runs execute one after the
other in the same process group. Environment: ``TINY_GATHER_LOG`` records ZeRO-3 gathers, ``TINY_ENOSPC`` fails
one rank's checkpoint writes, ``TINY_STEP_SLEEP`` slows each step.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.helpers.engine_run import run  # noqa: E402


def _fill_disk_on(rank: int, marker: str) -> None:
    """Make this process's checkpoint writes (core.io's CrcWriter: torch.save and the CRC'd files) fail with
    ENOSPC for paths containing ``marker`` when it is ``rank``."""
    import errno

    from cod_train.core.io import CrcWriter

    if int(os.environ.get("RANK", "0")) != rank:
        return
    real_write = CrcWriter.write

    def full_disk(self, data):
        if marker in str(self.path):
            err = OSError(errno.ENOSPC, "No space left on device")
            self._fail(err)
            raise err
        return real_write(self, data)

    CrcWriter.write = full_disk


def _record_gathers(path: str) -> None:
    import deepspeed

    real = deepspeed.zero.GatheredParameters
    rank = os.environ.get("RANK", "0")

    class Recorded(real):  # type: ignore[misc, valid-type]
        def __init__(self, params, *args, **kwargs):
            numel = sum(int(getattr(p, "ds_numel", p.numel())) for p in params)
            with open(f"{path}.{rank}", "a") as f:
                f.write(f"{numel}\n")
            super().__init__(params, *args, **kwargs)

    deepspeed.zero.GatheredParameters = Recorded


if __name__ == "__main__":
    torch.set_num_threads(1)
    if os.environ.get("TINY_GATHER_LOG"):  # record the size of every ZeRO-3 gather (per rank)
        _record_gathers(os.environ["TINY_GATHER_LOG"])
    if os.environ.get("TINY_ENOSPC"):  # "RANK:MARKER": a full disk on one rank (fault-injection tests)
        rank, marker = os.environ["TINY_ENOSPC"].split(":", 1)
        _fill_disk_on(int(rank), marker)
    for spec in sys.argv[1:]:
        result = run(*spec.split())
        print(f"RESULT {result.stopped} step={result.step}", flush=True)
        if result.stopped == "nonfinite":
            sys.exit(3)
    from cod_train.engine.distributed import destroy_distributed

    destroy_distributed()
