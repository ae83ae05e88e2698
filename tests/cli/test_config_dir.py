"""Where the presets are found: a checkout's top-level configs/, ``$COD_TRAIN_CONFIG_DIR``, and Hydra's
``--config-dir`` for presets of one's own (the wheel's copy: tests/packaging/test_wheel.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

from cod_train.runs.app import composition_problem, config_dir

REPO = Path(__file__).resolve().parents[2]


def _preset(root: Path, group: str, name: str) -> None:
    (root / group).mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "configs" / "model" / "llama_tiny.yaml", root / group / f"{name}.yaml")


def test_a_checkout_reads_the_top_level_configs(monkeypatch):
    monkeypatch.delenv("COD_TRAIN_CONFIG_DIR", raising=False)
    assert Path(config_dir()) == REPO / "configs"
    assert not (REPO / "cod_train" / "configs").exists()  # one copy in git: the wheel's is made by the build


def test_cod_train_config_dir_replaces_the_presets(monkeypatch, tmp_path):
    copy = Path(shutil.copytree(REPO / "configs", tmp_path / "mine"))
    _preset(copy, "model", "edited")
    monkeypatch.delenv("COD_TRAIN_CONFIG_DIR", raising=False)
    assert "model=edited: no such preset in model/" in composition_problem("pretrain", ["model=edited"])
    monkeypatch.setenv("COD_TRAIN_CONFIG_DIR", str(copy))
    assert config_dir() == str(copy)
    assert composition_problem("pretrain", ["model=edited"]) is None


def test_config_dir_flag_adds_presets_to_an_existing_group(monkeypatch, tmp_path):
    monkeypatch.delenv("COD_TRAIN_CONFIG_DIR", raising=False)
    _preset(tmp_path, "model", "my_tiny")
    for flags in (["--config-dir", str(tmp_path)], ["-cd", str(tmp_path)], [f"--config-dir={tmp_path}"]):
        assert composition_problem("pretrain", [*flags, "model=my_tiny"]) is None, flags
    problem = composition_problem("pretrain", ["--config-dir", str(tmp_path), "model=nope"])
    assert problem.startswith("model=nope: no such preset in model/; options: llama_130m,")
    assert "my_tiny" in problem and "llama_tiny" in problem
