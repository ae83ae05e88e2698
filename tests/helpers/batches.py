"""Deterministic, world-size-invariant synthetic batches for the tiny training runs, and a NaN / Inf injector."""

from __future__ import annotations

import os
import time

import torch

VOCAB, SEQ = 256, 32


class SyntheticBatches:
    """Row i of global batch n is a function of (seed, n, i) only: each rank takes its slice.

    Rows are arithmetic progressions mod VOCAB (learnable) with a random tail of padding (-100 labels).
    """

    def __init__(self, *, global_batch_size: int, dp_rank: int, dp_world: int, seed: int = 0,
                 seq_len: int = SEQ, vocab: int = VOCAB):
        assert global_batch_size % dp_world == 0
        self.gbs, self.rank, self.world, self.seed = global_batch_size, dp_rank, dp_world, seed
        self.seq_len, self.vocab, self.step = seq_len, vocab, 0
        self.sleep = float(os.environ.get("TINY_STEP_SLEEP", "0"))

    def __iter__(self):
        return self

    def global_batch(self, step: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        start = torch.randint(0, self.vocab, (self.gbs, 1), generator=g)
        stride = torch.randint(1, 5, (self.gbs, 1), generator=g)
        seq = (start + stride * torch.arange(self.seq_len + 1)) % self.vocab
        noise = torch.randint(0, self.vocab, seq.shape, generator=g)
        seq = torch.where(torch.rand(seq.shape, generator=g) < 0.1, noise, seq)
        labels = seq[:, 1:].clone()
        lengths = torch.randint(self.seq_len // 2, self.seq_len + 1, (self.gbs, 1), generator=g)
        labels[torch.arange(self.seq_len) >= lengths] = -100
        return {"input_ids": seq[:, :-1].contiguous(), "labels": labels}

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.sleep:
            time.sleep(self.sleep)  # lets tests interrupt a run between steps
        batch = self.global_batch(self.step)
        self.step += 1
        per = self.gbs // self.world
        return {k: v[self.rank * per:(self.rank + 1) * per] for k, v in batch.items()}

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


def eval_batches(dp_rank: int, dp_world: int, n: int = 4):
    data = SyntheticBatches(global_batch_size=4 * dp_world, dp_rank=dp_rank, dp_world=dp_world, seed=999)
    return [next(data) for _ in range(n)]


class _InfiniteGradient(torch.autograd.Function):
    """The identity forward; an infinite gradient backward (the loss stays finite)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("inf"))


class NaNInjector:
    """Forward hook making the training loss NaN on chosen (1-based) optimizer steps; with ``gradient=True``
    the loss stays finite and the gradients of every weight before the final norm are infinite instead."""

    def __init__(self, model, steps: set[int], micro_per_step: int, gradient: bool = False):
        self.steps, self.micro, self.calls, self.gradient = steps, micro_per_step, 0, gradient
        (model.model.norm if gradient else model).register_forward_hook(self)

    def __call__(self, module, args, output):
        if module.training:
            step = self.calls // self.micro + 1
            self.calls += 1
            if step in self.steps:
                if self.gradient:
                    return _InfiniteGradient.apply(output)
                output.loss = output.loss * float("nan")
        return output
