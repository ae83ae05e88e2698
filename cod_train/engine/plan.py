"""cod-plan's engine half: one training step on fake tensors through the real ``parallelize``, per rank.

The model (built on the meta device by the caller) is wrapped by :func:`~cod_train.engine.parallelize.parallelize`
under ``FakeTensorMode`` (tensors with shapes, dtypes and devices but no storage) on a fake process group
(``torch.testing._internal.distributed.fake_pg``: every collective returns at once), as rank 0 of ``world_size``.
One step then runs as the training loop runs it (``engine.accumulate`` / ``autocast`` / forward with the loss /
``backward`` for a non-last and the last micro-batch, ``clip_grad_norm``, ``optimizer_step``), after the
optimizer state was created by one step on zero gradients, so the tracked step holds it as every step after the
first does. torch's memory trackers (``torch.distributed._tools``: ``FSDPMemTracker`` for FSDP2, ``MemTracker``
otherwise), which torchtitan's memory estimator also uses, follow every storage and give the peak and what it was
made of; :class:`~cod_train.engine.plan_comm.CommCounter` counts the collectives.

What runs faked and what is counted instead (said in every plan):

- ``single``, ``fsdp`` (FSDP2 and HSDP): the real engine, faked.
- ``ddp``: DDP's C++ reducer reads its parameters' data when it is built, so the step is faked on the single
  engine; the reducer's gradient buckets (a second copy of the gradients: ``gradient_as_bucket_view`` is off)
  and its all-reduce of every gradient once per step are added analytically.
- ``deepspeed``: DeepSpeed cannot be built on fake tensors; activations and temporaries come from the faked
  single-engine step (the same autocast compute), parameters, gradients, optimizer state, buckets and
  collectives from ZeRO's layout (:func:`zero_static`), analytically.

``torch.compile`` is planned off (eager activations), Liger kernels are not planned, and the fake tensors live on
the CPU: the GPU-only choices that change memory are made as on a GPU by the caller (the loss chunk size).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cod_train.config import DistributedConfig
from cod_train.core.errors import ConfigError
from cod_train.engine.distributed import DistEnv
from cod_train.engine.engines import OptimizerFactory
from cod_train.engine.layers import decoder_layers
from cod_train.engine.parallelize import parallelize
from cod_train.engine.plan_comm import CommCounter, CommCounts

# DeepSpeed's defaults that set its buffers (deepspeed/runtime/zero/config.py): reduce_bucket_size elements
DS_REDUCE_BUCKET = 500_000_000
FAKED = {"single": "faked (real engine)", "fsdp": "faked (real FSDP2 engine, fake process group)",
         "ddp": "faked on the single engine; DDP's gradient buckets and all-reduce counted analytically",
         "deepspeed": "analytic ZeRO layout (DeepSpeed cannot run on fake tensors); activations from a faked "
                      "single-engine step"}


@dataclass
class StepMemory:
    """Bytes per rank. ``params`` / ``grads`` / ``optimizer``: what the rank holds (grads: at the end of the
    backward); ``activations`` / ``temporaries`` / ``buffers`` (gathered weights, communication buckets): at
    the peak; ``peak``: the most the rank holds at once during the step."""

    params: int = 0
    grads: int = 0
    optimizer: int = 0
    activations: int = 0
    temporaries: int = 0
    buffers: int = 0
    peak: int = 0


@dataclass
class StepPlan:
    engine: str
    method: str
    world_size: int
    micro_batch: int
    accum: int
    memory: StepMemory
    comm: CommCounts
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def fake_process_group(world_size: int) -> Iterator[DistEnv]:
    """A fake default process group of ``world_size`` ranks, this process rank 0 (none for one process)."""
    import torch.distributed as dist

    if world_size == 1:
        yield DistEnv()
        return
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise ConfigError("cod-plan needs its own (fake) process group: run it outside a distributed launch")
    dist.init_process_group("fake", rank=0, world_size=world_size, store=FakeStore())
    try:
        yield DistEnv(world_size=world_size, backend="fake", initialized=True)
    finally:
        dist.destroy_process_group()


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _bytes(tensors: Any) -> int:
    return sum(_local(t).numel() * _local(t).element_size() for t in tensors)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return _bytes(v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor))


def _init_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Adam's moments exist from the first step on: create them with one step on zero gradients."""
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _tracker(engine: Any) -> Any:
    if engine.name == "fsdp":
        from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

        return FSDPMemTracker(engine.module, engine.optimizer)
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(engine.module, engine.optimizer)
    return tracker


