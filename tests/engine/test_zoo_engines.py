"""The depth zoo on every engine: a representative subset of schemes trained with 2 processes (gloo, CPU) under
DDP, FSDP2 (one with activation checkpointing) and DeepSpeed ZeRO-1/2/3 gives the single-process losses at every
step, and the learned scalars in metrics.jsonl (gathered from shards under FSDP2 / ZeRO-3) equal the single run's
(to a fraction of one Adam step)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine.zoo_driver import train_single_and_on_engines
from tests.helpers.run_dirs import losses, metric_rows

RTOL = 1e-4
pytestmark = pytest.mark.slow

# diagnostics every 2 steps: their forward must not change the following steps (under FSDP2 it did, until
# Engine.reshard; tests/engine/test_engines.py::test_fsdp_diagnostics_do_not_change_training)
BASE = "train.max_steps=4 train.ckpt_every=0 train.diag_every=2"
SCHEMES = {  # every placement family, norm function and residual scheme at least once
    "hybrid_star_dyt_gpas": "model.norm_type=hybrid_ln_star model.norm_fn=dyt model.residual=gpas",
    "olmo2_layerscale": "model.norm_type=reordered_ln model.qk_norm=full model.residual=layerscale",
    "mixln_derf_rezero": "model.norm_type=mix_ln model.mix_ln_ratio=0.5 model.norm_fn=derf model.residual=rezero "
                         "model.qk_norm=head",
    "lns_completep_ln": "model.norm_type=lns model.residual=depth_scaled model.depth_hparams=true "
                        "model.norm_fn=layernorm model.norm_bias=true model.embed_scale=true",
    "block_attnres": "model.residual=block_attnres model.attnres_blocks=2",  # a history stream (ResidualHistory)
    "lns_attnres": "model.norm_type=lns model.residual=attnres",
    "ngpt": "model.norm_type=ngpt train.warmup_steps=0",  # weights renormalized after each step (a callback)
    # a history stream (ResidualHistory) and a per-forward state beside it (the first layer's values)
    "denseformer2x1_vres": "model.residual=denseformer model.denseformer_dilation=2 model.value_residual=true",
}
ENGINES = {  # scheme -> engines it runs on (2 processes)
    "hybrid_star_dyt_gpas": {"ddp": "distributed.engine=ddp",
                             "fsdp_ac": "distributed.engine=fsdp distributed.activation_checkpointing=full",
                             "zero3": "distributed.engine=deepspeed distributed.zero_stage=3"},
    "olmo2_layerscale": {"fsdp": "distributed.engine=fsdp", "zero3": "distributed.engine=deepspeed distributed.zero_stage=3"},
    "mixln_derf_rezero": {"ddp": "distributed.engine=ddp", "zero1": "distributed.engine=deepspeed distributed.zero_stage=1"},
    "lns_completep_ln": {"fsdp": "distributed.engine=fsdp", "zero2": "distributed.engine=deepspeed distributed.zero_stage=2"},
    "block_attnres": {"ddp": "distributed.engine=ddp",
                      "fsdp_ac": "distributed.engine=fsdp distributed.activation_checkpointing=full",
                      "zero3": "distributed.engine=deepspeed distributed.zero_stage=3"},
    "lns_attnres": {"fsdp_ac": "distributed.engine=fsdp distributed.activation_checkpointing=full"},
    # DeepSpeed is refused for nGPT (its fp32 master copies would undo the renormalization)
    "ngpt": {"ddp": "distributed.engine=ddp",
             "fsdp_ac": "distributed.engine=fsdp distributed.activation_checkpointing=full"},
    "denseformer2x1_vres": {"ddp": "distributed.engine=ddp",
                            "fsdp_ac": "distributed.engine=fsdp distributed.activation_checkpointing=full",
                            "zero3": "distributed.engine=deepspeed distributed.zero_stage=3"},
}


def scalar_rows(run_dir: Path) -> dict[int, dict]:
    return {row["step"]: {k: v for k, v in row.items() if k.startswith("diag/") and "layer_" not in k}
            for row in metric_rows(run_dir) if any(k.startswith("diag/") for k in row)}


def test_zoo_schemes_give_the_single_process_losses_and_scalars_on_every_engine(tmp_path):
    train_single_and_on_engines(tmp_path, BASE, SCHEMES, ENGINES)
    for name, engines in ENGINES.items():
        want, want_scalars = losses(tmp_path / name), scalar_rows(tmp_path / name)
        assert want_scalars and all(want_scalars.values()), name  # each scheme has learned scalars
        for eng in engines:
            got = losses(tmp_path / f"{name}-{eng}")
            for step in range(1, 5):
                assert abs(got[step] - want[step]) <= RTOL * abs(want[step]), (name, eng, step, got, want)
            got_scalars = scalar_rows(tmp_path / f"{name}-{eng}")
            assert got_scalars.keys() == want_scalars.keys(), (name, eng)
            for step, row in want_scalars.items():
                assert got_scalars[step].keys() == row.keys(), (name, eng)
                for key, value in row.items():
                    other = got_scalars[step][key]
                    pairs = zip(value, other, strict=True) if isinstance(value, list) else [(value, other)]
                    for a, b in pairs:
                        # Adam moves a scalar by up to lr = 3e-3 a step: engines may differ by a fraction of that
                        assert (a is None and b is None) or abs(a - b) <= 1e-3, \
                            (name, eng, key, value, other)
