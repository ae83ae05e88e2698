"""scripts/study.py without training: the schemes come from the registry, a re-run skips finished stages and
continues partial ones, a failed stage is recorded and the study goes on, the report's copy holds no weights."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest

from tests.helpers.processes import REPO


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study_script", REPO / "scripts" / "study.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["study_script"] = module
    spec.loader.exec_module(module)
    return module


def test_schemes_follow_the_registry(study, monkeypatch):
    """A scheme registered later (here a plugin's) is in the study without editing the script."""
    from cod_train.config import OPTIMIZERS
    from cod_train.model import zoo

    zoo.load_schemes()
    for name in ("PLACEMENTS", "RESIDUALS", "_loaded"):  # the plugin's registration ends with this test
        monkeypatch.setattr(zoo, name, type(getattr(zoo, name))(getattr(zoo, name)))
    zoo._loaded.discard("tests.helpers.toy_schemes")
    monkeypatch.delitem(sys.modules, "tests.helpers.toy_schemes", raising=False)  # imported afresh: registers
    monkeypatch.setenv("COD_TRAIN_PLUGINS", "tests.helpers.toy_schemes")
    found = study.schemes()
    assert found["toy_parallel"] == ["model.norm_type=toy_parallel"]
    assert found["toy_gate"] == ["model.residual=toy_gate"]
    assert list(found)[: len(study.BASE_SCHEMES)] == list(study.BASE_SCHEMES)  # the list first, in order
    registered = set(zoo.placement_names()) | set(zoo.residual_names())
    covered = {o.split("=", 1)[1] for overrides in found.values() for o in overrides
               if o.startswith(("norm=", "model.norm_type=", "residual=", "model.residual="))}  # fmt: skip
    assert registered - covered - study.LEFT_OUT <= {"dyt", "completep", "depth_scaled"}  # presets of other names
    assert ("pre_ln+muon" in found) == ("muon" in OPTIMIZERS)


def test_a_schemes_own_settings_win(study, tmp_path):
    plan = study.PLANS["full"]
    args = study.pretrain_args(plan, tmp_path / "r", ["model.norm_type=ngpt", "train.warmup_steps=0"], 2, 1e-3, 12)
    assert [a for a in args if a.startswith("train.warmup_steps=")] == ["train.warmup_steps=0"]
    assert "seed=2" in args and "train.lr=0.001" in args and "model.num_hidden_layers=12" in args


class FakeCommands:
    """Stands in for cod-pretrain / cod-eval / cod-analyze: writes what each writes when done; ``fail`` names a
    command that exits 3 instead."""

    def __init__(self, fail: str = "") -> None:
        self.calls: list[str] = []
        self.fail = fail

    def __call__(self, args: list[str], log: Path) -> int:
        name = Path(args[0]).name
        self.calls.append(name)
        run = Path(next(a.split("=", 1)[1] for a in args if a.startswith(("run_dir=", "checkpoint="))))
        log.parent.mkdir(parents=True, exist_ok=True)
        if name == self.fail:
            log.write_text("error: stopped after 5 non-finite losses in a row\n")
            return 3
        done = {"cod-pretrain": "hf/config.json", "cod-eval": "eval.json", "cod-analyze": "analysis/layer_pruning.json"}
        (run / done[name]).parent.mkdir(parents=True, exist_ok=True)
        (run / done[name]).write_text("{}")
        return 0


def test_a_rerun_skips_what_is_done_and_a_failure_is_recorded(study, tmp_path, monkeypatch):
    plan, run = study.PLANS["reduced"], tmp_path / "d12" / "lns-s1"
    fake = FakeCommands(fail="cod-eval")
    monkeypatch.setattr(study, "_call", fake)
    assert study.run_one(plan, run, ["cod-pretrain", f"run_dir={run}"]) is False
    assert fake.calls == ["cod-pretrain", "cod-eval"]  # analyze not tried after a failed eval
    marker = json.loads((run / "failed.json").read_text())
    assert (marker["stage"], marker["exit_code"]) == ("eval", 3) and "non-finite" in marker["error"]
    fake.calls.clear()
    fake.fail = ""
    assert study.run_one(plan, run, ["cod-pretrain", f"run_dir={run}"]) is True  # tried again
    assert fake.calls == ["cod-eval", "cod-analyze"] and not (run / "failed.json").exists()
    fake.calls.clear()
    assert study.run_one(plan, run, ["cod-pretrain", f"run_dir={run}"]) is True and fake.calls == []  # finished


def test_a_partial_run_continues_with_resume_auto(study, tmp_path):
    args = study.pretrain_args(study.PLANS["full"], tmp_path / "r", ["norm=lns"], 1, 2e-3, 12)
    assert "resume=auto" in args  # cod-pretrain continues from the run's last checkpoint


def _eval_json(run: Path, ppl: float) -> None:
    run.mkdir(parents=True)
    (run / "eval.json").write_text(json.dumps({"perplexity": {"eval_loss": math.log(ppl), "eval_ppl": ppl}}))


def test_the_24_layer_schemes_add_the_best_two_others(study, tmp_path):
    means = {"pre_ln": 10.0, "peri_ln": 30.0, "dyt": 20.0, "deepnorm": 40.0, "lns+muon": 5.0, "gpas": 25.0}
    for name, ppl in means.items():
        for seed, jitter in zip((1, 2, 3), (0.9, 1.0, 1.1), strict=True):
            _eval_json(tmp_path / "d12" / f"{name}-s{seed}", ppl * jitter)
    # pre_ln is always in; Muon is another optimizer, not a scheme; of the rest dyt (20) and gpas (25) are best
    assert study.best_others(tmp_path, list(means), (1, 2, 3)) == ["dyt", "gpas"]


def test_the_reports_copy_holds_no_weights(study, tmp_path):
    run = tmp_path / "runs" / "d12" / "lns-s1"
    (run / "hf").mkdir(parents=True)
    (run / "analysis").mkdir()
    (run / "checkpoints" / "step_0000008").mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl", "eval.json", "hf/config.json", "hf/model.safetensors",
                 "checkpoints/step_0000008/meta.json", "checkpoints/step_0000008/model.safetensors"):  # fmt: skip
        (run / name).write_text("x")
    entry = {"label": "lns-s1", "run_dir": str(run), "checkpoint": str(run)}
    (run / "analysis" / "logit_lens.json").write_text(json.dumps({"models": [entry]}))
    study.copy_light(tmp_path / "runs", tmp_path / "docs" / "runs")
    copy = tmp_path / "docs" / "runs" / "d12" / "lns-s1"
    files = sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file())
    assert files == ["analysis/logit_lens.json", "checkpoints/step_0000008/meta.json", "config.yaml", "eval.json",
                     "hf/config.json", "metrics.jsonl"]  # fmt: skip
    moved = json.loads((copy / "analysis" / "logit_lens.json").read_text())["models"][0]
    assert moved["run_dir"] == str(copy)  # cod-report gives the analysed model to the copy, not to the original


