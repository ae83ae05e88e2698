"""The runs cod-plan's tests validate (tests/runs/test_plan.py and its torchrun driver plan_driver.py)."""

from __future__ import annotations

from hydra import compose, initialize_config_dir

from cod_train.config import PretrainConfig, to_typed
from cod_train.runs.app import config_dir

PRESETS = {"tiny": "llama_tiny", "60m": "llama_60m"}
# 4 micro-batches of 2 sequences of 128 tokens per step on one process, 2 on each of two
SMALL_RUN = ["data.seq_len=128", "train.global_batch_size=8", "train.micro_batch_size=2", "train.grad_clip=1.0"]


def plan_config(model: str, engine: str, *extra: str) -> PretrainConfig:
    """The runs tests/runs/test_plan.py validates: ``model`` (tiny | 60m) on ``engine`` (single | ddp | fsdp),
    fp32 on the CPU."""
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        raw = compose("pretrain", overrides=[f"model={PRESETS[model]}", f"distributed={engine}", *SMALL_RUN,
                                             *extra])
    return to_typed(raw, PretrainConfig)
