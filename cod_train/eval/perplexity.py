"""Perplexity over held-out batches: exp(mean token loss), the papers' metric.

Works for any causal LM following transformers' loss conventions or returning ``.logits`` (ours, any HF model) and for wrapped models (DDP, FSDP2,
DeepSpeed). Batches are ``{"input_ids", "labels"}`` with already-shifted labels (-100 = ignored). Under
data parallelism every rank evaluates its share and the sums are all-reduced; all ranks run the same number
of forward passes (sharded engines need that), stopping when any rank runs out or the token budget is met.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from cod_train.core.constants import IGNORE_INDEX


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def batch_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, int]:
    """Sum of token cross-entropies and the number of counted tokens for one batch."""
    input_ids = batch["input_ids"].to(device)
    labels = batch["labels"].to(device)
    kwargs: dict[str, Any] = {"input_ids": input_ids}
    if "attention_mask" in batch:
        kwargs["attention_mask"] = batch["attention_mask"].to(device)
    # num_items_in_batch=1 makes the model return the loss *sum*; ours then never materializes full logits.
    out = model(**kwargs, labels=labels, shift_labels=labels, num_items_in_batch=1)
    if out.loss is not None:
        loss = out.loss.float()
    else:  # a model without transformers' loss conventions
        logits = out.logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((labels != IGNORE_INDEX).sum())


@torch.no_grad()
def evaluate_perplexity(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    device: torch.device | str = "cpu",
    max_tokens: int | None = None,
    autocast: contextlib.AbstractContextManager | None = None,
) -> dict[str, float]:
    """``{"eval_loss", "eval_ppl", "eval_tokens"}`` over ``batches`` (all ranks, up to ``max_tokens`` tokens)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, tokens
    iterator = iter(batches)
    try:
        while max_tokens is None or totals[1] < max_tokens:
            batch = next(iterator, None)
            if _distributed():
                alive = torch.tensor([0 if batch is None else 1], device=device)
                dist.all_reduce(alive, op=dist.ReduceOp.MIN)
                if not alive.item():
                    break
            elif batch is None:
                break
            assert batch is not None  # every rank has one, or all broke out above
            with autocast or contextlib.nullcontext():
                loss, count = batch_loss_sum(model, batch, device)
            step = torch.tensor([loss.item(), count], dtype=torch.float64, device=device)
            if _distributed():
                dist.all_reduce(step)
            totals += step
    finally:
        model.train(was_training)
    loss_sum, tokens = totals.tolist()
    mean = loss_sum / tokens if tokens else float("nan")
    return {"eval_loss": mean, "eval_ppl": math.exp(min(mean, 700.0)) if tokens else float("nan"),
            "eval_tokens": int(tokens)}
