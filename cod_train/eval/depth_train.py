"""Cheap depth diagnostics inside the training loop (every ``train.diag_every`` steps).

Metric keys (one row in ``metrics.jsonl`` per diagnostic step, next to ``"step"``):

- the ``metrics`` of the diagnostics of :mod:`cod_train.eval.depth_registry` (``IN_TRAINING``), the fields of
  cod-analyze's entry on the same rows: ``"diag/layer_var"`` (list of L floats, variance of each layer's output
  h_l, all elements of the real tokens), ``"diag/layer_grad_norm"`` (list of L floats, L2 norm of each layer's
  parameter gradients, from the step's own ``.grad``), ``"diag/bi"``, ``"diag/lens_kl"``, ``"diag/lens_top1"``,
  ``"diag/settling_depth"``, ``"diag/attn_ratio"`` ... (docs/depth.md);
- the learned scalars of the depth zoo (:mod:`cod_train.eval.depth_scalars`), e.g. ``"diag/gpas_gate"``,
  ``"diag/input_layernorm.alpha"``: lists of L floats (None where a layer has no such parameter), and
  model-level floats such as ``"diag/embed_scale"``.

wandb cannot plot lists: log :func:`scalarize_diagnostics` of the row there (``diag/layer_var/L01`` ...).

Two ways to use it; both must run on **every rank** (grad norms all-reduce under FSDP2):

1. One call, after ``backward`` (all micro-batches) and before ``optimizer.step()`` / ``zero_grad()``::

       if cfg.train.diag_every and step % cfg.train.diag_every == 0:
           row.update(training_diagnostics(model, micro_batch))

   It reads the gradients, then runs one extra no-grad forward on ``max_rows`` rows of the batch with
   forward hooks registered for that call only. Cost per diag step ~ one forward of ``max_rows`` rows
   (< 1/3 of a training micro-step of the same rows); amortized over ``diag_every`` >= 10 steps that is
   well under 2% of step time. Between diag steps nothing is registered and nothing runs.

2. Zero extra forward: piggyback on the step's first micro-batch::

       diag = TrainingDiagnostics(model)              # once
       with diag.capture(micro_batch, enabled=is_diag_step):   # around forward (+ backward)
           loss = model(...); loss.backward()
       ...                                            # remaining micro-batches, outside capture
       if is_diag_step:
           row.update(diag.collect())                 # before optimizer.step() / zero_grad()

   Each layer records only its first forward inside ``capture`` (activation-checkpointing recomputation
   is ignored). Stats stay on the device until ``collect`` (one host sync per diag step).

Wrappers: DDP / DeepSpeed ``.module`` and ``torch.compile``'s ``_orig_mod`` are stripped, and the extra forward
of 1. runs under ``torch.compiler.set_stance("force_eager")`` (blocks compiled in place run eagerly), so compile
never traces the hooks nor recompiles for them. FSDP2
(``fully_shard``) keeps sharded DTensor gradients: each rank sums its local shard's squares per layer and one
all-reduce of an L-vector over the mesh's shard dimension(s) gives the exact norms (no ``full_tensor``
gather). DeepSpeed keeps gradients in its own partitions: its parameters (ZeRO-3 ``ds_id``, ZeRO-1/2
``_hp_mapping``) are read with ``deepspeed.utils.safe_get_full_grad`` (collective under ZeRO; not covered by
this repository's tests).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from cod_train.eval.depth_capture import Accumulator, capture_batch, start, variance_of_sums, variance_sums
from cod_train.eval.depth_hooks import (
    Batch,
    decoder_layers,
    model_device,
    residual_scheme,
    residual_stream_hooks,
    to_device,
    unwrap_model,
    valid_token_mask,
)
from cod_train.eval.depth_registry import DIAG_PREFIX, IN_TRAINING, diagnostic
from cod_train.eval.depth_scalars import learned_scalars

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

LAYER_VAR_KEY = diagnostic("variance").metrics[0][0]  # "diag/layer_var"
LAYER_GRAD_NORM_KEY = diagnostic("grad_norms").metrics[0][0]  # "diag/layer_grad_norm", read from the step's .grad


DS_ATTRS = ("ds_id", "_hp_mapping")  # DeepSpeed ZeRO-3 / ZeRO-1,2 and bf16-optimizer params


def _is_deepspeed_param(param: nn.Parameter) -> bool:
    # presence, not value: `_hp_mapping` is None on ranks owning no fragment of the parameter, and those
    # ranks must still join the all-reduce inside safe_get_full_grad
    return any(hasattr(param, attr) for attr in DS_ATTRS)


def _param_grad(param: nn.Parameter) -> torch.Tensor | None:
    if (param.grad is None and _is_deepspeed_param(param)) or getattr(param, "_hp_grad", None) is not None:
        from deepspeed.utils import safe_get_full_grad

        return safe_get_full_grad(param)
    return param.grad


def _local_sq_and_mesh(grad: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Sum of squares of this rank's part of ``grad`` and, for a DTensor, (mesh, placements)."""
    if hasattr(grad, "to_local") and hasattr(grad, "device_mesh"):
        dtensor = cast("DTensor", grad)
        return dtensor.to_local().float().square().sum(), (dtensor.device_mesh, dtensor.placements)
    return grad.float().square().sum(), None