class FakeTuning(FakeCommands):
    """Tuning runs whose final held-out loss is ``losses[lr]``; the study is stopped (Ctrl-C) at its first
    evaluation, i.e. in the first 12-layer run after tuning."""

    def __init__(self, losses: dict[float, float]) -> None:
        super().__init__()
        self.losses = losses

    def __call__(self, args: list[str], log: Path) -> int:
        if Path(args[0]).name == "cod-eval":
            raise KeyboardInterrupt
        code = super().__call__(args, log)
        run = Path(next(a.split("=", 1)[1] for a in args if a.startswith("run_dir=")))
        lr = float(next(a.split("=", 1)[1] for a in args if a.startswith("train.lr=")))
        (run / "metrics.jsonl").write_text(json.dumps({"step": 100, "eval_loss": self.losses[lr]}) + "\n")
        return code


@pytest.mark.parametrize(("losses", "edge"), [({1e-3: 7.4, 2e-3: 7.3, 4e-3: 7.35}, False),
                                              ({1e-3: 7.4, 2e-3: 7.35, 4e-3: 7.3}, True)])  # fmt: skip
def test_the_tuned_learning_rate_is_kept_before_the_study_goes_on(study, tmp_path, monkeypatch, losses, edge):
    """The lowest held-out loss picks the learning rate, written to plan.json before the first 12-layer run (a
    study stopped there resumes with it, without re-reading the tuning runs); a pick at the grid's edge is
    flagged."""
    plan = study.Plan(steps=4, batch=2, seq_len=16, seeds=(1,), eval_tokens=64, analyze_tokens=32,
                      downstream=("arc_easy",), downstream_limit=2, lr_grid=tuple(losses), deep_layers=None,
                      only=("pre_ln",))  # fmt: skip
    monkeypatch.setattr(study, "_call", FakeTuning(losses))
    with pytest.raises(KeyboardInterrupt):
        study.run_study(plan, tmp_path, {}, dry=False)
    saved = json.loads((tmp_path / "plan.json").read_text())
    best = min(losses, key=lambda lr: losses[lr])
    assert saved["lr"] == best and saved["tune_losses"] == {str(k): v for k, v in losses.items()}
    assert saved.get("lr_at_grid_edge", False) is edge


