"""cod-plan's body: memory, communication and time of a cod-pretrain config on ``plan.world_size`` GPUs, without a
GPU (engine/plan.py fakes one step); and cod-pretrain's memory check at start (:func:`memory_warning`).

Time = model FLOPs per step (``cod_train.model.flops_per_token`` x tokens) / (world size x the GPU's dense peak
at the run's precision x the assumed ``plan.mfu``); communication time = the ring bytes one rank sends per step
/ ``plan.bandwidth_gb_s``, as if nothing overlapped. Memory fits when the peak plus ``plan.reserve_gb`` is at most
the GPU's usable memory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cod_train.config import PretrainConfig
from cod_train.core.errors import ConfigError

if TYPE_CHECKING:
    from cod_train.engine.plan import StepPlan

log = logging.getLogger("cod_train")
GIB = 2**30


@dataclass
class Plan:
    step: StepPlan
    capacity_gb: float  # usable per GPU, less the reserve
    peak_tflops: float
    flops_per_step: float
    step_seconds: float
    comm_seconds: float
    total_hours: float
    largest_micro_batch: int | None  # None: not searched; 0: not even 1 fits
    largest_peak: int | None = None  # its planned peak (bytes)

    @property
    def margin_gb(self) -> float:
        return self.capacity_gb - self.step.memory.peak / GIB

    @property
    def fits(self) -> bool:
        return self.margin_gb >= 0


def planned_vocab(cfg: PretrainConfig) -> int:
    """``model.vocab_size``, else the tokenizer's (``train:<N>``: N; a named one read as cod-pretrain would)."""
    from cod_train.model import padded_vocab_size

    if cfg.model.vocab_size is not None:
        return cfg.model.vocab_size
    spec = cfg.data.tokenizer
    if spec.startswith("train:") and spec[6:].isdigit():
        return padded_vocab_size(int(spec[6:]))
    from cod_train.data import build_tokenizer

    try:
        return padded_vocab_size(len(build_tokenizer(cfg.data)))
    except Exception as err:  # noqa: BLE001 - any failure to read it means: say the size
        raise ConfigError(f"model.vocab_size is null and the tokenizer {spec!r} could not be read ({err}); "
                          "set model.vocab_size") from None


def _gpu_config(cfg: PretrainConfig) -> PretrainConfig:
    """The model as it runs on a GPU: the loss chunk size a GPU takes by default (the fake tensors are on the CPU)."""
    from cod_train.model.loss import default_chunk_size

    if cfg.model.loss_chunk_size:
        return cfg
    import torch

    chunk = default_chunk_size(torch.device("cuda"))
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, loss_chunk_size=chunk))


def plan_micro_batch(cfg: PretrainConfig, world_size: int, micro_batch: int, vocab: int) -> StepPlan:
    """One faked step of ``cfg`` on ``world_size`` ranks with ``micro_batch`` rows per micro-batch."""
    import torch

    from cod_train.engine.plan import plan_step
    from cod_train.model import build_model
    from cod_train.train.optim import build_optimizer

    def meta_model() -> Any:
        with torch.device("meta"):
            return build_model(cfg.model, vocab)

    accum = cfg.train.global_batch_size // world_size // micro_batch
    return plan_step(meta_model, cfg.distributed, world_size=world_size, precision=cfg.train.precision,
                     micro_batch=micro_batch, accum=accum, seq_len=cfg.data.seq_len, vocab=vocab,
                     optimizer_fn=lambda m: build_optimizer(m, cfg.train), grad_clip=cfg.train.grad_clip)


def check_plannable(cfg: PretrainConfig, world_size: int) -> int:
    """The configured micro-batch rows on ``world_size`` ranks; a ConfigError for what cannot be planned."""
    from cod_train.train.loop import micro_batch_rows

    engine = cfg.distributed.engine
    if engine == "single" and world_size > 1:
        raise ConfigError(f"distributed=single runs one process, but plan.world_size={world_size}: plan "
                          "distributed=ddp|fsdp|deepspeed, or plan.world_size=1")
    if engine == "deepspeed" and cfg.distributed.zero_stage not in (1, 2, 3):
        raise ConfigError(f"distributed.zero_stage={cfg.distributed.zero_stage} cannot be planned")
    if engine == "fsdp" and world_size % cfg.distributed.hsdp_replicas:
        raise ConfigError(f"distributed.hsdp_replicas={cfg.distributed.hsdp_replicas} must divide "
                          f"plan.world_size={world_size}")
    return micro_batch_rows(cfg.train, world_size)


def _capacity(cfg: PretrainConfig) -> tuple[float, float]:
    memory_gb, peak = cfg.plan.gpu_spec(cfg.train.precision)
    return memory_gb - cfg.plan.reserve_gb, peak


