"""cod-report on hand-made run directories: complete, crashed (partial files) and a sweep directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cod_train.config import ConfigError
from cod_train.report import load_run, load_runs, write_report
from cod_train.report.runs import discover_runs
from cod_train.runs.report import ReportConfig, report_command

LAYERS = 4


def analysis_files(run: Path, scale: float) -> None:
    entry = {"label": run.name, "checkpoint": str(run), "norm_type": "pre_ln", "num_layers": LAYERS}
    dist = [[0.1 * (n + 1) if s + n + 1 <= LAYERS else None for n in range(LAYERS)] for s in range(LAYERS)]
    data = {
        "layer_variance": {"layer_var": [scale * (i + 1) for i in range(LAYERS)]},
        "angular_distance": {"distance": dist},
        "layer_pruning": {
            "base_ppl": 20.0,
            "ppl": [40.0, 21.0, 20.5, 20.1],
            "delta_ppl": [20.0, 1.0, 0.5, 0.1],
        },
        "grad_norms": {"layer_grad_norm": [0.5, 0.4, 0.3, 0.2]},
        "logit_lens": {
            "kl": [2.0, 1.0, 0.5, 0.1, 0.0],
            "top1": [0.1, 0.3, 0.6, 0.4, 1.0],
        },  # settles at layer 4
    }
    (run / "analysis").mkdir(parents=True)
    for stem, fields in data.items():
        (run / "analysis" / f"{stem}.json").write_text(
            json.dumps({"diagnostic": stem, "models": [{**entry, **fields}]})
        )


def make_run(root: Path, name: str, norm: str, *, steps: int = 30, crashed: bool = False) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        f"model:\n  norm_type: {norm}\n  num_hidden_layers: {LAYERS}\n  mix_ln_ratio: 0.25\ntrain:\n  max_steps: 30\n"
    )
    rows = []
    for step in range(1, steps + 1):
        rows.append({"step": step, "loss": 5.0 - step * 0.05, "lr": 1e-3, "grad_norm": 1.0,
                     "tokens": step * 2048, "tokens_per_s": 1000.0 + step, "mfu": 0.1})  # fmt: skip
        if step % 10 == 0:
            rows.append(
                {"step": step, "eval_loss": 4.8 - step * 0.04, "eval_ppl": 2.7 ** (4.8 - step * 0.04)}
            )
            rows.append(
                {
                    "step": step,
                    "diag/layer_var": [1.0, 2.0, 3.0, 4.0],
                    "diag/layer_grad_norm": [1, 1, 1, 1],
                    "diag/bi": [0.4, 0.2, 0.1, 0.1],
                    "diag/settling_depth": step / 40,
                }
            )
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    if crashed:
        text += '{"step": 31, "loss": 3.4, "tok'  # the write was cut mid-line
    (run / "metrics.jsonl").write_text(text)
    if not crashed:
        eval_json = {
            "model": {"params": 1234567, "norm_type": norm},
            "perplexity": {"eval_loss": 3.0, "eval_ppl": 20.09},
            "downstream": {"arc_easy": {"acc": 0.4, "n": 10}, "piqa": {"acc": 0.6, "n": 10}, "average": 0.5},
        }
        (run / "eval.json").write_text(json.dumps(eval_json))
        analysis_files(run, scale=1.0 if norm == "pre_ln" else 0.5)
    return run


def test_report_with_a_crashed_run(tmp_path: Path) -> None:
    good = make_run(tmp_path / "runs", "tiny-pre_ln", "pre_ln")
    bad = make_run(tmp_path / "runs", "tiny-lns", "lns", steps=12, crashed=True)
    out = tmp_path / "report"
    path = write_report(load_runs([str(good), str(bad)]), out)
    text = path.read_text()
    # labelled by scheme; last loss 5 - 30 * 0.05 at step 30; eval.json and analysis/ name no step: "@?";
    # depth util.: 3 of 4 removals cost > 1% (100, 5, 2.5, 0.5 %); settling layer 4 of 4
    # train FLOPs "—": the config has no data.seq_len
    assert "| pre_ln | pre_ln | 4 | 1.2M | 61.44K | — | 3.500 @30 | 20.09 @? | 0.75 @? | 1.00 | 50.00 @? |" in text
    assert "| lns | lns | 4 |" in text and "incomplete (12/30 steps)" in text
    lns_row = text.split("| lns |")[1].split("\n")[0]
    assert f"| {2.7 ** 4.4:.2f} @10 ‡ |" in lns_row and "| 4.400 @12 |" in lns_row  # the in-training eval at 10
    assert f"- **lns**: `{bad}`" in text  # the run list says which directory a label stands for
    missing = text.split("## Missing or partial files")[1].split("##")[0]
    assert (
        "no eval.json" in missing and "no analysis/" in missing and "last line is not valid JSON" in missing
    )
    assert "Not available for: lns." in text
    for name in ("loss_curves", "layer_variance", "angular_distance", "layer_pruning", "grad_norms",
                 "train_layer_variance", "train_grad_norms", "logit_lens", "train_depth_utilization",
                 "train_block_influence"):  # fmt: skip
        assert f"](figures/{name}.png)" in text
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    summary = json.loads((out / "report.json").read_text())
    assert [r["run"] for r in summary["runs"]] == ["pre_ln", "lns"]
    assert summary["runs"][0]["downstream"] == {"arc_easy": 0.4, "piqa": 0.6, "average": 0.5}


def test_run_with_nothing_but_a_truncated_metrics_file(tmp_path: Path) -> None:
    run = tmp_path / "empty-run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "lo')
    data = load_run(run)
    assert data.status == "no metrics" and data.eval_ppl == (None, "", None)
    text = write_report([data], tmp_path / "out").read_text()
    assert "| empty-run | ? | — | — | — | — | — | — | — | — | — | — | no metrics |" in text
    assert "No run has analysis/layer_variance.json" in text
    assert not (tmp_path / "out" / "figures" / "loss_curves.png").exists()


def test_sweep_directory_is_searched(tmp_path: Path) -> None:
    sweep = tmp_path / "multirun" / "2026-01-01_00-00-00"
    for norm in ("pre_ln", "post_ln", "lns"):
        make_run(sweep, f"norm={norm}", norm)
    (sweep / "notes").mkdir()  # not a run
    found = discover_runs([str(tmp_path / "multirun")])
    assert [p.name for p in found] == ["norm=lns", "norm=post_ln", "norm=pre_ln"]


def test_bad_runs_argument(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        discover_runs([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no run directory"):
        discover_runs([str(tmp_path / "empty")])
    with pytest.raises(ConfigError, match="required"):
        discover_runs([])


def test_report_command_and_hydra_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hydra import compose, initialize_config_dir

    from cod_train.runs.app import config_dir, run_typed

    run = make_run(tmp_path / "runs", "a", "pre_ln")
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        cfg = compose("report", overrides=[f"runs=[{run}]", f"run_dir={tmp_path / 'rep'}", "title=Tiny"])
        assert run_typed(report_command, cfg, ReportConfig) == 0
        alias = compose("report", overrides=[f"runs=[{run}]", f"out={tmp_path / 'rep_out'}"])
        assert run_typed(report_command, alias, ReportConfig) == 0
        both = compose(
            "report", overrides=[f"runs=[{run}]", f"out={tmp_path / 'x'}", f"run_dir={tmp_path / 'y'}"]
        )
        assert run_typed(report_command, both, ReportConfig) == 2
        bad = compose("report", overrides=[f"runs=[{tmp_path / 'missing'}]", f"out={tmp_path / 'rep2'}"])
        assert run_typed(report_command, bad, ReportConfig) == 2
    assert (tmp_path / "rep" / "report.md").read_text().startswith("# Tiny")
    assert (tmp_path / "rep_out" / "report.md").is_file()
    assert (
        not (tmp_path / "rep2").exists() and not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    )
    err = capsys.readouterr().err
    assert "does not exist" in err and "disagree" in err


def test_an_sft_run_is_labelled_by_its_saved_model(tmp_path: Path) -> None:
    """cod-sft's config.yaml has no `model` block: the variant comes from hf/config.json (Llama = Pre-LN)."""
    from cod_train.report.runs import load_run

    for name, saved, want in [
        ("sft_lns", {"model_type": "cod_llama", "norm_type": "lns"}, "lns"),
        ("sft_llama", {"model_type": "llama"}, "pre_ln"),
    ]:
        run = tmp_path / name
        (run / "hf").mkdir(parents=True)
        (run / "config.yaml").write_text("checkpoint: runs/x\ntrain:\n  max_steps: 2\n")
        (run / "hf" / "config.json").write_text(json.dumps({**saved, "num_hidden_layers": 2}))
        (run / "metrics.jsonl").write_text('{"step": 2, "loss": 1.0}\n')
        data = load_run(run)
        assert data.variant == want and data.num_layers == 2 and data.status == "complete"


