"""cod-sft through its Hydra config: defaults, and bad input rejected (exit code 2) before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from cod_train.cli.sft import main
from cod_train.config import PretrainConfig, to_typed
from cod_train.runs.app import config_dir, run_typed
from cod_train.sft.config import SFTConfig
from cod_train.sft.records import data_files
from tests.helpers.cli import TINY, run_command
from tests.helpers.run_dirs import metric_rows
from tests.helpers.tokenizers import write_hf_model


def sft_cli(overrides: list[str]) -> int:
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        return run_typed(main.__wrapped__, compose("sft", overrides=overrides), SFTConfig)


def test_default_config_starts_from_the_default_pretrain_run_on_the_bundled_sample(monkeypatch):
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        sft = to_typed(compose("sft"), SFTConfig)
        pre = to_typed(compose("pretrain"), PretrainConfig)
    assert sft.checkpoint == pre.run_dir == "runs/llama_tiny-pre_ln"
    assert sft.train.lr < pre.train.lr and sft.train.max_steps < pre.train.max_steps
    assert sft.distributed.engine == "single" and sft.logger.type == "none" and sft.resume == "auto"
    monkeypatch.setattr("cod_train.sft.records.default_sample_path", lambda: "/sample/alpaca_en_demo.json")
    assert data_files(sft.sft) == ["/sample/alpaca_en_demo.json"]


def test_not_a_checkpoint_exits_2_before_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    run_dir = tmp_path / "out"
    assert sft_cli([f"checkpoint={tmp_path / 'junk'}", f"run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint=") and "is a directory but not a model" in err
    assert not run_dir.exists()
    assert sft_cli([f"checkpoint={tmp_path / 'missing'}", f"run_dir={run_dir}"]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert sft_cli(["checkpoint=runs/never-pretrained", f"run_dir={run_dir}"]) == 2  # not mistaken for a hub name
    assert "checkpoint='runs/never-pretrained': no such directory (run cod-pretrain" in capsys.readouterr().err


def test_dataset_without_expected_fields_exits_2_before_training(tmp_path: Path, capsys) -> None:
    model = write_hf_model(tmp_path / "hf")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n" + json.dumps({"question": "q", "answer": "a"}) + "\n")
    run_dir = tmp_path / "out"
    assert sft_cli([f"checkpoint={model}", f"sft.paths=[{bad}]", f"run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert f"{bad} line 2: missing or non-string field(s) ['instruction', 'output']" in err
    assert "found keys ['answer', 'question']" in err
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoints").exists()


def test_offline_hub_dataset_and_bad_template_exit_2(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = write_hf_model(tmp_path / "hf")
    assert sft_cli([f"checkpoint={model}", "sft.hub_dataset=yahma/alpaca-cleaned", f"run_dir={tmp_path / 'o'}"]) == 2
    assert "cannot load hub dataset 'yahma/alpaca-cleaned'" in capsys.readouterr().err
    assert sft_cli([f"checkpoint={model}", "sft.template=vicuna"]) == 2
    assert "sft.template must be one of" in capsys.readouterr().err


def test_hf_directory_fine_tunes_into_its_own_run_dir(tmp_path: Path, capsys) -> None:
    model = write_hf_model(tmp_path / "base", chat=True)  # template=auto picks its chat template
    data = tmp_path / "chat.jsonl"
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    data.write_text("".join(json.dumps({"messages": msgs}) + "\n" for _ in range(12)))
    run_dir = tmp_path / "ft"
    overrides = [f"checkpoint={model}", f"run_dir={run_dir}", f"sft.paths=[{data}]", "sft.max_length=64",
                 "sft.packing=true", "train.max_steps=2", "train.global_batch_size=2", "train.micro_batch_size=1",
                 "train.log_every=1", "train.cpu_peak_flops=1e11", "device=cpu"]
    assert sft_cli(overrides) == 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2] and all(r["loss"] > 0 for r in train_rows)
    assert (run_dir / "hf" / "model.safetensors").is_file() and (run_dir / "hf" / "tokenizer.json").is_file()
    assert "sft:" in (run_dir / "config.yaml").read_text()


def test_rows_longer_than_the_models_positions_exit_2_before_work(tmp_path: Path, capsys) -> None:
    model = write_hf_model(tmp_path / "hf")  # max_position_embeddings=512
    run_dir = tmp_path / "sft"
    assert sft_cli([f"checkpoint={model}", f"run_dir={run_dir}", "sft.max_length=1024"]) == 2
    err = capsys.readouterr().err
    assert "sft.max_length=1024 exceeds the model's max_position_embeddings=512" in err
    assert not run_dir.exists()


@pytest.mark.slow
def test_readme_default_sft_fine_tunes_the_default_pretrain_run(tmp_path, monkeypatch, capsys):
    """`cod-pretrain && cod-sft` as the README has it: rows as long as the model's positions, unless set larger."""
    from cod_train.cli import pretrain

    monkeypatch.chdir(tmp_path)
    assert run_command(pretrain.main, "cod-pretrain", *TINY, "train.max_steps=1", "train.eval_tokens=0") == 0
    positions = json.loads(Path("runs/llama_tiny-pre_ln/hf/config.json").read_text())["max_position_embeddings"]
    capsys.readouterr()
    run = ["train.max_steps=1", "train.global_batch_size=4", "train.micro_batch_size=2", "train.log_every=1",
           "train.eval_every=0", "train.export_hf=false", "sft.eval_fraction=0", "train.cpu_peak_flops=1e11"]
    assert run_command(main, "cod-sft", *run) == 0
    sft_dir = Path("runs/llama_tiny-pre_ln-sft")
    assert yaml.safe_load((sft_dir / "config.yaml").read_text())["sft"]["max_length"] == positions
    # 408 of the sample's 999 examples are longer than 256 tokens: the first batch is padded to a cut row
    step1 = next(r for r in metric_rows(sft_dir) if r.get("step") == 1 and "tokens" in r)
    assert step1["tokens"] == 4 * positions

    capsys.readouterr()
    too_long = f"sft.max_length={positions + 1}"
    assert run_command(main, "cod-sft", *run, too_long, "run_dir=runs/too-long") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [f"error: {too_long} exceeds the model's max_position_embeddings={positions}; set "
                   f"sft.max_length={positions} or less, or leave it unset"]
    assert not Path("runs/too-long").exists()