def _metrics(run: Path, loss: float) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 50, "eval_loss": loss + 1}) + "\n"
                                       + json.dumps({"step": 100, "eval_loss": loss}) + "\n")  # fmt: skip


def test_the_learning_rate_check_takes_the_best_and_worst_schemes(study, tmp_path, monkeypatch):
    """The best and worst AdamW schemes besides Pre-LN (tuned already) and Muon (another optimizer) by mean
    12-layer held-out loss; each trains again at half and twice the learning rate, seed 1, without evaluation."""
    means = {"pre_ln": 7.0, "lns": 7.1, "dyt": 7.2, "gpas": 7.3, "post_ln": 7.6, "ngpt": 7.9, "lns+muon": 6.0}
    for name, loss in means.items():
        for seed in (1, 2, 3):
            _eval_json(tmp_path / "d12" / f"{name}-s{seed}", math.exp(loss))
    plan = study.Plan(steps=4, batch=2, seq_len=16, seeds=(1, 2, 3), eval_tokens=64, analyze_tokens=32,
                      downstream=("arc_easy",), downstream_limit=2, lr_grid=(1e-3,), deep_layers=None, lr_check=2)  # fmt: skip
    fake = FakeCommands()
    monkeypatch.setattr(study, "_call", fake)
    state: dict = {}
    study.check_lr(plan, tmp_path, state, {n: [f"norm={n}"] for n in means}, 4e-3, dry=False)
    assert state["lr_check"] == ["lns", "dyt", "post_ln", "ngpt"]
    assert json.loads((tmp_path / "plan.json").read_text())["lr_check"] == state["lr_check"]  # kept for a resume
    made = sorted(p.parent.parent.name for p in (tmp_path / "lr").glob("*/hf/config.json"))
    assert made == sorted(f"{n}-lr{lr:g}" for n in state["lr_check"] for lr in (2e-3, 8e-3))
    assert fake.calls == ["cod-pretrain"] * 8  # pre-training only


def test_the_learning_rate_table_reads_the_runs(study, tmp_path):
    """Each scheme's final in-training held-out loss at lr / 2, lr (its seed-1 run) and 2 lr, the best of the
    three, and the sample standard deviation over its seeds at lr (hand-computed)."""
    for seed, loss in zip((1, 2, 3), (7.10, 7.20, 7.30), strict=True):
        _metrics(tmp_path / "d12" / f"lns-s{seed}", loss)
    _metrics(tmp_path / "lr" / "lns-lr0.002", 7.05)
    _metrics(tmp_path / "lr" / "lns-lr0.008", 7.40)
    state = {"lr": 4e-3, "lr_check": ["lns"], "tune_losses": {"0.002": 7.3, "0.004": 7.2}}
    table = study.lr_table(tmp_path, state, (1, 2, 3))
    assert "| lns | 7.0500 | 7.1000 | 7.4000 | lr 0.002 | 0.1000 |" in table  # sd of 7.1, 7.2, 7.3 = 0.1
    assert "lr 0.002: 7.3000, lr 0.004: 7.2000; chosen 0.004." in table


def test_the_learning_rate_table_regenerates_from_the_reports_copy(study, tmp_path, monkeypatch):
    """write_report copies the check's runs beside (not into) the runs cod-report reads, and writes the same
    lr_check.md again from that copy alone once the runs are gone (make study-report)."""
    out, report = tmp_path / "out", tmp_path / "docs"
    for seed, loss in zip((1, 2, 3), (7.10, 7.20, 7.30), strict=True):
        _metrics(out / "d12" / f"lns-s{seed}", loss)
        (out / "d12" / f"lns-s{seed}" / "config.yaml").write_text("seed: 1\n")
    for name, loss in (("lns-lr0.002", 7.05), ("lns-lr0.008", 7.4)):
        _metrics(out / "lr" / name, loss)
        (out / "lr" / name / "config.yaml").write_text("seed: 1\n")
    monkeypatch.setattr(study.subprocess, "call", lambda *args, **kwargs: 0)  # cod-report itself: not under test
    plan = study.Plan(steps=4, batch=2, seq_len=16, seeds=(1, 2, 3), eval_tokens=64, analyze_tokens=32,
                      downstream=("arc_easy",), downstream_limit=2, lr_grid=(4e-3,), deep_layers=None, lr_check=1)  # fmt: skip
    state = {"lr": 4e-3, "lr_check": ["lns"], "tune_losses": {}}
    study.write_report(plan, out, report, state)
    first = (report / "lr_check.md").read_text()
    assert "| lns | 7.0500 | 7.1000 | 7.4000 | lr 0.002 | 0.1000 |" in first
    assert sorted(p.name for p in (report / "runs" / "d12").iterdir()) == ["lns-s1", "lns-s2", "lns-s3"]
    assert not (report / "runs" / "lr").exists()
    shutil.rmtree(out)
    (report / "lr_check.md").unlink()
    study.write_report(plan, out, report, {})
    assert (report / "lr_check.md").read_text() == first