ACTIVATION_KEYS = {"Activation"}
BUFFER_KEYS = {"Unsharded Param", "Unsharded Grad", "All Gather", "Reduce Scatter"}
STATIC_KEYS = {"Parameter", "Sharded Param", "Gradient", "Sharded Grad", "Optstate", "OptState", "Buffer", "Total"}


def _peak_parts(tracker: Any) -> tuple[int, int, int, int]:
    """(peak, activations, temporaries, gathered / communication buffers) at the tracker's peak."""
    snapshot: dict[Any, int] = next(iter(tracker.get_tracker_snapshot("peak").values()), {})
    by_name = {str(getattr(k, "value", k)): int(v) for k, v in snapshot.items()}
    act = sum(v for k, v in by_name.items() if k in ACTIVATION_KEYS)
    buffers = sum(v for k, v in by_name.items() if k in BUFFER_KEYS)
    temps = sum(v for k, v in by_name.items() if k not in ACTIVATION_KEYS | BUFFER_KEYS | STATIC_KEYS)
    return by_name.get("Total", 0), act, temps, buffers


def _fake_step(engine: Any, *, micro_batch: int, accum: int, seq_len: int, vocab: int,
               counter: CommCounter) -> tuple[StepMemory, CommCounts]:
    """One tracked optimizer step: a non-last micro-batch (when accumulating), the last one, clip, step. The
    collectives: the non-last micro-batch's count times ``accum - 1``, plus the last one's and the step's."""
    ids = torch.randint(0, vocab, (micro_batch, seq_len))
    memory = StepMemory(params=_bytes(engine.module.parameters()), optimizer=optimizer_state_bytes(engine.optimizer))
    phases: list[CommCounts] = []
    tracker = _tracker(engine)
    with tracker, counter:
        for last in ([False, True] if accum > 1 else [True]):
            counter.counts = CommCounts()
            with engine.accumulate(last=last), engine.autocast():
                out = engine.model(input_ids=ids, labels=ids, shift_labels=ids,
                                   num_items_in_batch=micro_batch * seq_len * accum, use_cache=False)
            engine.backward(out.loss)
            del out
            phases.append(counter.counts)
            tracker.reset_mod_stats()  # per-module statistics of one forward/backward; the peak is kept
        memory.grads = _bytes(p.grad for p in engine.module.parameters() if p.grad is not None)
        counter.counts = CommCounts()
        engine.clip_grad_norm()
        engine.optimizer_step(1e-4, torch.zeros((), dtype=torch.bool))
        phases.append(counter.counts)
    memory.peak, memory.activations, memory.temporaries, memory.buffers = _peak_parts(tracker)
    comm = phases[-2] + phases[-1] + (phases[0].scaled(accum - 1) if accum > 1 else CommCounts())
    return memory, comm


def _faked_engine(dist_cfg: DistributedConfig) -> DistributedConfig:
    """The engine that runs on fake tensors: compile off; DDP and DeepSpeed stepped on the single engine."""
    engine = dist_cfg.engine if dist_cfg.engine in ("single", "fsdp") else "single"
    return dataclasses.replace(dist_cfg, engine=engine, compile=False)


