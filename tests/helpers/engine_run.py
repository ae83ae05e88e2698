"""The engine and training-loop tests' tiny pretraining: its config (a dotlist over :func:`tiny_config`) and
:func:`run`, which trains it in this process under the current process group (or none)."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from cod_train.config import ModelConfig, PretrainConfig, to_typed
from tests.helpers.batches import VOCAB, NaNInjector, SyntheticBatches, eval_batches


def engine_model_config() -> ModelConfig:
    return ModelConfig(name="tiny_test", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, vocab_size=VOCAB, max_position_embeddings=64)


def tiny_config(*overrides: str) -> PretrainConfig:
    base = {
        "model": OmegaConf.structured(engine_model_config()),
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
    from cod_train.runs.pretrain import callbacks_for

    return train(cfg, model, data, env=env, eval_data=lambda: eval_batches(env.rank, env.world_size),
                 callbacks=callbacks_for(cfg), diagnostics_fn=diagnostics_fn)
