"""cod-pretrain init_from= as a run: its own run directory named after the source, another source is another
run (a run directory is not resumed from a different one), and a mistyped local path is "no such directory"."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.cli import cod_pretrain
from tests.helpers.run_dirs import metric_rows
from tests.helpers.tokenizers import write_hf_model

RUN = ["data.seq_len=32", "train.global_batch_size=4", "train.micro_batch_size=2", "train.eval_tokens=0",
       "train.log_every=1", "train.export_hf=false", "train.cpu_peak_flops=1e11", "device=cpu"]


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_init_from_runs_in_a_directory_named_after_its_source_and_another_source_is_another_run(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_hf_model(Path("one/lns"))
    write_hf_model(Path("two/lns"), layers=3)
    assert cod_pretrain("init_from=one/lns", *RUN, "train.max_steps=1") == 0
    run_dir = Path("runs/from-lns")
    assert [r["step"] for r in metric_rows(run_dir) if "loss" in r] == [1]
    assert (run_dir / "checkpoints" / "step_0000001").is_dir()
    assert not Path("runs/llama_tiny-pre_ln").exists()  # the default run's directory is left alone

    capsys.readouterr()
    assert cod_pretrain("init_from=two/lns", *RUN, "train.max_steps=2") == 2
    (line,) = _error_lines(capsys)
    assert line.startswith("error: resume would continue runs/from-lns under a different model or data stream")
    assert "init_from: 'one/lns' -> 'two/lns'" in line
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_0000001"]


@pytest.mark.parametrize("spec", ["exports/nope", "./nope", "~/no-such-cod-model", "runs/x", "a/b/c"])
def test_a_missing_local_path_is_no_such_directory_not_the_hub(tmp_path, monkeypatch, capsys, spec):
    monkeypatch.chdir(tmp_path)
    Path("exports").mkdir()
    assert cod_pretrain(f"init_from='{spec}'", "run_dir=out") == 2  # quoted: Hydra takes ~ and spaces
    assert _error_lines(capsys) == [f"error: init_from={spec!r}: no such directory"]
    assert not Path("out").exists()


def test_a_hub_name_still_goes_to_the_hub(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cod_pretrain("init_from=no-such-owner/no-such-model", "run_dir=out") == 2
    (line,) = _error_lines(capsys)
    assert line.startswith("error: the Hugging Face hub is unreachable (HF_HUB_OFFLINE is set), so "
                           "init_from='no-such-owner/no-such-model'")