def test_noise_verdicts_from_the_intervals(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, "a", "pre_ln"), make_run(tmp_path, "b", "lns")]
    bands = {  # run -> (pruning lo, hi), (BI lo, hi)
        "a": (([0, 1, 1, 0], [5, 3, 3, 1]), ([0.1, 0.1, 0.1, 0.1], [0.2, 0.2, 0.2, 0.2])),
        "b": (([4, 2, 0, 0.5], [9, 4, 1, 2]), ([0.15, 0.3, 0.0, 0.15], [0.3, 0.4, 0.05, 0.3])),
    }
    for run in runs:
        (prune_lo, prune_hi), (bi_lo, bi_hi) = bands[run.name]
        entry = {"label": run.name, "base_ppl": 20.0, "ppl": [21.0] * 4, "delta_ppl_pct": [2.0] * 4,
                 "delta_ppl_pct_lo": prune_lo, "delta_ppl_pct_hi": prune_hi}  # fmt: skip
        (run / "analysis" / "layer_pruning.json").write_text(json.dumps({"models": [entry]}))
        bi = {"label": run.name, "bi": [0.15] * 4, "bi_lo": bi_lo, "bi_hi": bi_hi}
        (run / "analysis" / "block_influence.json").write_text(json.dumps({"models": [bi]}))
    text = write_report(load_runs([str(r) for r in runs]), tmp_path / "out").read_text()
    assert "pruning cost (%): **pre_ln** vs **lns**: within noise" in text  # every pair of intervals overlaps
    assert "Block Influence: **pre_ln** vs **lns**: differ beyond noise at 2 of 4 layers" in text  # layers 2 and 3
    assert "| pre_ln | pre_ln | 4 |" in text and "| 0.75 [0.50, 1.00] @? |" not in text
