"""``cod-report``: run directories (or a sweep directory) -> a Markdown comparison report with figures.

    cod-report runs=[runs/llama_tiny-pre_ln,runs/llama_tiny-lns] run_dir=reports/tiny   # out= is an alias
    cod-report runs=[multirun/2026-01-01_12-00-00] run_dir=reports/sweep title="Norm sweep"

Writes ``run_dir/report.md`` (table: variant, layers, params, tokens, final eval perplexity, downstream accuracy,
tokens/s, status; loss curves; per-layer variance, angular-distance heatmaps, pruning curves, grad norms),
``run_dir/report.json`` and ``run_dir/figures/*.png``. Runs with missing or partial files (a crashed run) still
render; what is missing is listed. A path that does not exist or holds no run exits with code 2.
"""

from __future__ import annotations

from cod_train.runs.app import hydra_app
from cod_train.runs.report import ReportConfig


@hydra_app("report", ReportConfig)
def main(cfg: ReportConfig) -> int:
    from cod_train.runs.report import report_command

    return report_command(cfg)


if __name__ == "__main__":
    main()
