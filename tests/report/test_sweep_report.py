"""cod-report on a sweep of 2, 8 and 16 runs (tests/report/sweep_fixture.py): runs labelled by their scheme and
what differs between them, every figure's legend and titles inside the canvas and off the data, steps shown."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from cod_train.report import collect, load_run, write_report
from cod_train.report import plots as plots_module
from cod_train.report.runs import MAX_LABEL
from tests.report.sweep_fixture import MAX_STEPS, metrics_rows, write_sweep

SIZES = (2, 8, 16)
STOPPED = {1: 30}  # job 1 was stopped at step 30 of 60: no eval.json, its last in-training eval is step 20


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multirun") / "2026-12-02_10-00-00"
    write_sweep(root, max(SIZES), stopped=STOPPED)
    return root


def _subset(sweep: Path, n: int) -> list[str]:
    """The first n jobs of the sweep and its joint analysis (which also holds the other jobs' models)."""
    jobs = sorted((p for p in sweep.iterdir() if p.name[0].isdigit()), key=lambda p: int(p.name.split("_")[0]))
    return [str(p) for p in jobs[:n]] + [str(sweep / "compare")]


def _inside(box, canvas, tol: float = 1.0) -> bool:
    return (box.x0 >= canvas.x0 - tol and box.y0 >= canvas.y0 - tol and box.x1 <= canvas.x1 + tol
            and box.y1 <= canvas.y1 + tol)  # fmt: skip


def layout_problems(name: str, fig) -> list[str]:
    """What a reader would see clipped or hidden: anything outside the canvas, a legend over a panel, a title cut."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()  # the layout savefig computed stays; plt.close() took the canvas
    canvas = fig.bbox
    problems = []
    if not _inside(fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans), canvas):
        problems.append(f"{name}: something is drawn outside the canvas")
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    for legend in legends:
        box = legend.get_window_extent(renderer)
        if not _inside(box, canvas):
            problems.append(f"{name}: legend outside the canvas")
        problems += [f"{name}: legend over a panel" for ax in panels if box.overlaps(ax.get_window_extent(renderer))]
    titles = [ax.title for ax in panels] + ([fig._suptitle] if fig._suptitle is not None else [])
    for title in titles:
        if title.get_text() and not _inside(title.get_window_extent(renderer), canvas):
            problems.append(f"{name}: title {title.get_text()!r} clipped")
    return problems


def legend_entries(fig) -> list[tuple[str, tuple]]:
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return [(text.get_text(), (handle.get_color(), handle.get_linestyle(), handle.get_marker()))
            for legend in legends for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True)]  # fmt: skip


@pytest.fixture(scope="module")
def reports(sweep, tmp_path_factory) -> dict[int, tuple]:
    """cod-report's report of the first 2, 8 and 16 jobs: (collection, {figure name: Figure}, report folder)."""
    out = {}
    save = plots_module._save

    def keeping(figures: dict):
        def keep(fig, path):
            figures[path.stem] = fig
            return save(fig, path)

        return keep

    with pytest.MonkeyPatch.context() as mp:
        for n in SIZES:
            figures: dict = {}
            mp.setattr(plots_module, "_save", keeping(figures))
            found = collect(_subset(sweep, n))
            folder = tmp_path_factory.mktemp(f"report{n}")
            write_report(found.runs, folder, notes=found.notes)
            out[n] = (found, figures, folder)
    return out


@pytest.mark.parametrize("n", SIZES)
def test_every_figure_keeps_legend_and_titles_readable(reports, n):
    found, figures, _ = reports[n]
    labels = [r.label for r in found.runs]
    assert len(set(labels)) == n and all(len(label) <= MAX_LABEL for label in labels)
    assert not any(re.match(r"\d+_", label) or "seq_len" in label for label in labels)  # no job directory names
    expected = {"loss_curves", "layer_variance", "angular_distance", "layer_pruning", "grad_norms", "block_influence",
                "logit_lens", "sublayer_contribution", "skip_effect", "train_depth_utilization", "train_layer_variance",
                "train_grad_norms", "train_block_influence"}  # fmt: skip
    over_seeds = {"seed_metrics", "seed_loss_L6", "seed_curves_L6"} if n == 16 else set()  # 8 schemes x 2 seeds
    assert set(figures) == expected | over_seeds
    problems = [p for name, fig in figures.items() for p in layout_problems(name, fig)]
    assert problems == []
    schemes = list(dict.fromkeys(r.group for r in found.runs))
    for name in over_seeds - {"seed_metrics"}:  # one legend entry per scheme, each its own colour
        entries = legend_entries(figures[name])
        complete = [sum(r.group == s and r.status == "complete" for r in found.runs) for s in schemes]
        assert complete[1] == 1  # post_ln's seed 1 was stopped at step 30: left out of its mean and band
        assert [text for text, _ in entries] == [f"{s} (n={n})" for s, n in zip(schemes, complete, strict=True)], name
        assert len({style[0] for _, style in entries}) == len(schemes), name
    # the report shows a scheme's seeds together (each scheme where its first run was)
    shown = sorted(range(n), key=lambda i: (schemes.index(found.runs[i].group), i))
    for name, fig in figures.items():
        if name in over_seeds:
            continue
        if name == "angular_distance":  # one titled heat map per run, no lines
            assert [ax.get_title() for ax in fig.axes[:n]] == [f"{labels[i]} @{_step(i)}" for i in shown]
            continue
        entries = legend_entries(fig)
        assert len(entries) == n, name  # one entry per run, in one legend
        assert [text.split(" @")[0].split(" (ppl")[0] for text, _ in entries] == [labels[i] for i in shown], name
        assert len({style for _, style in entries}) == n, name  # colour x line style x marker: each run its own


def _step(i: int) -> int:
    return STOPPED.get(i, MAX_STEPS)


def test_labels_are_the_scheme_plus_what_differs(sweep):
    runs = collect(_subset(sweep, 16)).runs
    schemes = ["pre_ln", "post_ln", "mix_ln", "lns", "pre_ln+dhc8", "pre_ln+mhc4", "lns+gpas+qk_head", "pre_ln+dyt"]
    assert [r.label for r in runs] == [f"{s} seed={seed}" for seed in (1, 2) for s in schemes]
    assert [r.label for r in collect(_subset(sweep, 8)).runs] == schemes  # one seed: nothing else differs
    assert runs[4].settings == {"seed": 1} and runs[4].path.name.startswith("4_data.seq_len-128_model.hc_streams-8")


@pytest.mark.parametrize("overrides", [
    ["residual=hc_dynamic", "model.hc_streams=8"],
    ["norm=lns", "residual=gpas", "qk_norm=head"],
    ["norm=mix_ln", "norm_fn=dyt"],
    ["residual=depth_scaled", "model.depth_alpha=0.5", "model.depth_hparams=true"],
])  # fmt: skip
def test_label_is_the_scheme_of_the_run_directory(tmp_path, overrides):
    """cod-pretrain's default run_dir (runs/<model>-<scheme>) and the report's label come from one function."""
    from hydra import compose, initialize_config_dir

    from cod_train.runs.app import config_dir, write_config

    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        cfg = compose("pretrain", overrides=overrides)
    run_dir = Path(str(cfg.run_dir))  # resolved by the cod_scheme resolver, as cod-pretrain does
    write_config(cfg, tmp_path / run_dir.name)  # config.yaml as cod-pretrain writes it
    scheme = run_dir.name.removeprefix("llama_tiny-")
    assert load_run(tmp_path / run_dir.name).label == scheme
    if overrides[0] == "residual=hc_dynamic":
        assert scheme == "pre_ln+dhc8"  # was labelled pre_ln+hc4: five of the eight axes were passed


def test_table_gives_the_step_of_every_number(reports):
    """A run stopped at step 30 next to one that finished at 60: each number with its step, and a warning."""
    folder = reports[2][2]
    text = (folder / "report.md").read_text()
    rows = json.loads((folder / "report.json").read_text())["runs"]
    stopped_rows = metrics_rows(1, 30)  # what the fixture wrote for job 1, read independently of the report
    last_loss = [r for r in stopped_rows if "loss" in r][-1]
    last_eval = [r for r in stopped_rows if "eval_loss" in r][-1]
    assert (last_loss["step"], last_eval["step"]) == (30, 20)
    finished = [r for r in metrics_rows(0, MAX_STEPS) if "loss" in r][-1]
    line = next(r for r in text.splitlines() if r.startswith("| pre_ln |"))
    assert f"| {finished['loss']:.3f} @60 | {math.exp(3.4):.2f} @60 |" in line  # eval.json of the hf/ export
    assert "| 40.00 @60 |" in line  # downstream average (eval.json: 0.4) of the same weights
    line = next(r for r in text.splitlines() if r.startswith("| post_ln |"))
    assert f"| {last_loss['loss']:.3f} @30 | {last_eval['eval_ppl']:.2f} @20 ‡ |" in line
    assert "incomplete (30/60 steps)" in line and re.search(r"\] @30 \|", line)  # depth analysed at step 30
    assert [(r["train_loss_step"], r["eval_ppl_step"], r["depth_step"]) for r in rows] == [(60, 60, 60), (30, 20, 30)]
    assert "the eval perplexity figures come from different training steps (20, 60)" in text
    assert "the last train loss figures come from different training steps (30, 60)" in text
    assert "the depth util. figures come from different training steps (30, 60)" in text
