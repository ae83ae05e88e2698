"""``cod-report``: run directories (or a sweep directory) -> a Markdown comparison report with figures.

    cod-report runs=[runs/llama_tiny-pre_ln,runs/llama_tiny-lns] out=reports/tiny
    cod-report runs=[multirun/2026-01-01_12-00-00] out=reports/sweep title="Norm sweep"

Writes ``out/report.md`` (table: variant, layers, params, tokens, final eval perplexity, downstream accuracy,
tokens/s, status; loss curves; per-layer variance, angular-distance heatmaps, pruning curves, grad norms),
``out/report.json`` and ``out/figures/*.png``. Runs with missing or partial files (a crashed run) still
render; what is missing is listed. A path that does not exist or holds no run exits with code 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cod_train.cli._hydra import hydra_app


@dataclass
class ReportConfig:
    runs: list[str] = field(default_factory=list)
    out: str = "reports/latest"
    title: str = "cod-train report"


def report_command(cfg: ReportConfig) -> int:
    """Load the runs (ConfigError before any file is written when a path is bad) and write the report."""
    from cod_train.report import load_runs, write_report

    runs = load_runs([str(p) for p in cfg.runs])
    path = write_report(runs, Path(cfg.out), title=cfg.title)
    incomplete = [r.label for r in runs if r.missing or r.notes]
    print(
        f"cod-report: {len(runs)} run(s) -> {path}"
        + (f" (partial: {', '.join(incomplete)})" if incomplete else "")
    )
    return 0


main = hydra_app("report", ReportConfig)(report_command)

if __name__ == "__main__":
    main()
