"""Run under torchrun: the tiny runs of ``tiny.py`` (one per argument, ``train.precision=bf16-mixed`` added; the
in-training diagnostics run where ``train.diag_every`` says), recording what bf16-mixed means on the engine.
Rank 0 prints one line per run: ``NUMERICS {"run": ..., ...}`` with

- ``embed``, ``block_in``, ``block_out``: the dtypes of the residual stream in the training forwards: the embedding
  output, each decoder block's input and output (forward hooks, registered after the engine wrapped the model, so
  they see what the engine hands on);
- ``matmul``: the dtypes of the attention and MLP projections' outputs;
- ``reduced``: elements per dtype of the floating-point tensors that every reducing collective of ``torch.distributed``
  moved (wrapped before the engines look them up): DDP's buckets (sent through ``all_reduce`` by torch's default
  comm hook), FSDP2's reduce-scatter, DeepSpeed's reductions through ``deepspeed.comm``, the loop's loss;
- ``params``: the model's parameter count; ``steps``: optimizer steps run.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import cod_train.train.loop as loop  # noqa: E402
from cod_train.eval.depth_train import training_diagnostics  # noqa: E402
from tests.helpers.engine_run import run  # noqa: E402

REDUCED: Counter[str] = Counter()
REDUCING = ("all_reduce", "all_reduce_coalesced", "reduce", "reduce_scatter", "reduce_scatter_tensor",
            "reduce_scatter_single")


def _floating(values):
    for value in values:
        for t in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                yield t


def _recording(name: str, fn):
    def wrapper(*args, **kwargs):
        if name.startswith("reduce_scatter"):  # the input (the output buffer is its share, in the same dtype)
            moved = [args[1] if len(args) > 1 else kwargs.get("input", kwargs.get("input_tensor", kwargs.get("input_list")))]
        else:
            moved = [*args, *kwargs.values()]
        for t in _floating(moved):
            REDUCED[str(t.dtype).removeprefix("torch.")] += t.numel()
        return fn(*args, **kwargs)

    return wrapper


for _name in REDUCING:
    if hasattr(dist, _name):
        setattr(dist, _name, _recording(_name, getattr(dist, _name)))


class Recorder:
    """Forward hooks and DDP's comm hook on a freshly parallelized engine."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {k: set() for k in ("embed", "block_in", "block_out", "matmul")}
        self.params = 0

    def _add(self, key: str, module, tensor) -> None:
        if module.training and torch.is_grad_enabled() and isinstance(tensor, torch.Tensor):
            self.seen[key].add(str(tensor.dtype).removeprefix("torch."))

    def attach(self, engine) -> None:
        from cod_train.engine.layers import decoder_layers

        model = engine.module
        # a DTensor's numel is the whole parameter's; ZeRO-3 keeps it in ds_numel
        self.params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        model.model.embed_tokens.register_forward_hook(lambda m, a, out: self._add("embed", m, out))
        for layer in decoder_layers(model):
            layer.register_forward_pre_hook(lambda m, args: self._add("block_in", m, args[0]))
            layer.register_forward_hook(lambda m, args, out: self._add("block_out", m, out))
            for proj in (layer.self_attn.q_proj, layer.mlp.down_proj):
                proj.register_forward_hook(lambda m, args, out: self._add("matmul", m, out))
        if engine.name == "ddp":  # DDP's buckets through torch.distributed.all_reduce (wrapped above)
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            engine.model.register_comm_hook(None, allreduce_hook)


def diagnostics(model, step, batch):  # with train.diag_every: the loop's diagnostics forward, as cod-pretrain's
    return training_diagnostics(model, batch)


RECORDER = Recorder()
_parallelize = loop.parallelize


def _recorded_parallelize(*args, **kwargs):
    engine = _parallelize(*args, **kwargs)
    RECORDER.attach(engine)
    return engine


loop.parallelize = _recorded_parallelize


if __name__ == "__main__":
    torch.set_num_threads(1)
    for spec in sys.argv[1:]:
        REDUCED.clear()
        RECORDER = Recorder()
        result = run(*spec.split(), "train.precision=bf16-mixed", diagnostics_fn=diagnostics)
        if dist.get_rank() == 0:
            name = Path(next(o for o in spec.split() if o.startswith("run_dir="))[8:]).name
            row = {"run": name, **{k: sorted(v) for k, v in RECORDER.seen.items()}, "reduced": dict(REDUCED),
                   "params": RECORDER.params, "steps": result.step}
            print("NUMERICS " + json.dumps(row), flush=True)
    from cod_train.engine.distributed import destroy_distributed

    destroy_distributed()
