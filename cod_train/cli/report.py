"""``cod-report``: run directories (or a sweep directory) -> a Markdown comparison report with figures.

    cod-report runs=[runs/llama_tiny-pre_ln,runs/llama_tiny-lns] run_dir=reports/tiny   # out= is an alias
    cod-report runs=[multirun/2026-01-01_12-00-00] run_dir=reports/sweep title="Norm sweep"

    cod-analyze checkpoint=[runs/a,runs/b] run_dir=runs/compare && cod-report runs=[runs/compare]   # its runs

Writes ``run_dir/report.md`` (table: variant, layers, params, tokens, last train loss, eval perplexity, depth
utilization, downstream accuracy, each with the training step it was measured at; tokens/s, status; the runs'
directories; loss curves; the depth figures), ``run_dir/report.json`` and ``run_dir/figures/*.png``. A run is
labelled by its scheme (the name its run directory uses) plus the settings that differ between the runs
(``pre_ln+dhc8 seed=2``). A folder holding only ``analysis/`` (``cod-analyze`` of several checkpoints) is no run:
each of its models goes to the run it was trained in. Runs with missing or partial files (a crashed run) still
render; what is missing is listed, and a run holding ``failed.json`` is listed as failed. A path that does not
exist or holds no run exits with code 2.

Runs that differ only in ``seed`` are one scheme: the report adds each scheme's mean and 95% Student-t interval
over its seeds per metric, parameters and training FLOPs, Welch's signal-or-noise verdict per pair of schemes and
figures with one band per scheme (cod_train/report/render_groups.py).

    cod-report runs=[runs/study] out=reports/study order=flops figures_per=scheme

``order=run|flops|ppl``: the schemes as given, in equal-compute tiers (training FLOPs within 5%) by perplexity,
or by perplexity; ``figures_per=run|scheme``: the per-run figures show every run or one seed per scheme.
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