def largest_fitting(cfg: PretrainConfig, world_size: int, vocab: int, known: StepPlan,
                    capacity_gb: float) -> tuple[int, int | None]:
    """The largest micro-batch (a divisor of the rank's share of the global batch) whose planned peak fits, and
    that peak; (0, None) when not even 1 fits.

    The peak grows with the micro-batch, about linearly (activations): the known plan and one more point (the
    whole share when the known one fits, else 1) give a line; the largest divisor under it is planned, then the
    larger divisors while they fit, or the smaller ones until one fits."""
    share = cfg.train.global_batch_size // world_size
    sizes = [m for m in range(1, share + 1) if share % m == 0]
    limit = capacity_gb * GIB
    points = {known.micro_batch: known.memory.peak}

    def peak(m: int) -> int:
        if m not in points:
            points[m] = plan_micro_batch(cfg, world_size, m, vocab).memory.peak
        return points[m]

    other = sizes[-1] if known.memory.peak <= limit else 1
    peak(other)
    (m0, p0), (m1, p1) = sorted(points.items())[0], sorted(points.items())[-1]
    slope = (p1 - p0) / (m1 - m0) if m1 != m0 else 0.0
    guess = ([m for m in sizes if p0 + slope * (m - m0) <= limit] or [sizes[0]])[-1]
    if peak(guess) <= limit:
        best = guess
        for m in (m for m in sizes if m > guess):
            if peak(m) > limit:
                break
            best = m
        return best, points[best]
    for m in sorted((m for m in sizes if m < guess), reverse=True):
        if peak(m) <= limit:
            return m, points[m]
    return 0, None


def make_plan(cfg: PretrainConfig, world_size: int, *, capacity_gb: float | None = None,
              search: bool | None = None) -> Plan:
    """The plan of ``cfg`` on ``world_size`` GPUs (``capacity_gb``: the usable memory when known, e.g. the GPU
    cod-pretrain runs on; else ``plan.gpu``'s less ``plan.reserve_gb``)."""
    from cod_train.model import flops_per_token, model_config

    micro = check_plannable(cfg, world_size)
    cfg = _gpu_config(cfg)
    vocab = planned_vocab(cfg)
    step = plan_micro_batch(cfg, world_size, micro, vocab)
    if cfg.model.use_kernels:
        step.notes.append("planned without the Liger kernels of model.use_kernels (they hold less)")
    spec_capacity, peak_tflops = _capacity(cfg)
    capacity = spec_capacity if capacity_gb is None else capacity_gb
    tokens = cfg.train.global_batch_size * cfg.data.seq_len
    flops = float(flops_per_token(model_config(cfg.model, vocab), cfg.data.seq_len)) * tokens
    step_s = flops / (world_size * peak_tflops * 1e12 * cfg.plan.mfu)
    comm_s = step.comm.wire_total / (cfg.plan.bandwidth_gb_s * 1e9)
    largest: tuple[int | None, int | None] = (None, None)
    if cfg.plan.search if search is None else search:
        largest = largest_fitting(cfg, world_size, vocab, step, capacity)
    return Plan(step, capacity, peak_tflops, flops, step_s, comm_s, step_s * cfg.train.max_steps / 3600, *largest)


def verdict(plan: Plan) -> str:
    peak = plan.step.memory.peak / GIB
    if plan.fits:
        return (f"fits: peak {peak:.1f} GiB per GPU of {plan.capacity_gb:.1f} GiB usable, "
                f"{plan.margin_gb:.1f} GiB to spare")
    return f"does not fit, by {-plan.margin_gb:.1f} GiB: peak {peak:.1f} GiB per GPU of {plan.capacity_gb:.1f} GiB usable"


def _gib(n: float) -> str:
    return f"{n / GIB:10.2f} GiB"


