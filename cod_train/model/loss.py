"""Causal-LM cross-entropy that never holds more than one chunk of fp32 logits.

With a 32k vocabulary the logits are the largest activation of a small model ([tokens, 32000] in fp32).
`FusedLinearCrossEntropy` computes, chunk by chunk, the loss *and* its gradients with respect to the hidden
states and the `lm_head` weight during the forward pass, so the backward pass only scales them: same FLOPs
as the plain path, memory of one chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    device_type = h.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return h.dtype


class FusedLinearCrossEntropy(torch.autograd.Function):
    """sum over valid tokens of CE(h @ W^T, target); gradients computed in the forward, chunk by chunk."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int):
        dtype = _compute_dtype(h)
        needs_grad = h.requires_grad or weight.requires_grad
        grad_h = torch.empty_like(h) if h.requires_grad else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if weight.requires_grad else None
        w = weight.to(dtype)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        with torch.autocast(h.device.type, enabled=False):
            for start in range(0, h.shape[0], chunk_size):
                h_c, t_c = h[start : start + chunk_size].to(dtype), targets[start : start + chunk_size]
                logits = (h_c @ w.t()).float()
                valid = t_c != IGNORE_INDEX
                safe_t = torch.where(valid, t_c, 0)
                lse = torch.logsumexp(logits, dim=-1)
                total += ((lse - logits.gather(1, safe_t[:, None]).squeeze(1)) * valid).sum()
                if not needs_grad:
                    continue
                grad_logits = torch.exp(logits - lse[:, None])  # softmax, in place of the logits chunk
                grad_logits[torch.arange(len(t_c), device=h.device), safe_t] -= 1.0
                grad_logits *= valid[:, None]
                grad_logits = grad_logits.to(dtype)
                if grad_h is not None:
                    grad_h[start : start + chunk_size] = (grad_logits @ w).to(h.dtype)
                if grad_w is not None:
                    grad_w += (grad_logits.t() @ h_c).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None


def causal_lm_loss(
    hidden: torch.Tensor | None,
    weight: torch.Tensor | None,
    targets: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | float | None = None,
    *,
    chunk_size: int = 4096,
    logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum of token losses over `targets != -100`, divided by `num_items_in_batch` (default: their count).

    Either `logits` [B, T, V] (plain path) or `hidden` [B, T, d] with the `lm_head` weight (fused path).
    `targets` [B, T] are already aligned with the positions.
    """
    flat_targets = targets.reshape(-1)
    if logits is not None:
        total = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), flat_targets.to(logits.device),
            ignore_index=IGNORE_INDEX, reduction="sum",
        )
    else:
        flat_h = hidden.reshape(-1, hidden.shape[-1])
        total = FusedLinearCrossEntropy.apply(flat_h, weight, flat_targets.to(flat_h.device), max(1, chunk_size))
    if num_items_in_batch is None:
        num_items_in_batch = (flat_targets != IGNORE_INDEX).sum().clamp(min=1)
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch
