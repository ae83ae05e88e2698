"""A training command's config is resolved once and comes back frozen (cod_train/runs/resolve.py)."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from cod_train.config import PretrainConfig
from cod_train.runs.pretrain import resolve
from cod_train.runs.resolve import freeze, is_frozen


def test_a_frozen_config_refuses_every_assignment_and_keeps_its_values():
    cfg = freeze(PretrainConfig(seed=7))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        del cfg.model.hidden_size
    assert cfg.seed == 7 and cfg.train.lr == PretrainConfig().train.lr
    assert dataclasses.asdict(cfg) == dataclasses.asdict(PretrainConfig(seed=7))
    assert isinstance(cfg, PretrainConfig) and isinstance(cfg.model, type(PretrainConfig().model))


@pytest.mark.parametrize("copy_of", [copy.deepcopy, lambda c: pickle.loads(pickle.dumps(c)),
                                     lambda c: dataclasses.replace(c, seed=9)])
def test_copies_of_a_frozen_config_are_frozen(copy_of):
    cfg = copy_of(freeze(PretrainConfig(seed=7)))
    assert is_frozen(cfg) and is_frozen(cfg.train)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.max_steps = 1


def test_resolve_returns_a_frozen_copy_and_the_run_dir(tmp_path):
    given = PretrainConfig(run_dir=str(tmp_path / "run"))
    run = resolve(given)
    assert run.run_dir == tmp_path / "run" and run.run_dir.is_dir()
    assert run.resume_from is None and dict(run.model_overrides) == {}
    assert is_frozen(run.cfg) and not is_frozen(given) and not is_frozen(given.model)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.cfg.model.hidden_size = 64
    given.seed = 1  # the caller's config stays its own
    assert run.cfg.seed == PretrainConfig().seed
