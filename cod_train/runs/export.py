"""The body of ``cod-export`` (usage: ``cod_train/cli/export.py``): a training checkpoint -> an HF directory."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cod_train.config import ConfigError

log = logging.getLogger("cod_train")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ExportConfig:
    checkpoint: str | None = None
    out: str | None = None  # default: run_dir/hf
    run_dir: str | None = None
    dtype: str = "auto"  # auto = as trained


def output_dir(cfg: ExportConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    if cfg.run_dir:
        return Path(cfg.run_dir) / "hf"
    raise ConfigError("give out=DIR (or run_dir=DIR to write DIR/hf)")


def run_export(cfg: ExportConfig) -> Path:
    import torch

    from cod_train.engine.export import export_checkpoint

    if not cfg.checkpoint:
        raise ConfigError("checkpoint=PATH is required (a checkpoint directory or a run directory)")
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {cfg.dtype!r}")
    dtype = None if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
    out = export_checkpoint(cfg.checkpoint, output_dir(cfg), dtype=dtype)
    print(f"exported {cfg.checkpoint} -> {out}", flush=True)
    return out


def export_command(cfg: ExportConfig) -> int:
    run_export(cfg)
    return 0
