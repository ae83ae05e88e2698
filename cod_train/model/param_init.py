"""Parameter initialization that gives the same values whether a parameter is whole or sharded.

FSDP2 with `meta_init` shards the model before it is initialized: every parameter is then a DTensor holding only
this rank's part. Two things go wrong when the init writes to it directly: copying a plain tensor into it fails
("aten.copy_ got mixed torch.Tensor and DTensor"), and a random fill draws each rank's part from that rank's own
generator (on the CPU every rank draws the same numbers). Here a DTensor receives the full tensor, drawn exactly as
a whole parameter would be, and keeps its own part of it (no communication; one parameter's full size at a time).
Fills with constants (`ones_`, `zeros_`, `constant_`) are elementwise and already shard-safe.

Like `transformers.initialization`, a parameter marked `_is_hf_initialized` (loaded weights) is left as it is.
"""

from __future__ import annotations

import torch
from transformers import initialization as init


def _is_sharded(param: torch.Tensor) -> bool:
    return hasattr(param, "device_mesh") and hasattr(param, "placements")  # a DTensor, without importing it


@torch.no_grad()
def copy_full_(param: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """param <- full (the whole parameter's value); a sharded parameter keeps its part of `full`."""
    if getattr(param, "_is_hf_initialized", False):
        return param
    full = full.to(device=param.device, dtype=param.dtype)
    if _is_sharded(param):
        from torch.distributed.tensor import distribute_tensor

        # src_data_rank=None: each rank cuts its part from its own (identical) full tensor, no scatter
        full = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)  # type: ignore[attr-defined]
    return param.copy_(full)


def normal_full_(param: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """`init.normal_`, drawn for the whole parameter where it is sharded (the same values as unsharded, from the
    same generator state)."""
    if not _is_sharded(param):
        return init.normal_(param, mean=mean, std=std)
    if getattr(param, "_is_hf_initialized", False):
        return param
    return copy_full_(param, torch.empty(param.shape, dtype=param.dtype, device=param.device).normal_(mean, std))
