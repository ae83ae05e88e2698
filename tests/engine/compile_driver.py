"""Run as a script: the tiny run of ``tiny.py`` (arguments: one dotlist) with ``distributed.compile=true`` and the
in-training diagnostics, counting what torch.compile builds. The blocks compile with a counting backend (dynamo
traces exactly as for inductor; no kernels are generated). Prints one line:
``GRAPHS {"before": [graphs before each diagnostics call], "after": [... after it], "diag_keys": [...]}``."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch._dynamo.testing import CompileCounter

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cod_train.eval.depth_train import training_diagnostics  # noqa: E402
from tests.helpers.engine_run import run  # noqa: E402

COUNTER = CompileCounter()
nn.Module.compile = functools.partialmethod(nn.Module.compile, backend=COUNTER)  # type: ignore[method-assign]


class CountingDiagnostics:
    def __init__(self) -> None:
        self.before: list[int] = []
        self.after: list[int] = []
        self.keys: set[str] = set()

    def __call__(self, model, step, batch):
        self.before.append(COUNTER.frame_count)
        row = training_diagnostics(model, batch)
        self.after.append(COUNTER.frame_count)
        self.keys |= set(row)
        return row


if __name__ == "__main__":
    torch.set_num_threads(1)
    diag = CountingDiagnostics()
    run(*sys.argv[1].split(), "distributed.compile=true", diagnostics_fn=diag)
    print("GRAPHS " + json.dumps({"before": diag.before, "after": diag.after, "diag_keys": sorted(diag.keys)}),
          flush=True)
