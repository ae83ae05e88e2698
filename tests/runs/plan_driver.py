"""Run under torchrun (or plain python for one process): the measured side of cod-plan's validation.

For each ``<model>:<engine>`` argument (model: a ``model=`` preset) this trains two real steps on real tensors
as the training loop does (``parallelize``, accumulate / autocast / forward / backward per micro-batch, clip,
optimizer step; the first step creates Adam's state) under torch's memory tracker (``MemTracker`` entered before
the model is built, so DDP's buckets count; ``FSDPMemTracker`` around FSDP2), and counts the collectives of the
second step independently of cod-plan: ``torch.distributed``'s Python collectives wrapped (FSDP2 calls them at
call time; DDP's reducer is given torch's default all-reduce comm hook, which calls ``dist.all_reduce`` per bucket). Rank 0 prints one line per run:
``MEASURED {"spec": ..., "peak": bytes, "all_gather": bytes, "reduce_scatter": bytes, "all_reduce": bytes}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

BYTES: Counter[str] = Counter()
_depth = [0]


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


def _arg(args, kwargs, index: int, *names: str):
    for name in names:
        if name in kwargs:
            return kwargs[name]
    return args[index]


def _counting(kind: str, fn, payload):
    """Wrap ``fn``; count the payload (``payload(args, kwargs)``: the full tensor) of outermost calls only (one
    collective may call another)."""

    def wrapper(*args, **kwargs):
        if _depth[0] == 0:
            BYTES[kind] += _nbytes(payload(args, kwargs))
        _depth[0] += 1
        try:
            return fn(*args, **kwargs)
        finally:
            _depth[0] -= 1

    return wrapper


def _gathered(args, kwargs):
    return _arg(args, kwargs, 0, "output_tensor", "output")


def _scattered(args, kwargs):
    return _arg(args, kwargs, 1, "input_tensor", "input")


dist.all_gather_single = _counting("all_gather", dist.all_gather_single, _gathered)
dist.all_gather_into_tensor = _counting("all_gather", dist.all_gather_into_tensor, _gathered)
dist.reduce_scatter_single = _counting("reduce_scatter", dist.reduce_scatter_single, _scattered)
dist.reduce_scatter_tensor = _counting("reduce_scatter", dist.reduce_scatter_tensor, _scattered)
dist.all_reduce = _counting("all_reduce", dist.all_reduce, lambda args, kwargs: _arg(args, kwargs, 0, "tensor"))


def config(model: str, engine: str):
    from tests.helpers.plan import plan_config

    return plan_config(model, engine)


def measure(model_name: str, engine_name: str, world: int) -> dict:
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed._tools.mem_tracker import MemTracker

    from cod_train.engine.distributed import DistEnv
    from cod_train.engine.parallelize import parallelize
    from cod_train.model import build_model
    from cod_train.runs.plan import planned_vocab
    from cod_train.train.optim import build_optimizer

    cfg = config(model_name, engine_name)
    vocab = planned_vocab(cfg)
    micro = cfg.train.micro_batch_size
    accum = cfg.train.global_batch_size // world // micro
    env = DistEnv(rank=dist.get_rank() if world > 1 else 0, world_size=world, initialized=world > 1)
    torch.manual_seed(0)
    outer = MemTracker() if engine_name != "fsdp" else contextlib.nullcontext()
    with outer:
        model = build_model(cfg.model, vocab)
        engine = parallelize(model, cfg.distributed, env, optimizer_fn=lambda m: build_optimizer(m, cfg.train),
                             precision=cfg.train.precision, micro_batch_size=micro, grad_accum_steps=accum,
                             grad_clip=cfg.train.grad_clip)
        if engine_name == "ddp":  # its Python all-reduce per bucket (the wrapped dist.all_reduce), not the C++ one
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            engine.model.register_comm_hook(None, allreduce_hook)
        tracker = outer if engine_name != "fsdp" else FSDPMemTracker(engine.module, engine.optimizer)
        ids = torch.randint(0, vocab, (micro, cfg.data.seq_len))
        with tracker if engine_name == "fsdp" else contextlib.nullcontext():
            for _step in range(2):
                BYTES.clear()
                for i in range(accum):
                    with engine.accumulate(last=i == accum - 1), engine.autocast():
                        out = engine.model(input_ids=ids, labels=ids, shift_labels=ids,
                                           num_items_in_batch=micro * cfg.data.seq_len * accum, use_cache=False)
                    engine.backward(out.loss)
                    del out
                    tracker.reset_mod_stats()  # per-module statistics of one forward/backward; the peak is kept
                engine.clip_grad_norm()
                engine.optimizer_step(1e-4, torch.zeros((), dtype=torch.bool))
        peak = next(iter(tracker.get_tracker_snapshot("peak").values()))["Total"]
    return {"spec": f"{model_name}:{engine_name}", "peak": int(peak), **{k: int(v) for k, v in BYTES.items()}}


def main() -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    for spec in sys.argv[1:]:
        model_name, engine_name = spec.split(":")
        result = measure(model_name, engine_name, world)
        if world == 1 or dist.get_rank() == 0:
            print("MEASURED " + json.dumps(result), flush=True)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
