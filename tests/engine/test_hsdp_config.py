"""``distributed.hsdp_replicas`` and ``distributed.fsdp_skip_grad_sync``: the checks that need no process group."""

from __future__ import annotations

import pytest
import torch

from cod_train.config import DistributedConfig
from cod_train.core.errors import ConfigError
from cod_train.engine.distributed import DistEnv
from cod_train.engine.engines import fsdp_mesh_shape
from cod_train.engine.parallelize import parallelize
from tests.helpers.engine_run import build_tiny_model, tiny_config


def test_defaults_are_plain_fsdp_with_sync_skipping():
    cfg = DistributedConfig()
    assert cfg.hsdp_replicas == 1 and cfg.fsdp_skip_grad_sync is True


@pytest.mark.parametrize(("replicas", "engine", "match"), [
    (0, "fsdp", "hsdp_replicas must be >= 1"),
    (-2, "fsdp", "hsdp_replicas must be >= 1"),
    (2, "ddp", "needs distributed.engine=fsdp"),
])
def test_validate_refuses_bad_hsdp_replicas(replicas, engine, match):
    with pytest.raises(ConfigError, match=match):
        DistributedConfig(engine=engine, hsdp_replicas=replicas).validate()


def test_validate_accepts_hsdp_with_fsdp():
    DistributedConfig(engine="fsdp", hsdp_replicas=4).validate()


@pytest.mark.parametrize(("world", "replicas", "shape"), [(8, 1, (8,)), (16, 2, (2, 8)), (16, 16, (16, 1)),
                                                          (2, 2, (2, 1))])
def test_mesh_shape(world, replicas, shape):
    assert fsdp_mesh_shape(world, replicas) == shape


@pytest.mark.parametrize(("world", "replicas"), [(2, 3), (16, 3), (1, 2), (8, 0)])
def test_mesh_shape_refuses_replicas_not_dividing_the_world(world, replicas):
    with pytest.raises(ConfigError, match="divide the world size"):
        fsdp_mesh_shape(world, replicas)


def test_engine_refuses_replicas_not_dividing_the_world_before_any_collective():
    """Raised by the FSDP engine once the world size is known, before a mesh (or process group) is needed."""
    cfg = tiny_config("distributed.engine=fsdp", "distributed.hsdp_replicas=3")
    cfg.validate()
    with pytest.raises(ConfigError, match="hsdp_replicas=3 must be >= 1 and divide the world size 2"):
        parallelize(build_tiny_model(cfg), cfg.distributed, DistEnv(world_size=2, initialized=True),
                    optimizer_fn=lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
