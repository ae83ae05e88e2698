"""The body of ``cod-report`` (usage: ``cod_train/cli/report.py``): run directories -> report.md, report.json
and figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cod_train.config import ConfigError

DEFAULT_OUT = "reports/latest"


@dataclass
class ReportConfig:
    runs: list[str] = field(default_factory=list)
    run_dir: str | None = None  # where the report is written (default reports/latest)
    out: str | None = None  # alias of run_dir
    title: str = "cod-train report"
    order: str = "run"  # run (as given) | flops (equal-compute tiers, then perplexity) | ppl: the schemes' order
    figures_per: str = "run"  # run | scheme: the per-run figures show every run, or one seed per scheme

    def validate(self) -> None:
        from cod_train.report.groups import ORDERS
        from cod_train.report.render import FIGURES_PER

        if self.order not in ORDERS:
            raise ConfigError(f"order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        if self.figures_per not in FIGURES_PER:
            raise ConfigError(f"figures_per must be one of {', '.join(FIGURES_PER)}, got {self.figures_per!r}")

    def output_dir(self) -> Path:
        if self.run_dir and self.out and Path(self.run_dir) != Path(self.out):
            raise ConfigError(f"run_dir={self.run_dir!r} and out={self.out!r} disagree; out is an alias of run_dir")
        return Path(self.run_dir or self.out or DEFAULT_OUT)


def report_command(cfg: ReportConfig) -> int:
    """Load the runs (ConfigError before any file is written when a path is bad) and write the report."""
    from cod_train.report import collect, write_report

    cfg.validate()
    out = cfg.output_dir()
    found = collect([str(p) for p in cfg.runs])
    runs = found.runs
    path = write_report(runs, out, title=cfg.title, notes=found.notes, order=cfg.order, figures_per=cfg.figures_per)
    failed = [r.label for r in runs if r.failure is not None]
    incomplete = [r.label for r in runs if r.failure is None and (r.status != "complete" or r.notes)]
    print(
        f"cod-report: {len(runs)} run(s) -> {path}"
        + (f" (failed: {', '.join(failed)})" if failed else "")
        + (f" (incomplete or damaged: {', '.join(incomplete)})" if incomplete else "")
    )
    return 0
