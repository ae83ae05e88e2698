"""train.optimizer=muon with 2 processes (gloo, CPU): DDP and FSDP2 (the Newton-Schulz step on gathered
matrices) give the single-process losses at every step, a scheme with 2-D non-Linear parameters (hyper-connection
matrices, AdamW's) included; an FSDP2 checkpoint (Muon momentum and AdamW moments through DCP) resumes with the
straight run's losses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.engine_run import run
from tests.helpers.processes import torchrun
from tests.helpers.run_dirs import losses

DRIVER = str(Path(__file__).with_name("tiny.py"))
RTOL = 1e-4
MUON = "train.optimizer=muon train.weight_decay=0.1"
SCHEMES = {"pre_ln": "", "hc": "model.residual=hc"}
pytestmark = pytest.mark.slow


def assert_same_losses(got: dict[int, float], want: dict[int, float], steps, what: str) -> None:
    for step in steps:
        assert abs(got[step] - want[step]) <= RTOL * abs(want[step]), (what, step, got, want)


def test_muon_single_equals_ddp_and_fsdp2_and_fsdp2_resumes_exactly(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, scheme in SCHEMES.items():
            run(f"run_dir={tmp_path / name}", *MUON.split(), *scheme.split())
    finally:
        torch.set_num_threads(threads)
    engines = {"ddp": "distributed.engine=ddp", "fsdp": "distributed.engine=fsdp"}
    runs = {f"{name}-{eng}": f"{MUON} {scheme} {spec}" for name, scheme in SCHEMES.items()
            for eng, spec in engines.items()}
    runs["pre_ln-fsdp-resumed"] = (f"{runs['pre_ln-fsdp']} "
                                   f"resume={tmp_path / 'pre_ln-fsdp' / 'checkpoints' / 'step_0000003'}")
    torchrun(DRIVER, *(f"run_dir={tmp_path / name} {spec}" for name, spec in runs.items()), nproc=2, timeout=600)
    for name in SCHEMES:
        want = losses(tmp_path / name)
        assert want[6] < want[1]  # it trains
        for eng in engines:
            assert_same_losses(losses(tmp_path / f"{name}-{eng}"), want, range(1, 7), f"{name}-{eng}")
    resumed = losses(tmp_path / "pre_ln-fsdp-resumed")
    assert sorted(resumed) == [4, 5, 6]
    assert_same_losses(resumed, losses(tmp_path / "pre_ln"), range(4, 7), "fsdp resumed")