def plan_step(build_meta_model: Callable[[], nn.Module], dist_cfg: DistributedConfig, *, world_size: int,
              precision: str, micro_batch: int, accum: int, seq_len: int, vocab: int,
              optimizer_fn: OptimizerFactory, grad_clip: float) -> StepPlan:
    """Plan one optimizer step of rank 0 of ``world_size`` (see the module docstring)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    faked = _faked_engine(dist_cfg)
    model = build_meta_model()
    if precision == "bf16-pure":
        model.to(torch.bfloat16)  # on the meta device, before the fake mode: fake parameters cannot be cast
    counter = CommCounter()
    with fake_process_group(world_size if faked.engine == "fsdp" else 1) as env, \
            FakeTensorMode(allow_non_fake_inputs=True):
        engine = parallelize(model, faked, env, optimizer_fn=optimizer_fn, precision=precision,
                             micro_batch_size=micro_batch, grad_accum_steps=accum, grad_clip=grad_clip)
        with torch.no_grad():
            _init_optimizer_state(engine.module, engine.optimizer)
        memory, comm = _fake_step(engine, micro_batch=micro_batch, accum=accum, seq_len=seq_len, vocab=vocab,
                                  counter=counter)
        largest_layer = max(_bytes(layer.parameters()) for layer in decoder_layers(engine.module))
    plan = StepPlan(dist_cfg.engine, FAKED[dist_cfg.engine], world_size, micro_batch, accum, memory, comm)
    if dist_cfg.engine == "ddp":
        _add_ddp(plan)
    elif dist_cfg.engine == "deepspeed":
        _add_zero(plan, dist_cfg, largest_layer)
    if dist_cfg.compile:
        plan.notes.append("planned without torch.compile (eager activations; compiled blocks usually hold less)")
    return plan


def _add_ddp(plan: StepPlan) -> None:
    """DDP's reducer: a flat copy of the gradients (its buckets) from set-up on, one all-reduce of them per step."""
    buckets = plan.memory.grads
    plan.memory.buffers += buckets
    plan.memory.peak += buckets
    if plan.world_size > 1:
        plan.comm.add("all_reduce", buckets, plan.world_size)


def zero_static(stage: int, n_params: int, world_size: int, largest_layer: int,
                offload: bool) -> tuple[int, int, int, int]:
    """DeepSpeed ZeRO's bytes per rank here (fp32 weights, gradients and Adam state: engines.deepspeed_config):
    (parameters, gradients, optimizer state, buffers). The optimizer steps an fp32 copy of the rank's partition
    (4 bytes) with Adam's two moments (8); stage 2 and 3 reduce gradients through a bucket of
    ``reduce_bucket_size`` elements; stage 3 gathers each layer's weights while it runs (this one and the
    prefetched next)."""
    full, part = 4 * n_params, 4 * n_params // world_size
    params = part if stage == 3 else full
    grads = full if stage == 1 else part
    optimizer = 0 if offload else 3 * part
    bucket = 4 * min(DS_REDUCE_BUCKET, n_params) if stage >= 2 else 0
    gathered = 2 * largest_layer if stage == 3 else 0
    return params, grads, optimizer, bucket + gathered


def _add_zero(plan: StepPlan, dist_cfg: DistributedConfig, largest_layer_bytes: int) -> None:
    memory, n_world = plan.memory, plan.world_size
    n_params = memory.params // 4  # the single engine's fp32 weights (deepspeed refuses bf16-pure)
    stage, accum = dist_cfg.zero_stage, plan.accum
    params, grads, optimizer, buffers = zero_static(stage, n_params, n_world, largest_layer_bytes,
                                                    dist_cfg.offload_optimizer)
    memory.params, memory.grads, memory.optimizer, memory.buffers = params, grads, optimizer, buffers
    memory.peak = params + grads + optimizer + buffers + memory.activations + memory.temporaries
    comm, payload = CommCounts(), 4 * n_params
    if n_world > 1:
        comm.add("reduce_scatter", payload, n_world, times=1 if stage == 1 else accum)
        comm.add("all_gather", payload, n_world, times=2 * accum if stage == 3 else 1)
    plan.comm = comm
    if dist_cfg.offload_optimizer:
        plan.notes.append("optimizer state offloaded to CPU memory (not counted on the GPU)")
