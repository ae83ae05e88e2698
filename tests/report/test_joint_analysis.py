"""cod-pretrain two tiny runs (3 and 2 steps), cod-analyze both in one call, cod-report the folder: each run's row
holds its own model's depth numbers and step, the comparison folder is no run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cod_train.cli import analyze, pretrain, report
from tests.helpers.cli import TINY

RUNS = {"a": ["residual=depth_scaled", "model.depth_alpha=0.5", "model.num_hidden_layers=3", "train.max_steps=3"],
        "b": ["norm=lns", "train.max_steps=2"]}  # fmt: skip


def _main(module, *args: str) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["cod", *args])
        try:
            module.main()
        except SystemExit as exc:
            assert not exc.code, f"{module.__name__} exited {exc.code}"


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("joint")
    for name, overrides in RUNS.items():
        _main(pretrain, f"run_dir={root / name}", *TINY, "train.eval_every=0", "train.ckpt_every=0",
              "model.initializer_range=0.2", *overrides)  # fmt: skip
    text = root / "heldout.txt"
    text.write_text((Path(__file__).parents[2] / "README.md").read_text()[:20000])
    _main(analyze, f"checkpoint=[{root / 'a'},{root / 'b'}]", f"run_dir={root / 'compare'}",
          "analyze.diagnostics=[pruning,logit_lens]", f"analyze.text_path=[{text}]", "analyze.eval_tokens=256",
          "analyze.seq_len=32", "analyze.progress=false")  # fmt: skip
    return root


@pytest.mark.slow
def test_each_run_shows_its_own_model_of_a_joint_analysis(analysed: Path) -> None:
    joint = json.loads((analysed / "compare" / "analysis" / "depth_summary.json").read_text())["models"]
    by_run = {Path(m["run_dir"]).name: m for m in joint}
    assert set(by_run) == {"a", "b"} and [by_run[n]["num_layers"] for n in "ab"] == [3, 2]
    _main(report, f"runs=[{analysed}]", f"run_dir={analysed / 'report'}")
    rows = json.loads((analysed / "report" / "report.json").read_text())["runs"]
    assert [Path(r["path"]).name for r in rows] == ["a", "b"]  # the comparison folder is no run
    for row, name, steps in zip(rows, "ab", (3, 2), strict=True):
        mine = by_run[name]
        assert row["layers"] == mine["num_layers"]
        assert (row["depth_utilization"], row["settling_depth"]) == (mine["depth_utilization"], mine["settling_depth"])
        assert row["depth_step"] == mine["step"] == steps  # the hf/ export of the run's last step
        assert row["eval_ppl_step"] == row["train_loss_step"] == steps
        assert "analysis/ (run cod-analyze)" not in row["missing"]
    text = (analysed / "report" / "report.md").read_text()
    assert "no analysis/ (run cod-analyze)" not in text and "| ? |" not in text
    assert [r["run"] for r in rows] == ["pre_ln+depth0.5 num_hidden_layers=3 max_steps=3",
                                        "lns num_hidden_layers=2 max_steps=2"]  # fmt: skip
    assert "the depth util. figures come from different training steps (2, 3)" in text
