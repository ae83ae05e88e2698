"""cod-eval: eval.json, wandb logging into the run's wandb run, and bad input (exit code 2, no traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from cod_train.cli.eval import main
from cod_train.runs.app import config_dir, run_typed
from cod_train.runs.evaluate import EvalConfig
from tests.helpers.tokenizers import write_hf_model


def eval_cli(overrides: list[str]) -> int:
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        return run_typed(main.__wrapped__, compose("eval", overrides=overrides), EvalConfig)


def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps({"text": f"line {i}: the quick brown fox jumps over the lazy dog"}) + "\n"
                            for i in range(40)))
    return path


def test_eval_writes_eval_json_and_logs_to_the_runs_wandb(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    write_hf_model(run_dir / "hf")
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 4.0}\n')
    (run_dir / "wandb_id.txt").write_text("codrun123")  # the training run's wandb id
    text = text_file(tmp_path)
    overrides = [f"checkpoint={run_dir}", "data=files", f"data.paths=[{text}]", f"data.eval_paths=[{text}]",
                 "data.seq_len=32", f"++data.cache_dir={tmp_path / 'cache'}", "++data.tokenize_workers=1",
                 "perplexity.eval_tokens=512", "downstream.tasks=[]", "logger=wandb", "device=cpu"]
    assert eval_cli(overrides) == 0
    result = json.loads((run_dir / "eval.json").read_text())  # next to the run's own metrics
    assert result["perplexity"]["eval_tokens"] == 512 and result["perplexity"]["data"] == "files"
    assert result["model"]["model_type"] == "llama" and result["model"]["num_layers"] == 2
    assert result["downstream"] is None
    runs = list((run_dir / "wandb").glob("offline-run-*-codrun123"))
    assert runs, list((run_dir / "wandb").iterdir())


def test_missing_checkpoint_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert eval_cli([f"checkpoint={tmp_path / 'nope'}"]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_unknown_task_exits_2_before_loading_the_model(tmp_path: Path, capsys, monkeypatch) -> None:
    model = write_hf_model(tmp_path / "hf")

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("cod_train.runs.models.load_model", no_load)
    assert eval_cli([f"checkpoint={model}", "downstream.tasks=[arc_easy,hellaswagg]"]) == 2
    err = capsys.readouterr().err
    assert "\nerror: unknown downstream task(s) ['hellaswagg']; valid tasks: mmlu, boolq, arc_easy," in "\n" + err
    assert "Traceback" not in err
    assert not (tmp_path / "hf" / "eval.json").exists()
