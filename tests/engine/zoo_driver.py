"""The engine driver of tests/engine/tiny.py with the in-training diagnostics on (learned scalars included):
each argument is one run's space-separated dotlist."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cod_train.eval.depth_train import training_diagnostics  # noqa: E402
from tests.helpers.engine_run import run  # noqa: E402


def diagnostics(model, step, batch):
    return training_diagnostics(model, batch)


def train_single_and_on_engines(tmp_path: Path, base: str, schemes: dict[str, str],
                                engines: dict[str, dict[str, str]]) -> None:
    """Each scheme trained in this process, the reference (``tmp_path/<scheme>``), then with 2 processes on each
    of its engines (``tmp_path/<scheme>-<engine>``), every run with the diagnostics on."""
    from tests.helpers.processes import torchrun

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, scheme in schemes.items():
            run(f"run_dir={tmp_path / name}", *base.split(), *scheme.split(), diagnostics_fn=diagnostics)
    finally:
        torch.set_num_threads(threads)
    runs = [f"run_dir={tmp_path / f'{name}-{eng}'} {base} {schemes[name]} {spec}"
            for name, specs in engines.items() for eng, spec in specs.items()]
    torchrun(__file__, *runs, nproc=2, timeout=600)


if __name__ == "__main__":
    torch.set_num_threads(1)
    for spec in sys.argv[1:]:
        run(*spec.split(), diagnostics_fn=diagnostics)
    from cod_train.engine.distributed import destroy_distributed

    destroy_distributed()