def _all_reduce_sharded(sq: torch.Tensor, mesh_info: Any) -> torch.Tensor:
    """Sum ``sq`` over the mesh dimensions along which the gradients are sharded (FSDP2 / HSDP)."""
    import torch.distributed as dist

    mesh, placements = mesh_info
    for dim, placement in enumerate(placements):
        if placement.is_shard():
            dist.all_reduce(sq, group=mesh.get_group(dim))
    return sq


def per_layer_grad_norms(model: nn.Module) -> list[float]:
    """L2 norm of the current ``.grad`` of each decoder layer's parameters (0.0 where none has a grad).

    Call after backward and before the optimizer step. Under FSDP2 it is a collective (all ranks).
    """
    layers = decoder_layers(model)
    sq = torch.zeros(len(layers), dtype=torch.float32, device=model_device(model))
    mesh_info = None
    for idx, layer in enumerate(layers):
        for param in layer.parameters():
            grad = _param_grad(param)
            if grad is None:
                continue
            local, info = _local_sq_and_mesh(grad)
            sq[idx] += local.to(sq.device)
            mesh_info = mesh_info or info
    if mesh_info is not None:
        sq = _all_reduce_sharded(sq, mesh_info)
    return [math.sqrt(v) for v in sq.double().tolist()]


class TrainingDiagnostics:
    """Per-layer output variance from the trainer's own forward, plus per-layer grad norms."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._stats: dict[int, torch.Tensor] = {}

    @contextlib.contextmanager
    def capture(self, batch: Batch | None = None, *, enabled: bool = True) -> Iterator[None]:
        """Register forward hooks for the block (only when ``enabled``); ``batch`` masks padding."""
        if not enabled:
            yield
            return
        mask = valid_token_mask(batch) if batch is not None and "labels" in batch else None

        def record(idx: int, hidden: torch.Tensor) -> None:
            # first forward only: ignores activation-checkpoint recompute and later micro-batches
            if idx in self._stats:
                return
            self._stats[idx] = variance_sums(hidden, mask)  # float64 on the device, one sync in collect

        with residual_stream_hooks(self.model, record):
            yield

    def collect(self, *, grads: bool = True) -> dict[str, Any]:
        """``{"diag/layer_var": [L], "diag/layer_grad_norm": [L]}`` (keys present when measured); resets."""
        row: dict[str, Any] = {}
        n_layers = len(decoder_layers(self.model))
        if all(i in self._stats for i in range(1, n_layers + 1)):
            stats = torch.stack([self._stats[i] for i in range(1, n_layers + 1)]).cpu()
            row[LAYER_VAR_KEY] = variance_of_sums(stats).tolist()
        self._stats = {}
        if grads and any(
            p.grad is not None or _is_deepspeed_param(p) for p in decoder_layers(self.model).parameters()
        ):
            row[LAYER_GRAD_NORM_KEY] = per_layer_grad_norms(self.model)
        return row


def training_diagnostics(model: nn.Module, batch: Batch, *, max_rows: int = 4) -> dict[str, Any]:
    """One-call in-training diagnostics, the registry's ``metrics`` keys (:mod:`cod_train.eval.depth_registry`):
    grad norms from the current ``.grad``, the learned scalars, then, from one no-grad capture forward on the first
    ``max_rows`` rows of ``batch`` (:mod:`cod_train.eval.depth_capture`): the variance of each layer's output,
    Block Influence, the logit lens (KL to the final distribution, top-1 agreement, settling depth) and the
    sub-layer ratios: the same numbers as cod-analyze's entries on those rows.

    Call on every rank after backward, before ``optimizer.step()``.
    """
    row = TrainingDiagnostics(model).collect(grads=True)
    inner = unwrap_model(model)
    row.update({f"{DIAG_PREFIX}{k}": v for k, v in learned_scalars(inner).items()})
    small = to_device(
        {k: v[:max_rows] for k, v in batch.items() if isinstance(v, torch.Tensor)}, model_device(inner)
    )
    captured = [d for d in IN_TRAINING if d.source == "capture"]
    accumulators: list[Accumulator] = [start(d) for d in captured]
    scheme = residual_scheme(inner)
    recorder = scheme.recorder(inner, valid_token_mask(small)) if scheme is not None else None
    with recorder if recorder is not None else contextlib.nullcontext():  # the scheme's input-dependent weights
        capture_batch(inner, small, accumulators)
    if recorder is not None:
        row.update({f"{DIAG_PREFIX}{k}": v for k, v in recorder.stats().items()})
    for diag, acc in zip(captured, accumulators, strict=True):
        entry = acc.finish()
        row.update({key: entry[field] for key, field in diag.metrics})
    return row


def scalarize_diagnostics(row: dict[str, Any]) -> dict[str, float]:
    """``{"diag/layer_var": [a, b]}`` -> ``{"diag/layer_var/L01": a, "diag/layer_var/L02": b}`` for wandb;
    other keys pass through unchanged."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if key.startswith(DIAG_PREFIX) and isinstance(value, (list, tuple)):
            width = max(2, len(str(len(value))))
            for idx, item in enumerate(value, start=1):
                if item is not None:  # a layer without this parameter (learned scalars)
                    flat[f"{key}/L{idx:0{width}d}"] = item
        else:
            flat[key] = value
    return flat
