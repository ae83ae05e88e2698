"""Supervised fine-tuning: the checkpoint and instruction data checked before any model is loaded, then the
shared loop (same engines, checkpoints, resume, metrics and final ``run_dir/hf`` export as pre-training)."""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any, cast

from cod_train.core.errors import ConfigError
from cod_train.sft.config import MAX_LENGTH_CAP, SFTConfig, default_run_dir

if TYPE_CHECKING:
    from cod_train.runs.resolve import ResolvedRun
    from cod_train.train.loop import RunConfig

log = logging.getLogger("cod_train.sft")


def preflight(cfg: SFTConfig) -> tuple[ResolvedRun, Any, list]:
    """Config, checkpoint path, run_dir, resume and data fields: all checked before any model is loaded, on a
    copy of ``cfg`` that comes back frozen (runs/resolve.py) with the checkpoint's source and the examples."""
    cfg = copy.deepcopy(cfg)
    cfg.validate()  # before torch is imported: a bad config exits 2 at once
    from cod_train.runs.lifecycle import prepare_run_dir
    from cod_train.runs.models import resolve_checkpoint
    from cod_train.runs.resolve import ResolvedRun, freeze
    from cod_train.sft.records import load_examples

    source = resolve_checkpoint(cfg.checkpoint)
    cfg.run_dir = cfg.run_dir or default_run_dir(cfg.checkpoint, source.run_dir)
    model_config = checkpoint_config(source)
    resolve_max_length(cfg, model_config)
    check_scheme_rules(cfg, model_config)
    examples = load_examples(cfg.sft)
    run_dir, resume_from = prepare_run_dir(cfg)
    return ResolvedRun(freeze(cfg), run_dir, resume_from), source, examples


def run_sft(run: ResolvedRun, env: Any, source: Any, examples: list) -> Any:
    """Tokenize, load the model and hand everything to the shared training loop."""
    from cod_train.runs.app import write_config
    from cod_train.runs.lifecycle import seed_everything
    from cod_train.runs.models import check_vocab, load_model, tokenizer_for
    from cod_train.sft.loader import SFTBatches, build_sft_data, eval_batches
    from cod_train.train.loop import grad_accum_steps, train

    cfg: SFTConfig = run.cfg
    grad_accum_steps(cfg.train, env.world_size)
    seed_everything(cfg.seed)
    tokenizer = tokenizer_for(source, cfg.tokenizer, cfg.checkpoint)
    data = build_sft_data(cfg.sft, tokenizer, cfg.seed, examples=examples)
    model = load_model(source)
    check_vocab(model, tokenizer, cfg.checkpoint)
    scheme = placement_of(model.config)
    callbacks = scheme.callbacks(model.config) if scheme else []  # nGPT renormalizes its weights after each step
    if env.is_main:
        write_config(cfg, run.run_dir)
        log.info("cod-sft: %s (%s) -> %s", cfg.checkpoint, source.kind, run.run_dir)
    batches = SFTBatches(data, global_batch_size=cfg.train.global_batch_size, dp_rank=env.rank,
                         dp_world=env.world_size, seed=cfg.seed)

    def eval_data() -> list:
        return eval_batches(data, micro_batch_size=cfg.train.micro_batch_size, dp_rank=env.rank,
                            dp_world=env.world_size)

    # cast: run_dir is typed str | None, but preflight() has set it
    return train(cast("RunConfig", cfg), model, batches, env=env, eval_data=eval_data if data.eval else None,
                 tokenizer=tokenizer, callbacks=callbacks)


def sft(cfg: SFTConfig) -> int:
    """The whole cod-sft command after parsing: resolve (validate), then fine-tune; the exit code."""
    from cod_train.runs.lifecycle import run_training

    run, source, examples = preflight(cfg)
    return run_training(run, lambda run, env: run_sft(run, env, source, examples))


def resolve_max_length(cfg: SFTConfig, model_config: Any) -> None:
    """``sft.max_length``: unset, the model's max_position_embeddings (at most MAX_LENGTH_CAP); set, at most
    that, since longer rows would train on positions the model never saw (refused up front)."""
    positions = getattr(model_config, "max_position_embeddings", None)
    positions = positions if isinstance(positions, int) else None
    if cfg.sft.max_length is None:
        cfg.sft.max_length = min(positions or MAX_LENGTH_CAP, MAX_LENGTH_CAP)
        log.info("sft.max_length=%d (the model's max_position_embeddings: %s)", cfg.sft.max_length, positions)
    elif positions is not None and cfg.sft.max_length > positions:
        raise ConfigError(f"sft.max_length={cfg.sft.max_length} exceeds the model's max_position_embeddings="
                          f"{positions}; set sft.max_length={positions} or less, or leave it unset")


def placement_of(model_config: Any) -> Any:
    """The cod_train placement scheme of a cod_llama checkpoint's config; None for any other model."""
    if getattr(model_config, "model_type", None) != "cod_llama":
        return None
    from cod_train.model import zoo

    return zoo.placement(str(model_config.norm_type))


def check_scheme_rules(cfg: SFTConfig, model_config: Any) -> None:
    """The checkpoint's scheme's own rules on training (nGPT: no weight decay, no warm-up, no DeepSpeed), the
    same ones cod-pretrain applies: fine-tuning must not break what the scheme relies on."""
    scheme = placement_of(model_config)
    problems = scheme.run_problems(cfg) if scheme else []
    if problems:
        raise ConfigError(f"checkpoint={cfg.checkpoint!r} is a norm_type={scheme.name} model: " + "; ".join(problems))


def checkpoint_config(source: Any) -> Any:
    """The model's config (config.json, read: the model is not loaded)."""
    from transformers import AutoConfig

    from cod_train.model.build import register

    register()  # cod_llama with the Auto classes
    from cod_train.core import hub
    from cod_train.runs.models import HUB_MODEL_HINT

    if source.kind == "hub":
        return hub.cached_or_hub(AutoConfig.from_pretrained, source.path, f"checkpoint={source.spec!r}",
                                 HUB_MODEL_HINT)
    try:
        return AutoConfig.from_pretrained(source.path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"checkpoint={source.spec!r}: its config.json cannot be read: "
                          f"{str(err).splitlines()[0]}") from None
