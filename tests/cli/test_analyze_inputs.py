"""What a ``checkpoint=`` names, and which held-out data cod-analyze uses — no model is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from cod_train.config import ConfigError, DataConfig
from cod_train.runs.analyze import AnalyzeConfig, data_config_for
from cod_train.runs.models import resolve_checkpoint


def touch(path: Path, text: str = "{}") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_resolve_kinds(tmp_path: Path) -> None:
    run = tmp_path / "run"
    touch(run / "metrics.jsonl", "")
    touch(run / "config.yaml", "data:\n  source: files\n  seq_len: 64\n")
    for step in (100, 20):
        touch(run / "checkpoints" / f"step_{step:07d}" / "meta.json")
        touch(run / "checkpoints" / f"step_{step:07d}" / "config.json")
        touch(run / "checkpoints" / f"step_{step:07d}" / "model.safetensors")
    touch(run / "checkpoints" / ".tmp_step_0000200" / "config.json")  # an interrupted save is never picked

    src = resolve_checkpoint(str(run))
    assert (src.kind, Path(src.path).name, src.run_dir) == ("checkpoint", "step_0000100", run)
    src = resolve_checkpoint(str(run / "checkpoints" / "step_0000020"))
    assert (src.kind, src.run_dir) == ("checkpoint", run)
    src = resolve_checkpoint(str(run / "checkpoints"))
    assert Path(src.path).name == "step_0000100"

    touch(run / "hf" / "config.json")
    touch(run / "hf" / "model.safetensors")
    src = resolve_checkpoint(str(run))  # the final export wins over the checkpoints
    assert (src.kind, Path(src.path), src.run_dir) == ("hf", run / "hf", run)
    assert resolve_checkpoint(str(run / "hf")).run_dir == run
    assert resolve_checkpoint("meta-llama/Llama-3.2-1B").kind == "hub"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: touch(p / "f.txt", "x"), "is a file"),
        (lambda p: touch(p / "d" / "config.json"), "is a directory but not a model"),  # config, no weights
        (lambda p: p / "nope" / "deeper", "no such directory"),
    ],
)
def test_not_a_checkpoint(tmp_path: Path, make, message: str) -> None:
    target = make(tmp_path)
    target = target.parent if target.name == "config.json" else target
    with pytest.raises(ConfigError, match=message):
        resolve_checkpoint(str(target))


def test_data_from_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    touch(run / "config.yaml", "data:\n  source: files\n  seq_len: 64\n  paths: [a.txt]\n")
    touch(run / "hf" / "config.json")
    touch(run / "hf" / "model.safetensors")
    source = resolve_checkpoint(str(run))
    cfg = AnalyzeConfig(checkpoint=[str(run)], data=DataConfig(source="sample", seq_len=128))
    data = data_config_for(cfg, source)
    assert (data.source, data.seq_len, data.paths) == ("files", 64, ["a.txt"])
    cfg.analyze.data_from_run = False
    assert data_config_for(cfg, source).source == "sample"
