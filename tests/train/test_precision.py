"""Precision modes and activation checkpointing on the single engine (CPU)."""

from __future__ import annotations

import math

import pytest

from tests.conftest import losses
from tests.engine.tiny import run


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-pure"])
def test_bf16_modes_train(tmp_path, precision):
    run(f"run_dir={tmp_path / 'fp32'}", "train.max_steps=4", "train.ckpt_every=0")
    run(f"run_dir={tmp_path / 'bf16'}", "train.max_steps=4", "train.ckpt_every=0", f"train.precision={precision}")
    ref, got = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert all(math.isfinite(v) for v in got.values())
    assert all(abs(got[s] - ref[s]) < 0.05 * ref[s] for s in ref)


def test_activation_checkpointing_gives_the_same_losses(tmp_path):
    run(f"run_dir={tmp_path / 'plain'}", "train.max_steps=3", "train.ckpt_every=0")
    run(f"run_dir={tmp_path / 'ac'}", "train.max_steps=3", "train.ckpt_every=0",
        "distributed.activation_checkpointing=full")
    run(f"run_dir={tmp_path / 'sel'}", "train.max_steps=3", "train.ckpt_every=0",
        "distributed.activation_checkpointing=selective")
    ref = losses(tmp_path / "plain")
    for name in ("ac", "sel"):
        got = losses(tmp_path / name)
        assert all(abs(got[s] - ref[s]) <= 1e-6 * ref[s] for s in ref), name
