"""``train.precision=bf16-mixed`` is one numerics on every engine (docs/design.md "Mixed precision"): an fp32
residual stream (the embedding output and every decoder block's input and output), bf16 matmuls, gradients reduced
in fp32. 2 processes (gloo, CPU), 4 micro-batches per step; before the fix FSDP2 and DeepSpeed carried a bf16
stream and DeepSpeed reduced its gradients in bf16."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.processes import torchrun
from tests.helpers.run_dirs import losses

DRIVER = str(Path(__file__).with_name("numerics_driver.py"))
pytestmark = pytest.mark.slow

ENGINES = {
    "ddp": "distributed.engine=ddp",
    "fsdp": "distributed.engine=fsdp train.diag_every=1",  # the diagnostics' forward runs under autocast too
    "hsdp": "distributed.engine=fsdp distributed.hsdp_replicas=2",
    "zero1": "distributed.engine=deepspeed distributed.zero_stage=1",
    "zero2": "distributed.engine=deepspeed distributed.zero_stage=2",
    "zero3": "distributed.engine=deepspeed distributed.zero_stage=3 train.diag_every=1",
}


def test_bf16_mixed_has_an_fp32_residual_stream_and_fp32_gradient_reductions_on_every_engine(tmp_path):
    base = "train.max_steps=2 train.ckpt_every=0 train.micro_batch_size=1"
    out = torchrun(DRIVER, *(f"run_dir={tmp_path / name} {spec} {base}" for name, spec in ENGINES.items()),
                   nproc=2, timeout=600).stdout
    rows = {row["run"]: row for row in
            (json.loads(ln[len("NUMERICS "):]) for ln in out.splitlines() if ln.startswith("NUMERICS "))}
    assert rows.keys() == ENGINES.keys()
    for name, row in rows.items():
        assert row["embed"] == row["block_in"] == row["block_out"] == ["float32"], (name, row)
        assert row["matmul"] == ["bfloat16"], (name, row)
        assert set(row["reduced"]) <= {"float32", "float64"}, (name, row)  # float64: the loop's host counters
        # every gradient went through an fp32 reduction at least once per step (ZeRO-2/3: once per micro-batch)
        assert row["reduced"]["float32"] >= row["steps"] * row["params"], (name, row)
    want = losses(tmp_path / "ddp")
    for name in ENGINES:  # the same numerics, the same losses: measured equal to DDP's on ZeRO-1/2/3, 2.7e-6 off
        got = losses(tmp_path / name)  # on FSDP2 (its norm weights are gathered in bf16); before: 1.8e-5, 2.4e-5
        assert all(abs(got[s] - want[s]) <= 1e-5 * want[s] for s in want), (name, got, want)
