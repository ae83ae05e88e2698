"""The body of ``cod-export`` (usage: ``cod_train/cli/export.py``): a training checkpoint -> an HF directory
that loads without cod-train (``format=auto``), optionally with a GGUF file, uploaded with ``push_to_hub=``."""

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
    format: str = "auto"  # auto | llama | qwen3 | olmo2 | remote_code | cod_llama | gguf (engine/export.py)
    gguf_type: str = "f16"  # format=gguf: f32 | f16 | q8_0
    push_to_hub: str | None = None  # a Hub repo id (org/name): upload the export there
    private: bool = False  # push_to_hub: create the repo private


def output_dir(cfg: ExportConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    if cfg.run_dir:
        return Path(cfg.run_dir) / "hf"
    raise ConfigError("give out=DIR (or run_dir=DIR to write DIR/hf)")


def _check(cfg: ExportConfig) -> None:
    from cod_train.engine.export import FORMATS, GGUF_TYPES

    if not cfg.checkpoint:
        raise ConfigError("checkpoint=PATH is required (a checkpoint directory or a run directory)")
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {cfg.dtype!r}")
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r} is unknown; possible: {', '.join(FORMATS)}")
    if cfg.gguf_type not in GGUF_TYPES:
        raise ConfigError(f"gguf_type={cfg.gguf_type!r} is unknown; possible: {', '.join(GGUF_TYPES)}")


def run_export(cfg: ExportConfig) -> Path:
    if cfg.push_to_hub:  # first, before torch is imported: offline or no token fails in about a second
        from cod_train.core.hub_upload import check_hub_access

        check_hub_access(cfg.push_to_hub)
    import torch

    from cod_train.engine.export import ExportOptions, export_checkpoint

    _check(cfg)
    out_dir = output_dir(cfg)
    dtype = None if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
    options = ExportOptions(gguf_type=cfg.gguf_type, repo_id=cfg.push_to_hub,
                            run_dir=Path(cfg.run_dir) if cfg.run_dir else None)
    assert cfg.checkpoint is not None  # _check
    out = export_checkpoint(cfg.checkpoint, out_dir, dtype=dtype, fmt=cfg.format, options=options)
    print(f"exported {cfg.checkpoint} -> {out}", flush=True)
    if cfg.push_to_hub:
        from cod_train.core.hub_upload import upload

        url = upload(out, cfg.push_to_hub, private=cfg.private)
        print(f"uploaded {out} -> {url}", flush=True)
    return out


def export_command(cfg: ExportConfig) -> int:
    run_export(cfg)
    return 0
