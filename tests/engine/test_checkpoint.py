"""Checkpoint directory rules: only complete checkpoints count, temp dirs are cleaned, resume paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cod_train.config import ConfigError
from cod_train.core.errors import RunError
from cod_train.engine.checkpoint import (
    latest_checkpoint,
    prune,
    read_meta,
    resolve_resume,
    rng_state,
    set_rng_state,
    step_dirname,
)


def _fake(root, step, complete=True):
    path = root / step_dirname(step)
    path.mkdir(parents=True)
    if complete:
        (path / "meta.json").write_text(json.dumps({"step": step}))
    return path


def test_latest_ignores_incomplete_and_temp_dirs(tmp_path):
    _fake(tmp_path, 10)
    _fake(tmp_path, 30, complete=False)  # crashed before meta.json
    (tmp_path / ".tmp_step_0000040").mkdir()  # crashed mid-save
    assert latest_checkpoint(tmp_path).name == "step_0000010"
    assert resolve_resume("auto", tmp_path).name == "step_0000010"
    assert resolve_resume("none", tmp_path) is None


def test_prune_keeps_last_and_removes_temp(tmp_path):
    for step in (10, 20, 30):
        _fake(tmp_path, step)
    (tmp_path / ".tmp_step_0000040").mkdir()
    prune(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000020", "step_0000030"]


def test_resume_path_rules(tmp_path):
    ckpt = _fake(tmp_path / "run" / "checkpoints", 5)
    assert resolve_resume(str(ckpt), tmp_path) == ckpt
    assert resolve_resume(str(tmp_path / "run"), tmp_path) == ckpt  # a run directory: its latest
    with pytest.raises(ConfigError, match="no such file"):
        resolve_resume(str(tmp_path / "nope"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a checkpoint"):
        resolve_resume(str(tmp_path / "empty"), tmp_path)


def test_rng_state_roundtrip_through_weights_only_load(tmp_path):
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = torch.rand(3)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected)


def test_damaged_checkpoint_is_a_run_error(tmp_path):
    from cod_train.engine.export import load_weights_into

    ckpt = _fake(tmp_path, 7)
    (ckpt / "meta.json").write_text("{not json")
    with pytest.raises(RunError, match="not a readable checkpoint"):
        read_meta(ckpt)
    (ckpt / "meta.json").write_text(json.dumps({"step": 7, "format": "torch"}))  # no model.safetensors
    with pytest.raises(RunError, match="damaged or incomplete"):
        load_weights_into(torch.nn.Linear(2, 2), ckpt)


def test_export_loads_either_end_of_tied_embeddings(tmp_path):
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM

    from cod_train.engine.export import load_weights_into
    from tests.helpers.engine_run import build_tiny_model, tiny_config

    model = build_tiny_model(tiny_config("model.tie_word_embeddings=true"))
    ckpt = _fake(tmp_path, 1)
    (ckpt / "meta.json").write_text(json.dumps({"step": 1, "format": "torch"}))
    save_model(model, str(ckpt / "model.safetensors"))  # keeps one name of the shared embedding matrix
    fresh = AutoModelForCausalLM.from_config(model.config)
    load_weights_into(fresh, ckpt)
    assert torch.equal(fresh.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight


def test_a_run_dir_some_rank_cannot_see_is_refused(tmp_path, monkeypatch):
    """Rank 1's view of a node-local run_dir: rank 0's probe file never appears there (collectives simulated)."""
    from cod_train.core.errors import ConfigError
    from cod_train.engine import checkpoint
    from cod_train.engine.distributed import DistEnv

    answers = iter([["token", None], [(True, "node-a", 0), (False, "node-b", 1)]])
    monkeypatch.setattr(checkpoint, "all_gather_object", lambda obj, env: next(answers))
    with pytest.raises(ConfigError, match=r"not one directory shared by every process: 1 rank\(s\) on node-b"):
        checkpoint.check_shared_dir(tmp_path, DistEnv(rank=1, world_size=2), wait_s=0.2)
    checkpoint.check_shared_dir(tmp_path, DistEnv())  # one process: nothing to check


def test_resume_is_resolved_on_rank_0_for_every_rank(tmp_path, monkeypatch):
    """Every rank resumes what rank 0 lists, whatever its own (possibly stale) view of the directory."""
    from cod_train.engine import checkpoint, distributed
    from cod_train.engine.distributed import DistEnv

    rank0_view = str(tmp_path / "checkpoints" / "step_0000004")
    monkeypatch.setattr(distributed, "all_gather_object", lambda obj, env: [("ok", [rank0_view])])
    monkeypatch.setattr(checkpoint, "checkpoint_problems", lambda path, env: [])
    got = checkpoint.resolve_resume("auto", tmp_path / "checkpoints", DistEnv(rank=1, world_size=2))
    assert got == Path(rank0_view)  # rank 1 sees no checkpoint at all here
