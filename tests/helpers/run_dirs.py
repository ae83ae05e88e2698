"""What a run directory logged."""

from __future__ import annotations

import json
from pathlib import Path


def metric_rows(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def losses(run_dir: str | Path) -> dict[int, float]:
    """Train loss per step (a step logged twice, e.g. before a crash and after the resume: the last one)."""
    return {row["step"]: row["loss"] for row in metric_rows(run_dir) if "loss" in row}
