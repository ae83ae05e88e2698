"""``cod-sft``: fine-tune a pre-trained checkpoint (or any HF causal LM) on instruction data.

    cod-sft                                                    # bundled alpaca sample, from runs/llama_tiny-pre_ln
    cod-sft checkpoint=runs/x/checkpoints/step_0000300 run_dir=runs/x-sft
    cod-sft sft.paths=[data/my.jsonl] sft.template=alpaca sft.packing=true distributed=fsdp
    cod-sft sft.hub_dataset=yahma/alpaca-cleaned train.max_steps=2000 logger=wandb

The run uses the shared loop (``cod_train.train.train``): the same engines, checkpoints, resume, metrics
and final ``run_dir/hf`` export as pre-training. Bad input (a path that is no checkpoint, instruction data
without the expected fields, an inconsistent config) exits with code 2 and a one-line message before
any model is loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cod_train.cli._hydra import hydra_app, write_config
from cod_train.cli.pretrain import run_training, seed_everything
from cod_train.config import ConfigError
from cod_train.sft.config import SFTConfig, default_run_dir

log = logging.getLogger("cod_train.sft")


def tokenizer_for(source: Any, override: str | None, spec: str) -> Any:
    """``override`` (a path or hub name) if given, else the tokenizer saved with the model; pad defaults to eos."""
    from cod_train.eval.depth_io import load_tokenizer

    if override:
        from transformers import AutoTokenizer

        from cod_train.core import hub

        if Path(override).expanduser().exists():
            tok = AutoTokenizer.from_pretrained(override)
        else:
            tok = hub.cached_or_hub(AutoTokenizer.from_pretrained, override, f"tokenizer={override!r}",
                                    "pass tokenizer= a local tokenizer directory, or omit it to use the model's own")
    else:
        tok = load_tokenizer(source)
    if tok is None:
        raise ConfigError(f"checkpoint={spec!r} has no tokenizer files; pass tokenizer=PATH_OR_NAME")
    if tok.eos_token_id is None:
        raise ConfigError("the tokenizer has no eos token, which ends every response; pick another tokenizer")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _check_vocab(model: Any, tokenizer: Any, spec: str) -> None:
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        raise ConfigError(f"checkpoint={spec!r}: its tokenizer has {len(tokenizer)} tokens but the model embeds "
                          f"only {vocab}; pass the tokenizer it was trained with (tokenizer=...)")


def preflight(cfg: SFTConfig) -> tuple[Any, list]:
    """Config, checkpoint path, run_dir, resume and data fields: all checked before any model is loaded."""
    from cod_train.engine.checkpoint import resolve_resume
    from cod_train.eval.depth_io import resolve_checkpoint
    from cod_train.sft.records import load_examples
    from cod_train.train.loop import check_run_dir, validate_train_config

    cfg.validate()
    validate_train_config(cfg.train)
    source = resolve_checkpoint(cfg.checkpoint)
    cfg.run_dir = cfg.run_dir or default_run_dir(cfg.checkpoint, source.run_dir)
    check_run_dir(cfg.run_dir)
    resolve_resume(cfg.resume, Path(cfg.run_dir) / "checkpoints")
    return source, load_examples(cfg.sft)


def run_sft(cfg: SFTConfig, env: Any, source: Any, examples: list) -> Any:
    """Tokenize, load the model and hand everything to the shared training loop."""
    from cod_train.eval.depth_io import load_model
    from cod_train.sft.loader import SFTBatches, build_sft_data, eval_batches
    from cod_train.train.loop import grad_accum_steps, train

    grad_accum_steps(cfg.train, env.world_size)
    seed_everything(cfg.seed)
    tokenizer = tokenizer_for(source, cfg.tokenizer, cfg.checkpoint)
    data = build_sft_data(cfg.sft, tokenizer, cfg.seed, examples=examples)
    model = load_model(source)
    _check_vocab(model, tokenizer, cfg.checkpoint)
    if env.is_main:
        write_config(cfg, cfg.run_dir)
        log.info("cod-sft: %s (%s) -> %s; %s", cfg.checkpoint, source.kind, cfg.run_dir, data.stats)
    batches = SFTBatches(data, global_batch_size=cfg.train.global_batch_size, dp_rank=env.rank,
                         dp_world=env.world_size, seed=cfg.seed)

    def eval_data() -> list:
        return eval_batches(data, micro_batch_size=cfg.train.micro_batch_size, dp_rank=env.rank,
                            dp_world=env.world_size)

    return train(cfg, model, batches, env=env, eval_data=eval_data if data.eval else None, tokenizer=tokenizer)


@hydra_app("sft", SFTConfig)
def main(cfg: SFTConfig) -> int:
    source, examples = preflight(cfg)
    return run_training(cfg, lambda cfg, env: run_sft(cfg, env, source, examples))


if __name__ == "__main__":
    main()
