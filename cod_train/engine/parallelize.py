"""Wrap a plain model for training, in one fixed order: activation checkpointing -> torch.compile -> engine.

The model knows nothing about parallelism. ``parallelize`` returns an :class:`~cod_train.engine.engines.Engine`
that the training loop drives through one small interface whatever the engine (single, DDP, FSDP2,
DeepSpeed ZeRO).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import nn
from torch.utils.checkpoint import checkpoint

from cod_train.config import DistributedConfig
from cod_train.core.errors import ConfigError
from cod_train.engine.distributed import DistEnv
from cod_train.engine.engines import (
    DDPEngine,
    DeepSpeedEngine,
    Engine,
    FSDPEngine,
    OptimizerFactory,
    SingleEngine,
)
from cod_train.engine.layers import decoder_layers, materialize

AC_MODES = ("none", "full", "selective")


def _checkpointed_forward(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def apply_activation_checkpointing(model: nn.Module, mode: str) -> None:
    """Recompute decoder blocks in the backward pass: ``full`` = every block, ``selective`` = every other one.

    The block's ``forward`` is replaced on the instance, so parameter names do not change.
    """
    if mode not in AC_MODES:
        raise ConfigError(f"distributed.activation_checkpointing must be one of {AC_MODES}, got {mode!r}")
    if mode == "none":
        return
    for idx, layer in enumerate(decoder_layers(model)):
        if mode == "full" or idx % 2 == 0:
            layer.forward = functools.partial(_checkpointed_forward, layer.forward)


def apply_compile(model: nn.Module) -> None:
    """Compile each decoder block in place (repeated blocks share one compiled graph; names unchanged). A scheme
    whose layers read the history of outputs (AttnRes) passes a stream that grows with depth: one graph per layer,
    so dynamo's recompile limit is raised to the depth (past it, the deeper blocks would silently run eagerly)."""
    layers = decoder_layers(model)
    if getattr(getattr(getattr(model, "config", None), "residual_scheme", None), "layer_reads_history", False):
        import torch._dynamo

        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, len(layers) + 1)
    for layer in layers:
        layer.compile(fullgraph=False)


ENGINES: dict[str, type[Engine]] = {
    "single": SingleEngine,
    "ddp": DDPEngine,
    "fsdp": FSDPEngine,
    "deepspeed": DeepSpeedEngine,
}


def parallelize(
    model: nn.Module,
    dist_cfg: DistributedConfig,
    env: DistEnv,
    *,
    optimizer_fn: OptimizerFactory,
    precision: str = "fp32",
    micro_batch_size: int = 1,
    grad_accum_steps: int = 1,
    grad_clip: float = 0.0,
    resume_world_size: int | None = None,
) -> Engine:
    """Apply activation checkpointing, then ``torch.compile`` (option), then the engine's wrapper.

    ``optimizer_fn(module)`` builds the torch optimizer once the parameters are final (FSDP2 builds it on the
    sharded DTensors; DeepSpeed receives it — never DeepSpeed's own FusedAdam, which compiles for minutes).
    ``resume_world_size``: the world size of the checkpoint the run will resume from, if any (DeepSpeed must
    know at set-up whether it loads a universal checkpoint).
    """
    if dist_cfg.engine not in ENGINES:
        raise ConfigError(f"distributed.engine must be one of {tuple(ENGINES)}, got {dist_cfg.engine!r}")
    if dist_cfg.engine != "fsdp":
        materialize(model, env.device)
    apply_activation_checkpointing(model, dist_cfg.activation_checkpointing)
    if dist_cfg.compile:
        apply_compile(model)
    return ENGINES[dist_cfg.engine](
        model, dist_cfg, env, optimizer_fn=optimizer_fn, precision=precision,
        micro_batch_size=micro_batch_size, grad_accum_steps=grad_accum_steps, grad_clip=grad_clip,
        resume_world_size=resume_world_size,
    )
