"""Precision modes and activation checkpointing on the single engine (CPU)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers.engine_run import run
from tests.helpers.run_dirs import losses


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


@pytest.mark.parametrize("tied", [False, True])
def test_exporting_a_bf16_pure_checkpoint_matches_the_runs_own_export(tmp_path, tied):
    """cod-export of a checkpoint gives the dtype and weights of the run's final export (bf16 for bf16-pure)."""
    from safetensors.torch import load_file

    from cod_train.engine.export import export_checkpoint

    run(f"run_dir={tmp_path}", "train.max_steps=2", "train.ckpt_every=2", "train.precision=bf16-pure",
        "train.export_hf=true", f"model.tie_word_embeddings={str(tied).lower()}")
    export_checkpoint(tmp_path / "checkpoints" / "step_0000002", tmp_path / "again")
    final = load_file(str(tmp_path / "hf" / "model.safetensors"))
    again = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert final.keys() == again.keys() and {t.dtype for t in again.values()} == {torch.bfloat16}
    assert all(torch.equal(final[k], again[k]) for k in final)
