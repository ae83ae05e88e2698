"""``cod-pretrain``: pre-train a model (default: the embedded CPU run, a few minutes on 2 cores).

    cod-pretrain                                              # tiny model, bundled sample, CPU
    cod-pretrain experiment=paper_130m norm=lns distributed=fsdp logger=wandb
    torchrun --nproc_per_node 8 -m cod_train.cli.pretrain distributed=fsdp ...
    cod-pretrain -m norm=pre_ln,lns,mix_ln                    # a sweep (one run_dir per job)

Exit codes: 0 done or preempted (SIGTERM: checkpoint saved), 2 configuration error (nothing ran),
3 stopped after ``train.max_nonfinite_in_a_row`` non-finite losses (the last good checkpoint is kept).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cod_train.cli._hydra import hydra_app, write_config
from cod_train.config import PretrainConfig
from cod_train.engine.checkpoint import resolve_resume
from cod_train.engine.distributed import DistEnv, destroy_distributed, init_distributed
from cod_train.train.loop import TrainResult, check_run_dir, grad_accum_steps, train, validate_train_config

log = logging.getLogger("cod_train")
EXIT_NONFINITE = 3


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def preflight(cfg: PretrainConfig) -> None:
    """Everything that can be checked before any process group, data or model exists."""
    validate_train_config(cfg.train)
    check_run_dir(cfg.run_dir)
    resolve_resume(cfg.resume, Path(cfg.run_dir) / "checkpoints")


def build_model_for(cfg: PretrainConfig, vocab_size: int) -> torch.nn.Module:
    from cod_train.model import build_model

    if cfg.distributed.engine == "fsdp" and cfg.distributed.meta_init:
        with torch.device("meta"):  # each rank materializes only its shards (after fully_shard)
            return build_model(cfg.model, vocab_size)
    return build_model(cfg.model, vocab_size)


def diagnostics_for(cfg: PretrainConfig):
    if not cfg.train.diag_every:
        return None
    try:
        from cod_train.eval.depth_train import training_diagnostics
    except ImportError:
        log.warning("train.diag_every is set but cod_train.eval.depth_train is unavailable; no diagnostics")
        return None
    return lambda model, step, batch: training_diagnostics(model, batch)


def run_pretrain(cfg: PretrainConfig, env: DistEnv) -> TrainResult:
    from cod_train.data import build_eval_data, build_tokenizer, build_train_data, check_vocab

    grad_accum_steps(cfg.train, env.world_size)
    seed_everything(cfg.seed)
    tokenizer = build_tokenizer(cfg.data)
    model = build_model_for(cfg, len(tokenizer))
    check_vocab(tokenizer, model.config.vocab_size)
    train_data = build_train_data(cfg.data, tokenizer, global_batch_size=cfg.train.global_batch_size,
                                  dp_rank=env.rank, dp_world=env.world_size, seed=cfg.seed)

    def eval_data():
        return build_eval_data(cfg.data, tokenizer, micro_batch_size=cfg.train.micro_batch_size,
                               max_tokens=cfg.train.eval_tokens, dp_rank=env.rank, dp_world=env.world_size)

    has_eval = cfg.train.eval_tokens > 0 and eval_data() is not None
    if env.is_main:
        write_config(cfg, cfg.run_dir)
        n = sum(p.numel() for p in model.parameters())
        log.info("model %s (%s): %.2fM parameters; engine %s on %d process(es), %s", cfg.model.name,
                 cfg.model.norm_type, n / 1e6, cfg.distributed.engine, env.world_size, env.device)
    return train(cfg, model, train_data, env=env, eval_data=eval_data if has_eval else None, tokenizer=tokenizer,
                 diagnostics_fn=diagnostics_for(cfg))


def summarize(result: TrainResult, env: DistEnv) -> None:
    if not env.is_main:
        return
    lines = [f"stopped: {result.stopped} at step {result.step} ({result.tokens:,} tokens)"]
    if result.last_eval:
        lines.append(f"final eval: loss {result.last_eval['eval_loss']:.4f}, "
                     f"perplexity {result.last_eval['eval_ppl']:.2f}")
    if result.checkpoint:
        lines.append(f"checkpoint: {result.checkpoint}")
    if result.hf_dir:
        lines.append(f"HF export: {result.hf_dir}")
    if result.nonfinite_total:
        lines.append(f"non-finite steps skipped: {result.nonfinite_total}")
    print("\n".join(lines), flush=True)


def run_training(cfg: Any, run: Callable[[Any, DistEnv], TrainResult]) -> int:
    """Initialize torch.distributed, ``run(cfg, env)``, summarize, tear down; the exit code of the command
    (shared by cod-pretrain and cod-sft)."""
    env = init_distributed(cfg.distributed, cfg.device)
    try:
        result = run(cfg, env)
        summarize(result, env)
    except BaseException:
        destroy_distributed(wait_for_others=False)
        raise
    destroy_distributed()
    return EXIT_NONFINITE if result.stopped == "nonfinite" else 0


@hydra_app("pretrain", PretrainConfig)
def main(cfg: PretrainConfig) -> int:
    preflight(cfg)
    return run_training(cfg, run_pretrain)


if __name__ == "__main__":
    main()