def render(cfg: PretrainConfig, plan: Plan, world_size: int) -> str:
    """The table cod-plan prints."""
    step, mem, comm = plan.step, plan.step.memory, plan.step.comm
    gpu = cfg.plan.gpu if cfg.plan.gpu != "custom" else f"custom ({cfg.plan.gpu_memory_gb} GiB, {cfg.plan.peak_tflops} TFLOP/s)"
    lines = [
        f"cod-plan: {cfg.model.name} ({cfg.model.norm_type}, residual {cfg.model.residual}) on {world_size} x {gpu}, "
        f"engine {step.engine}, {cfg.train.precision}, activation checkpointing "
        f"{cfg.distributed.activation_checkpointing}",
        f"  how: {step.method}",
        f"  micro-batch {step.micro_batch} x {cfg.data.seq_len} tokens, {step.accum} per step per rank "
        f"(global batch {cfg.train.global_batch_size})",
        "",
        "memory per rank (rank 0)",
        f"  parameters          {_gib(mem.params)}",
        f"  gradients           {_gib(mem.grads)}",
        f"  optimizer state     {_gib(mem.optimizer)}",
        f"  activations         {_gib(mem.activations)}   (at the peak)",
        f"  temporaries         {_gib(mem.temporaries)}   (at the peak)",
        f"  gathered / buckets  {_gib(mem.buffers)}   (at the peak: unsharded weights/grads, comm buffers)",
        f"  peak                {_gib(mem.peak)}",
        f"  usable              {plan.capacity_gb:10.2f} GiB   ({cfg.plan.reserve_gb} GiB reserved for the CUDA "
        "context, NCCL and the allocator)",
        "",
        "collectives per optimizer step, per rank (payload = full tensor; wire = ring bytes sent)",
    ]
    for kind in comm.calls:
        if comm.calls[kind]:
            lines.append(f"  {kind:<15} {comm.calls[kind]:6d} calls  payload {_gib(comm.payload[kind])}  "
                         f"wire {_gib(comm.wire[kind])}")
    if not any(comm.calls.values()):
        lines.append("  none")
    lines += [
        "",
        f"compute: {plan.flops_per_step / 1e15:.2f} PFLOP per step; at {plan.peak_tflops:g} TFLOP/s peak and "
        f"an assumed MFU of {cfg.plan.mfu:.0%}: {plan.step_seconds:.2f} s per step, "
        f"{plan.total_hours:.1f} h for {cfg.train.max_steps} steps ({plan.total_hours * world_size:.0f} GPU-hours)",
        f"communication: {plan.comm_seconds:.2f} s per step at {cfg.plan.bandwidth_gb_s:g} GB/s if not overlapped",
    ]
    lines += [f"note: {n}" for n in step.notes]
    if plan.largest_micro_batch is not None:
        found = (f"{plan.largest_micro_batch} (peak {(plan.largest_peak or 0) / GIB:.1f} GiB)"
                 if plan.largest_micro_batch else "none (not even 1)")
        lines.append(f"largest micro-batch that fits: {found}")
    lines.append(verdict(plan))
    return "\n".join(lines)


def plan_json(cfg: PretrainConfig, plan: Plan, world_size: int, seconds: float) -> dict[str, Any]:
    from cod_train.config import flatten_config

    return {
        "world_size": world_size, "gpu": cfg.plan.gpu, "usable_gb": plan.capacity_gb,
        "peak_tflops": plan.peak_tflops, "mfu": cfg.plan.mfu, "engine": plan.step.engine,
        "method": plan.step.method, "micro_batch": plan.step.micro_batch, "accum": plan.step.accum,
        "memory_bytes": asdict(plan.step.memory), "collectives": asdict(plan.step.comm),
        "flops_per_step": plan.flops_per_step, "step_seconds": plan.step_seconds,
        "comm_seconds": plan.comm_seconds, "total_hours": plan.total_hours,
        "largest_micro_batch": plan.largest_micro_batch, "largest_peak_bytes": plan.largest_peak, "fits": plan.fits, "margin_gb": plan.margin_gb,
        "verdict": verdict(plan), "notes": plan.step.notes, "planning_seconds": seconds,
        "config": flatten_config(cfg),
    }


def run_plan(cfg: PretrainConfig) -> int:
    """The whole cod-plan command after parsing."""
    from cod_train.core.io import atomic_write_json

    cfg.validate()
    start = time.perf_counter()
    world = cfg.plan.world_size
    plan = make_plan(cfg, world)
    seconds = time.perf_counter() - start
    print(render(cfg, plan, world), flush=True)
    out = Path(cfg.run_dir) / "plan.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, plan_json(cfg, plan, world, seconds))
    print(f"plan written to {out} ({seconds:.1f} s)", flush=True)
    return 0


def launch_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)


def memory_warning(cfg: PretrainConfig, world_size: int, usable_gb: float) -> str | None:
    """cod-pretrain's check at start: a warning naming the plan's numbers when the configured micro-batch would
    not fit in ``usable_gb`` (the GPU's memory less ``plan.reserve_gb``), else None."""
    plan = make_plan(cfg, world_size, capacity_gb=usable_gb, search=False)
    if plan.fits:
        return None
    mem = plan.step.memory
    return (f"cod-plan expects this run to run out of GPU memory: {verdict(plan)} (parameters "
            f"{mem.params / GIB:.1f}, gradients {mem.grads / GIB:.1f}, optimizer {mem.optimizer / GIB:.1f}, "
            f"activations {mem.activations / GIB:.1f}, gathered/buckets {mem.buffers / GIB:.1f} GiB; micro-batch "
            f"{plan.step.micro_batch}). Lower train.micro_batch_size, set distributed.activation_checkpointing="
            "full, or shard more (distributed=fsdp); cod-plan finds the largest micro-batch that fits. "
            "plan.check=false skips this check")
