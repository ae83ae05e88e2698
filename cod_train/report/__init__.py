"""Collect run directories into a Markdown comparison report with figures (``cod-report``)."""

from cod_train.report.render import write_report
from cod_train.report.runs import Collection, RunData, collect, discover_runs, load_run, load_runs

__all__ = ["Collection", "RunData", "collect", "discover_runs", "load_run", "load_runs", "write_report"]
