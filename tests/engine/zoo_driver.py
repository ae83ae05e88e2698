"""The engine driver of tests/engine/tiny.py with the in-training diagnostics on (learned scalars included):
each argument is one run's space-separated dotlist."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cod_train.eval.depth_train import training_diagnostics  # noqa: E402
from tests.engine.tiny import run  # noqa: E402


def diagnostics(model, step, batch):
    return training_diagnostics(model, batch)


if __name__ == "__main__":
    torch.set_num_threads(1)
    for spec in sys.argv[1:]:
        run(*spec.split(), diagnostics_fn=diagnostics)
    from cod_train.engine.distributed import destroy_distributed

    destroy_distributed()
