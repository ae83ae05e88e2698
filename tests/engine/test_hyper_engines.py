"""Hyper-connections on every engine: HC (dynamic) and mHC trained with 2 processes (gloo, CPU) under DDP, FSDP2
(one with activation checkpointing) and DeepSpeed ZeRO-3 give the single-process losses at every step, and a
single-process run stopped after 2 steps and resumed gives the uninterrupted run's losses exactly. The connection
weights in the diag rows (gathered from FSDP2 / ZeRO-3 shards; token means from the diagnostic forward) equal the
single-process run's."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine.zoo_driver import train_single_and_on_engines
from tests.helpers.engine_run import run
from tests.helpers.run_dirs import losses, metric_rows

RTOL = 1e-4
pytestmark = pytest.mark.slow

BASE = "train.max_steps=4 train.ckpt_every=0 train.diag_every=2"
SCHEMES = {
    "dhc": "model.residual=hc model.hc_dynamic=true model.hc_streams=2",
    "lns_mhc": "model.norm_type=lns model.residual=mhc model.hc_streams=4",
}
ENGINES = {
    "dhc": {"ddp": "distributed.engine=ddp",
            "fsdp_ac": "distributed.engine=fsdp distributed.activation_checkpointing=full",
            "zero3": "distributed.engine=deepspeed distributed.zero_stage=3"},
    "lns_mhc": {"fsdp": "distributed.engine=fsdp", "zero3": "distributed.engine=deepspeed distributed.zero_stage=3"},
}


def hc_rows(run_dir: Path) -> dict[int, dict]:
    return {row["step"]: {k: v for k, v in row.items() if k.startswith(("diag/attn_hc.", "diag/mlp_hc."))}
            for row in metric_rows(run_dir) if any(k.startswith("diag/attn_hc.") for k in row)}


def test_hyper_connections_give_the_single_process_losses_on_every_engine(tmp_path):
    train_single_and_on_engines(tmp_path, BASE, SCHEMES, ENGINES)
    for name, engines in ENGINES.items():
        want = losses(tmp_path / name)
        assert sorted(want) == [1, 2, 3, 4], name
        for eng in engines:
            got = losses(tmp_path / f"{name}-{eng}")
            for step in range(1, 5):
                assert abs(got[step] - want[step]) <= RTOL * abs(want[step]), (name, eng, step, got, want)
            want_hc, got_hc = hc_rows(tmp_path / name), hc_rows(tmp_path / f"{name}-{eng}")
            assert want_hc and got_hc.keys() == want_hc.keys(), (name, eng)
            for step, row in want_hc.items():
                assert any(k.endswith(".tokens") for k in row) and got_hc[step].keys() == row.keys(), (name, eng)
                for key, values in row.items():  # measured within 3.1e-6 on every engine (fp32 reduction order)
                    assert max(abs(a - b) for a, b in zip(values, got_hc[step][key], strict=True)) <= 1e-5, \
                        (name, eng, key)


def test_mhc_resume_is_exact(tmp_path):
    scheme = SCHEMES["lns_mhc"].split()
    run(f"run_dir={tmp_path / 'full'}", "train.max_steps=4", "train.ckpt_every=2", *scheme)
    run(f"run_dir={tmp_path / 'cut'}", "train.max_steps=2", "train.ckpt_every=2", *scheme)
    run(f"run_dir={tmp_path / 'cut'}", "train.max_steps=4", "train.ckpt_every=2", *scheme)
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
