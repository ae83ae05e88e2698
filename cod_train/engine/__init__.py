"""Engines: distributed set-up, ``parallelize`` (AC -> compile -> single/DDP/FSDP2/DeepSpeed), checkpoints, export."""

from cod_train.engine.checkpoint import (
    TrainState,
    find_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)
from cod_train.engine.distributed import DistEnv, all_reduce, barrier, destroy_distributed, init_distributed
from cod_train.engine.engines import Engine
from cod_train.engine.export import export_checkpoint, save_hf
from cod_train.engine.parallelize import parallelize

__all__ = [
    "DistEnv",
    "Engine",
    "TrainState",
    "all_reduce",
    "barrier",
    "destroy_distributed",
    "export_checkpoint",
    "find_checkpoint",
    "init_distributed",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "parallelize",
    "resolve_resume",
    "save_checkpoint",
    "save_hf",
]
