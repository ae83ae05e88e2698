"""Counting the bytes each collective moves, as the dispatcher sees them (for cod-plan: engine/plan.py).

Every torch.distributed collective reaches the dispatcher as a ``c10d`` op (``dist.all_reduce`` ->
``c10d.allreduce_``, FSDP2's ``all_gather_single`` -> ``c10d._allgather_base_``, DTensor's reductions ->
``_c10d_functional.all_reduce``), on a fake process group as on a real one, so a ``TorchDispatchMode`` counts them
whatever issued them. The *payload* of a collective is the full (unsharded) tensor: the output of an all-gather,
the input of a reduce-scatter, the tensor of an all-reduce or broadcast. The bytes a rank sends over the wire
with ring algorithms (NCCL's for large messages) are (n-1)/n of the payload for an all-gather or reduce-scatter
over n ranks and 2 (n-1)/n for an all-reduce.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

KINDS = ("all_gather", "reduce_scatter", "all_reduce", "broadcast")
WIRE_FACTOR = {"all_gather": 1.0, "reduce_scatter": 1.0, "all_reduce": 2.0, "broadcast": 1.0}


def _nbytes(tensors: Any) -> int:
    if isinstance(tensors, torch.Tensor):
        return tensors.numel() * tensors.element_size()
    return sum(_nbytes(t) for t in tensors)


def _group_size(group: Any) -> int:
    """The size of a c10d op's process group (boxed as a ScriptObject by the dispatcher)."""
    from torch._C._distributed_c10d import ProcessGroup

    if isinstance(group, torch.ScriptObject):
        group = ProcessGroup.unbox(group)
    return int(group.size())


def _functional_group_size(name: Any) -> int:
    from torch._C._distributed_c10d import _resolve_process_group

    return _group_size(_resolve_process_group(name))


def _ops() -> dict[Any, tuple[str, Callable[..., tuple[int, int]]]]:
    """op -> (kind, args -> (payload bytes, group size))."""
    c10d, fn = torch.ops.c10d, torch.ops._c10d_functional
    return {
        c10d.allreduce_.default: ("all_reduce", lambda a: (_nbytes(a[0]), _group_size(a[1]))),
        c10d._allgather_base_.default: ("all_gather", lambda a: (_nbytes(a[0]), _group_size(a[2]))),
        c10d.allgather_.default: ("all_gather", lambda a: (_nbytes(a[0]), _group_size(a[2]))),
        c10d._reduce_scatter_base_.default: ("reduce_scatter", lambda a: (_nbytes(a[1]), _group_size(a[2]))),
        c10d.reduce_scatter_.default: ("reduce_scatter", lambda a: (_nbytes(a[1]), _group_size(a[2]))),
        c10d.broadcast_.default: ("broadcast", lambda a: (_nbytes(a[0]), _group_size(a[1]))),
        fn.all_reduce.default: ("all_reduce", lambda a: (_nbytes(a[0]), _functional_group_size(a[2]))),
        fn.all_reduce_.default: ("all_reduce", lambda a: (_nbytes(a[0]), _functional_group_size(a[2]))),
        fn.all_gather_into_tensor.default: ("all_gather", lambda a: (_nbytes(a[0]) * int(a[1]), int(a[1]))),
        fn.reduce_scatter_tensor.default: ("reduce_scatter", lambda a: (_nbytes(a[0]), int(a[2]))),
    }


@dataclass
class CommCounts:
    """Per collective kind: calls, payload bytes and ring wire bytes sent by one rank."""

    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    payload: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    wire: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))

    def add(self, kind: str, nbytes: int, group_size: int, times: int = 1) -> None:
        self.calls[kind] += times
        self.payload[kind] += nbytes * times
        self.wire[kind] += WIRE_FACTOR[kind] * nbytes * (group_size - 1) / max(group_size, 1) * times

    def scaled(self, times: int) -> CommCounts:
        out = CommCounts()
        for kind in KINDS:
            out.calls[kind], out.payload[kind] = self.calls[kind] * times, self.payload[kind] * times
            out.wire[kind] = self.wire[kind] * times
        return out

    def __add__(self, other: CommCounts) -> CommCounts:
        out = CommCounts()
        for kind in KINDS:
            out.calls[kind] = self.calls[kind] + other.calls[kind]
            out.payload[kind] = self.payload[kind] + other.payload[kind]
            out.wire[kind] = self.wire[kind] + other.wire[kind]
        return out

    @property
    def wire_total(self) -> float:
        return sum(self.wire.values())


class CommCounter(TorchDispatchMode):
    """Counts the collectives dispatched while it is active into ``self.counts`` (swap it to split phases)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts = CommCounts()
        self._ops = _ops()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        entry = self._ops.get(func)
        if entry is not None:
            kind, measure = entry
            nbytes, size = measure(args)
            self.counts.add(kind, nbytes, size)
        return func(*args, **(kwargs or {}))