def test_the_learning_rate_table_tells_failed_from_not_run(study, tmp_path):
    for seed in (1, 2):
        _metrics(tmp_path / "d12" / f"lns-s{seed}", 7.1 + seed / 10)
    (tmp_path / "lr" / "lns-lr0.008").mkdir(parents=True)
    (tmp_path / "lr" / "lns-lr0.008" / "failed.json").write_text("{}")
    table = study.lr_table(tmp_path, {"lr": 4e-3, "lr_check": ["lns"]}, (1, 2))
    assert "| lns | not run | 7.2000 | failed | lr 0.004 |" in table


def test_the_deep_phase_runs_the_fixed_schemes_the_best_two_and_completep(study, tmp_path, monkeypatch):
    """24 layers: Pre-LN, LNS, Mix-LN, the two other AdamW schemes of lowest mean 12-layer loss (kept in plan.json),
    and CompleteP whatever its 12-layer rank (at its tuned depth it is Pre-LN exactly: only 24 layers test it)."""
    means = {"pre_ln": 7.0, "lns": 7.1, "mix_ln": 7.5, "dyt": 7.2, "gpas": 7.3, "post_ln": 7.6, "completep": 7.9,
             "lns+muon": 6.0}  # fmt: skip
    for name, loss in means.items():
        _eval_json(tmp_path / "d12" / f"{name}-s1", math.exp(loss))
        (tmp_path / "d12" / f"{name}-s1" / "analysis").mkdir()
        (tmp_path / "d12" / f"{name}-s1" / "analysis" / "layer_pruning.json").write_text("{}")
    plan = study.Plan(steps=4, batch=2, seq_len=16, seeds=(1,), eval_tokens=64, analyze_tokens=32,
                      downstream=("arc_easy",), downstream_limit=2, lr_grid=(1e-3,), deep_layers=24)  # fmt: skip
    schemes = {n: [f"norm={n}"] for n in means}
    monkeypatch.setattr(study, "schemes", lambda: schemes)
    monkeypatch.setattr(study, "_call", FakeCommands())
    state: dict = {}
    study.run_study(plan, tmp_path, state, dry=False)
    made = {p.parent.parent.name for p in (tmp_path / "d24").glob("*/hf/config.json")}
    assert made == {f"{n}-s1" for n in ("pre_ln", "lns", "mix_ln", "dyt", "gpas", "completep")}
    assert json.loads((tmp_path / "plan.json").read_text())["deep"] == ["pre_ln", "lns", "mix_ln", "dyt", "gpas"]


def test_the_unigram_reference_by_hand(study):
    """Labels 0, 0, 1 (and a padded -100) over a vocabulary of 3, add-one smoothed: counts 3, 2, 1 of 6. Scored by
    cod-eval's own perplexity code on held-out labels 0, 2: loss = -(log 3/6 + log 1/6) / 2."""
    import torch

    from cod_train.eval.perplexity import evaluate_perplexity

    train = [{"input_ids": torch.zeros(1, 4, dtype=torch.long), "labels": torch.tensor([[0, 0, 1, -100]])}]
    log_probs = study.unigram_log_probs(train, 3)
    assert log_probs == pytest.approx([math.log(3 / 6), math.log(2 / 6), math.log(1 / 6)])
    held_out = [{"input_ids": torch.zeros(1, 2, dtype=torch.long), "labels": torch.tensor([[0, 2]])}]
    found = evaluate_perplexity(study.unigram_model(log_probs), held_out)
    want = -(math.log(3 / 6) + math.log(1 / 6)) / 2
    assert found["eval_loss"] == pytest.approx(want, rel=1e-6) and found["eval_tokens"] == 2
    assert found["eval_ppl"] == pytest.approx(math.exp(want), rel=1e-6)
