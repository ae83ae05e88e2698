"""A tiny model, a deterministic world-size-invariant batch iterator and a run driver for engine tests.

Run as a script (under torchrun or not), each argument is one run: a space-separated Hydra-style dotlist
applied to :func:`tiny_config` (plus ``nan_steps=2,3``: NaN losses on those steps; ``inf_grad_steps=2,3``: a
finite loss with infinite gradients on those steps); runs execute one after the other in the same process group.
"""

from __future__ import annotations

import os
import sys
import time

import torch
from omegaconf import OmegaConf

from cod_train.config import ModelConfig, PretrainConfig, to_typed

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


def tiny_model_config() -> ModelConfig:
    return ModelConfig(name="tiny_test", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, vocab_size=VOCAB, max_position_embeddings=64)


def tiny_config(*overrides: str) -> PretrainConfig:
    base = {
        "model": OmegaConf.structured(tiny_model_config()),
        "train": {"max_steps": 6, "global_batch_size": 8, "micro_batch_size": 2, "lr": 3e-3, "warmup_steps": 2,
                  "log_every": 1, "eval_every": 0, "eval_tokens": 0, "ckpt_every": 3, "keep_last": 3,
                  "diag_every": 0, "export_hf": False, "cpu_peak_flops": 1e11},
        "logger": {"type": "none"},
        "resume": "auto",
        "seed": 7,
    }
    cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
    return to_typed(cfg, PretrainConfig)


def build_tiny_model(cfg: PretrainConfig):
    from cod_train.model import build_model

    torch.manual_seed(cfg.seed)
    return build_model(cfg.model)


def run(*overrides: str, diagnostics_fn=None):
    """Train the tiny model under the current process group (or none) with ``overrides``."""
    from cod_train.engine.distributed import init_distributed
    from cod_train.train import train

    def steps_of(key: str) -> set[int]:
        return {int(s) for o in overrides if o.startswith(key + "=") for s in o[len(key) + 1:].split(",")}

    nan_steps, inf_grad_steps = steps_of("nan_steps"), steps_of("inf_grad_steps")
    cfg = tiny_config(*(o for o in overrides if not o.startswith(("nan_steps=", "inf_grad_steps="))))
    env = init_distributed(cfg.distributed, device="cpu")
    model = build_tiny_model(cfg)
    micro = cfg.train.global_batch_size // (cfg.train.micro_batch_size * env.world_size)
    if nan_steps:  # make the loss NaN on these steps (non-finite skip tests)
        NaNInjector(model, nan_steps, micro)
    if inf_grad_steps:  # finite loss, infinite gradients on these steps
        NaNInjector(model, inf_grad_steps, micro, gradient=True)
    data = SyntheticBatches(global_batch_size=cfg.train.global_batch_size, dp_rank=env.rank,
                            dp_world=env.world_size, seed=cfg.seed)
    return train(cfg, model, data, env=env, eval_data=lambda: eval_batches(env.rank, env.world_size),
                 diagnostics_fn=diagnostics_fn)


def _fill_disk_on(rank: int, marker: str) -> None:
    """Make this process's checkpoint writes (core.io's CrcWriter: torch.save and the CRC'd files) fail with
    ENOSPC for paths containing ``marker`` when it is ``rank``."""
    import errno

    from cod_train.core.io import CrcWriter

    if int(os.environ.get("RANK", "0")) != rank:
        return
    real_write = CrcWriter.write

    def full_disk(self, data):
        if marker in str(self.path):
            err = OSError(errno.ENOSPC, "No space left on device")
            self._fail(err)
            raise err
        return real_write(self, data)

    CrcWriter.write = full_disk


def _record_gathers(path: str) -> None:
    import deepspeed

    real = deepspeed.zero.GatheredParameters
    rank = os.environ.get("RANK", "0")

    class Recorded(real):  # type: ignore[misc, valid-type]
        def __init__(self, params, *args, **kwargs):
            numel = sum(int(getattr(p, "ds_numel", p.numel())) for p in params)
            with open(f"{path}.{rank}", "a") as f:
                f.write(f"{numel}\n")
            super().__init__(params, *args, **kwargs)

    deepspeed.zero.GatheredParameters = Recorded


if __name__ == "__main__":
    torch.set_num_threads(1)
    if os.environ.get("TINY_GATHER_LOG"):  # record the size of every ZeRO-3 gather (per rank)
        _record_gathers(os.environ["TINY_GATHER_LOG"])
    if os.environ.get("TINY_ENOSPC"):  # "RANK:MARKER": a full disk on one rank (fault-injection tests)
        rank, marker = os.environ["TINY_ENOSPC"].split(":", 1)
        _fill_disk_on(int(rank), marker)
    for spec in sys.argv[1:]:
        result = run(*spec.split())
        print(f"RESULT {result.stopped} step={result.step}", flush=True)
        if result.stopped == "nonfinite":
            sys.exit(3)
    from cod_train.engine.distributed import destroy_distributed

    destroy_distributed()
