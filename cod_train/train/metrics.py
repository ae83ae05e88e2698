"""Throughput, MFU and memory, plus the sinks metrics go to: ``metrics.jsonl``, wandb and the progress bar."""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import secrets
import time
from pathlib import Path
from typing import Any, Literal, cast

import torch

from cod_train.config import LoggerConfig

log = logging.getLogger(__name__)
WandbMode = Literal["online", "offline", "disabled", "shared"]  # wandb.init's `mode`

# Dense peak FLOP/s per GPU (vendor datasheets, no sparsity). "fp32" = TF32 tensor cores when torch allows
# TF32 matmuls, else the plain FP32 rate (``fp32_simt``).
GPU_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "B200": {"bf16": 2.25e15, "tf32": 1.1e15, "fp32_simt": 80e12},
    "H200": {"bf16": 989e12, "tf32": 494.5e12, "fp32_simt": 67e12},
    "H100 PCIE": {"bf16": 756e12, "tf32": 378e12, "fp32_simt": 51e12},
    "H100 NVL": {"bf16": 835e12, "tf32": 417.5e12, "fp32_simt": 60e12},
    "H100": {"bf16": 989e12, "tf32": 494.5e12, "fp32_simt": 67e12},  # SXM
    "A100": {"bf16": 312e12, "tf32": 156e12, "fp32_simt": 19.5e12},
}


def gpu_peak_flops(device_name: str, precision: str) -> float | None:
    """Peak FLOP/s of the GPU called ``device_name`` for ``precision`` (None when unknown)."""
    upper = device_name.upper()
    for key, table in GPU_PEAK_FLOPS.items():  # ordered: specific names before "H100"
        if key in upper:
            if precision != "fp32":
                return table["bf16"]
            return table["tf32"] if torch.backends.cuda.matmul.allow_tf32 else table["fp32_simt"]
    return None


def measure_cpu_flops(dtype: torch.dtype = torch.float32, size: int = 512, seconds: float = 0.3) -> float:
    """Achieved FLOP/s of a square matmul on this CPU (used as its 'peak')."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        a @ b
        n += 1
    return 2 * size**3 * n / elapsed


def peak_flops(device: torch.device, precision: str, cpu_peak_flops: float = 0.0) -> float | None:
    if device.type == "cuda":
        return gpu_peak_flops(torch.cuda.get_device_name(device), precision)
    if cpu_peak_flops > 0:
        return cpu_peak_flops
    return measure_cpu_flops(torch.bfloat16 if precision == "bf16-pure" else torch.float32)


def mfu(flops_per_token: float, tokens_per_s: float, world_size: int, peak: float | None) -> float | None:
    """Model FLOPs utilization in [0, 1] (clamped: a measured CPU 'peak' can be beaten)."""
    if not peak or flops_per_token <= 0:
        return None
    return min(1.0, flops_per_token * tokens_per_s / (peak * world_size))


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def model_flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: the model's own count when it has one, else 6N + 12 L d T."""
    fn = getattr(model, "num_flops_per_token", None)
    if callable(fn):
        return float(fn(seq_len))
    cfg = getattr(model, "config", None)
    n = sum(p.numel() for p in model.parameters())
    if cfg is None:
        return 6.0 * n
    return 6.0 * n + 12.0 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def _clean(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


class JsonlWriter:
    """Appends one JSON object per line to ``run_dir/metrics.jsonl`` (flushed per row)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fh = open(path, "a", buffering=1)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (by a run that crashed later than its last checkpoint)."""
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except ValueError:  # a line cut by the crash
                continue
        with open(self.path, "w") as fh:  # our append-mode handle keeps writing at the new end
            fh.write("".join(f"{line}\n" for line in keep))

    def log(self, row: dict[str, Any]) -> None:
        self.fh.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")

    def close(self) -> None:
        self.fh.close()


def wandb_mode(cfg: LoggerConfig) -> str:
    """``auto`` = ``$WANDB_MODE`` if set, online with an API key, offline without one."""
    if cfg.mode != "auto":
        return cfg.mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "online" if "api.wandb.ai" in netrc.read_text() else "offline"
    except OSError:
        return "offline"


def flatten_for_wandb(row: dict[str, Any]) -> dict[str, float]:
    """Numbers as they are, lists of numbers (per-layer diagnostics) as ``key/L01``, ``key/L02``, ..."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key == "step" or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[key] = value
        elif isinstance(value, (list, tuple)):
            out.update({f"{key}/L{i + 1:02d}": v for i, v in enumerate(value) if isinstance(v, (int, float))})
    return out


class WandbSink:
    """A wandb run (resumed under the same id when the run directory is resumed)."""

    def __init__(self, cfg: LoggerConfig, run_dir: Path, config: dict[str, Any]):
        import wandb

        id_file = run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id)
        mode = wandb_mode(cfg)
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, group=cfg.group,
                              name=cfg.name or run_dir.name, tags=list(cfg.tags), config=config, dir=str(run_dir),
                              id=run_id, resume="allow", mode=cast(WandbMode, mode))
        log.info("wandb run %s (%s mode)", run_id, mode)

    def log(self, row: dict[str, Any]) -> None:
        self.run.log(flatten_for_wandb(row), step=row.get("step"))

    def close(self) -> None:
        self.run.finish()


class MetricsLogger:
    """Fan-out of metric rows to metrics.jsonl and (optionally) wandb; only rank 0 holds sinks."""

    def __init__(self, run_dir: Path, logger_cfg: LoggerConfig, config: dict[str, Any], enabled: bool):
        self.sinks: list[Any] = []
        if not enabled:
            return
        self.sinks.append(JsonlWriter(run_dir / "metrics.jsonl"))
        if logger_cfg.type == "wandb" and wandb_mode(logger_cfg) != "disabled":
            self.sinks.append(WandbSink(logger_cfg, run_dir, config))
        elif logger_cfg.type not in ("wandb", "none"):
            log.warning("logger.type=%r is unknown; logging to metrics.jsonl only", logger_cfg.type)

    def log(self, row: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.log(row)

    def truncate_after(self, step: int) -> None:
        for sink in self.sinks:
            if hasattr(sink, "truncate_after"):
                sink.truncate_after(step)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []
