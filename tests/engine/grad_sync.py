"""Run under torchrun: the tiny runs of ``tiny.py`` (one per argument) while counting FSDP2's collectives.

FSDP2 (torch 2.13) reduces gradients with ``torch.distributed.reduce_scatter_single`` (``DefaultReduceScatter``
in ``fsdp/_fully_shard/_fsdp_collectives.py``, looked up on the module at call time), gathers parameters with
``all_gather_single`` and, under HSDP, all-reduces the reduced shard across replicas with ``all_reduce`` on the
replicate group (the loop's own all-reduces use the default group). Each is wrapped here to count calls; a
``diagnostics_fn`` (called once per step, after the backward passes) snapshots the counters. Rank 0 prints one
line per run: ``COUNTS {"run": ..., "units": <FSDP modules>, "reduce_scatter": [per step], ...}``.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.helpers.engine_run import run  # noqa: E402

CALLS: Counter[str] = Counter()


def _counting(name: str, fn, *, only_subgroups: bool = False):
    def wrapper(*args, **kwargs):
        group = kwargs.get("group")
        if not only_subgroups or (group is not None and not _is_host_group(group)):
            CALLS[name] += 1
        return fn(*args, **kwargs)

    return wrapper


def _is_host_group(group) -> bool:
    """The loop's host-side sums (token counts, the stop flag) go through their own gloo group: not gradients."""
    from cod_train.engine import distributed

    return any(group is host.group for host in distributed._HOST_GROUP)


dist.reduce_scatter_single = _counting("reduce_scatter", dist.reduce_scatter_single)
dist.all_gather_single = _counting("all_gather", dist.all_gather_single)
dist.all_reduce = _counting("hsdp_all_reduce", dist.all_reduce, only_subgroups=True)


class StepCounts:
    """``diagnostics_fn``: the collectives issued since the previous step's snapshot."""

    def __init__(self) -> None:
        self.last: Counter[str] = Counter(CALLS)
        self.per_step: dict[str, list[int]] = {k: [] for k in ("reduce_scatter", "all_gather", "hsdp_all_reduce")}
        self.units = 0

    def __call__(self, model, step: int, batch) -> dict:
        from torch.distributed.fsdp import FSDPModule

        self.units = sum(isinstance(m, FSDPModule) for m in model.modules())
        for key, steps in self.per_step.items():
            steps.append(CALLS[key] - self.last[key])
        self.last = Counter(CALLS)
        return {}


if __name__ == "__main__":
    torch.set_num_threads(1)
    for spec in sys.argv[1:]:
        counts = StepCounts()
        result = run(*spec.split(), "train.diag_every=1", diagnostics_fn=counts)
        if dist.get_rank() == 0:
            name = Path(next(o for o in spec.split() if o.startswith("run_dir="))[8:]).name
            print("COUNTS " + json.dumps({"run": name, "units": counts.units, **counts.per_step}), flush=True)
    from cod_train.engine.distributed import destroy_distributed

    destroy_distributed()
