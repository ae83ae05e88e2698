"""Causal-LM cross-entropy that never holds more than one chunk of fp32 logits.

With a 32k vocabulary the logits are the largest activation of a small model ([tokens, 32000] in fp32).
`FusedLinearCrossEntropy` computes, chunk by chunk, the loss *and* its gradients with respect to the hidden
states and the `lm_head` weight during the forward pass, so the backward pass only scales them: same FLOPs
as the plain path, memory of one chunk.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from cod_train.core.constants import IGNORE_INDEX


def default_chunk_size(device: torch.device) -> int:
    """Rows of logits per chunk when none is set. CPU: 256 rows (a 32k-vocabulary fp32 chunk, 32 MiB, stays in
    cache; measured fastest in scripts/bench.py). GPU: 2048 rows, so that the `lm_head` gradient GEMM, which
    reduces over the chunk and updates an fp32 [V, d] accumulator every chunk, stays compute-bound."""
    return 256 if device.type == "cpu" else 2048


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    device_type = h.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return h.dtype


class FusedLinearCrossEntropy(torch.autograd.Function):
    """scale * sum over valid tokens of CE(h @ W^T, target); gradients computed in the forward, chunk by chunk.

    `scale` (1 / the loss divisor) is applied to the fp32 logit gradients before they are rounded to the
    compute dtype, so the backward multiplies only by the incoming gradient, 1.0 for a plain `loss.backward()`:
    1/N is never rounded to bf16 (it would be off by up to 0.4%)."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int,
                scale: torch.Tensor | float) -> torch.Tensor:
        dtype = _compute_dtype(h)
        grad_h = torch.empty_like(h) if h.requires_grad else None
        acc_dtype = torch.promote_types(weight.dtype, torch.float32)
        grad_w = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if weight.requires_grad else None
        w = weight.to(dtype)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        with torch.autocast(h.device.type, enabled=False):
            for start in range(0, h.shape[0], chunk_size):
                end = min(start + chunk_size, h.shape[0])
                h_c, t_c = h[start:end].to(dtype), targets[start:end]
                # At most two [chunk, V] fp32 buffers live at once (logits, then log-probs turned in place
                # into the gradient), each elementwise pass reading and writing one of them.
                logprobs = torch.log_softmax((h_c @ w.t()).float(), dim=-1)
                valid = t_c != IGNORE_INDEX
                safe_t = torch.where(valid, t_c, 0)
                total += torch.where(valid, logprobs.gather(1, safe_t[:, None]).squeeze(1), 0.0).sum().neg()
                if grad_h is None and grad_w is None:
                    continue
                grad_logits = logprobs.exp_()  # softmax, in place of the log-probs
                grad_logits[torch.arange(end - start, device=h.device), safe_t] -= 1.0
                grad_logits.mul_((valid * scale)[:, None])  # ignored rows -> 0, the others * 1/N, in fp32
                if grad_h is not None:
                    _matmul_into(grad_h[start:end], grad_logits.to(dtype), w)
                if grad_w is not None:
                    _accumulate_grad_w(grad_w, grad_logits, h_c)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total * scale

    @staticmethod
    def backward(
        ctx: Any, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None]:
        # Scaled in place: no second [V, d] buffer at the backward's peak. Hence one backward per forward (a
        # second one, with retain_graph, would see scaled tensors): refuse it rather than return wrong values.
        if getattr(ctx, "consumed", False):
            raise RuntimeError("the fused cross-entropy supports one backward per forward; "
                               "set config.fused_loss=False to backpropagate through the loss twice")
        ctx.consumed = True
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h.mul_(grad_out.to(grad_h.dtype)) if grad_h is not None else None
        gw = grad_w.mul_(grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None


def _matmul_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dtype == b.dtype == out.dtype:
        torch.mm(a, b, out=out)
    else:
        out.copy_(a @ b)


def _accumulate_grad_w(grad_w: torch.Tensor, grad_logits: torch.Tensor, h_c: torch.Tensor) -> None:
    """grad_w += grad_logits^T @ h_c, accumulated in grad_w's dtype (fp32) without a [V, d] temporary.

    `grad_logits` is the fp32 [chunk, V] gradient; `h_c` is in the compute dtype (bf16 under autocast)."""
    if h_c.dtype == grad_w.dtype:
        grad_w.addmm_(grad_logits.to(h_c.dtype).t(), h_c)
    elif grad_w.is_cuda:
        # bf16 x bf16 on the tensor cores, summed straight into the fp32 accumulator (cuBLAS with an fp32 C)
        torch.addmm(grad_w, grad_logits.to(h_c.dtype).t(), h_c, out_dtype=grad_w.dtype, out=grad_w)
    else:
        # No mixed-dtype GEMM on CPU: fp32 inputs ([chunk, V] is already fp32, [chunk, d] is small).
        grad_w.addmm_(grad_logits.t(), h_c.to(grad_w.dtype))


def causal_lm_loss(
    hidden: torch.Tensor | None,
    weight: torch.Tensor | None,
    targets: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | float | None = None,
    *,
    chunk_size: int = 0,
    logits: torch.Tensor | None = None,
    use_kernels: bool = False,
) -> torch.Tensor:
    """Sum of token losses over `targets != -100`, divided by `num_items_in_batch` (default: their count).

    Either `logits` [B, T, V] (plain path) or `hidden` [B, T, d] with the `lm_head` weight (fused path, at most
    `chunk_size` rows of logits at a time; 0 = `default_chunk_size`). `targets` [B, T] are already aligned with
    the positions. `use_kernels`: Liger's fused linear cross-entropy instead (CUDA; `cod_train.model.kernels`).
    """
    flat_targets = targets.reshape(-1)
    if logits is not None:
        total = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), flat_targets.to(logits.device),
            ignore_index=IGNORE_INDEX, reduction="sum",
        )
    elif use_kernels and weight is not None and _liger_fits(weight):
        from cod_train.model import kernels

        assert hidden is not None, "without logits, hidden and weight are required"
        flat_h = hidden.reshape(-1, hidden.shape[-1])
        total = kernels.linear_cross_entropy_sum(flat_h, weight, flat_targets.to(flat_h.device))
    else:
        assert hidden is not None and weight is not None, "without logits, hidden and weight are required"
        flat_h = hidden.reshape(-1, hidden.shape[-1])
        chunk_size = chunk_size if chunk_size > 0 else default_chunk_size(flat_h.device)
        scale = 1.0 / _divisor(num_items_in_batch, flat_targets, flat_h.device)
        return FusedLinearCrossEntropy.apply(flat_h, weight, flat_targets.to(flat_h.device), chunk_size, scale)
    return total / _divisor(num_items_in_batch, flat_targets, total.device)


def _liger_fits(weight: torch.Tensor) -> bool:
    from cod_train.model import kernels

    return kernels.linear_cross_entropy_fits(weight)


def _divisor(num_items_in_batch: torch.Tensor | int | float | None, flat_targets: torch.Tensor,
             device: torch.device) -> torch.Tensor | float:
    """The loss divisor: `num_items_in_batch` (a number stays a Python number), default the valid targets."""
    if num_items_in_batch is None:
        num_items_in_batch = (flat_targets != IGNORE_INDEX).sum().clamp(min=1)
    if isinstance(num_items_in_batch, torch.Tensor):
        return num_items_in_batch.to(device=device, dtype=torch.float32)
    return float(num_items_in_batch)
