"""Pre-training: the config resolved once (runs/resolve.py), then tokenizer, model and data handed to the shared loop.
Heavy modules (torch, transformers, the data pipeline) are imported inside the functions, after validation."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from cod_train.config import PretrainConfig, model_scheme
from cod_train.core.errors import ConfigError
from cod_train.model import zoo

if TYPE_CHECKING:

    from cod_train.engine.distributed import DistEnv
    from cod_train.model import CodLlamaForCausalLM
    from cod_train.runs.resolve import ResolvedRun
    from cod_train.train.loop import TrainResult

log = logging.getLogger("cod_train")
# cod_train.data.sources.OFFLINE_HINT, repeated: importing cod_train.data imports torch and transformers
DATA_HINT = ("offline alternatives: data=files data.paths=[/path/to/c4-train.*.json.gz] (local json/jsonl/json.gz/"
             "parquet/txt), or data=sample (the bundled sample, built from the package index)")


def check_hub_first(cfg: PretrainConfig) -> None:
    """Streaming data from the hub (data=c4 without data.paths) needs the hub: refused before torch,
    transformers and datasets are imported (seconds of start-up) when an offline variable is set, and in a
    single process when the hub does not answer. A multi-process job leaves the network probe to rank 0
    (:func:`share_hub_files`): one probe per rank would let any node's network blip fail the whole job."""
    from cod_train.core import hub

    data = cfg.data
    if data.source != "c4" or data.paths:
        return
    if hub.offline_mode() is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    hub.require_hub(f"{data.hub_dataset} ({data.hub_config}/{data.train_split})", DATA_HINT, data.hub_timeout_s)


def resolve(cfg: PretrainConfig) -> ResolvedRun:
    """The one validation pass: everything that can be checked before any process group, data, tokenizer or
    model exists, on a copy of ``cfg`` that comes back frozen with what resolving found (runs/resolve.py).
    The run directory is created last, only for a valid config."""
    from cod_train.runs.init_from import apply_init_from
    from cod_train.runs.lifecycle import prepare_run_dir
    from cod_train.runs.resolve import ResolvedRun, freeze

    check_hub_first(cfg)
    cfg, overrides = apply_init_from(copy.deepcopy(cfg))  # model.* and data.tokenizer: the checkpoint's
    cfg.validate()
    problems = zoo.run_problems(cfg)  # the placement's own rules on training (nGPT: no decay, no warm-up)
    if problems:
        raise ConfigError("; ".join(problems))
    run_dir, resume_from = prepare_run_dir(cfg)
    return ResolvedRun(freeze(cfg), run_dir, resume_from, MappingProxyType(overrides))


def build_model_for(cfg: PretrainConfig, vocab_size: int,
                    overrides: Mapping[str, Any] = MappingProxyType({})) -> CodLlamaForCausalLM:
    """The run's model; with ``init_from``, ``cfg`` and ``overrides`` are what :func:`resolve` made of it."""
    import torch

    from cod_train.model import build_model

    if cfg.distributed.engine == "fsdp" and cfg.distributed.meta_init:
        with torch.device("meta"):  # each rank materializes only its shards (after fully_shard)
            return build_model(cfg.model, vocab_size)
    model = build_model(cfg.model, vocab_size, **overrides)
    if cfg.init_from:
        from cod_train.runs.init_from import load_init_weights

        load_init_weights(model, cfg.init_from)
    return model


def diagnostics_for(cfg: PretrainConfig) -> Any:
    from cod_train.eval.depth_train import training_diagnostics

    if not cfg.train.diag_every:
        return None
    return lambda model, step, batch: training_diagnostics(model, batch)


def callbacks_for(cfg: PretrainConfig) -> list[Any]:
    """The loop's callbacks beyond the diagnostics (train.loop.Callback): the placement's (nGPT renormalizes its
    weights after each optimizer step)."""
    return list(zoo.placement(cfg.model.norm_type).callbacks(cfg.model))


def share_hub_files(cfg: PretrainConfig, env: DistEnv) -> None:
    """data=c4 from the hub: rank 0 alone probes the hub and globs the file lists, every rank takes them (one
    probe per rank would let any node's network blip fail the whole job)."""
    from cod_train.data.sources import hub_data_files, prime_hub_files, uses_hub
    from cod_train.engine.distributed import on_rank0

    if not uses_hub(cfg.data) or env.world_size < 2:
        return

    def resolve() -> dict[str, list[str]]:
        lists = {cfg.data.train_split: hub_data_files(cfg.data, cfg.data.train_split)}
        try:
            lists[cfg.data.eval_split] = hub_data_files(cfg.data, cfg.data.eval_split)
        except ConfigError:  # no eval split: the eval builder reports it
            pass
        return lists

    for split, files in on_rank0(env, resolve).items():
        prime_hub_files(cfg.data, split, files)


def run_pretrain(run: ResolvedRun, env: DistEnv) -> TrainResult:
    from cod_train.data import build_eval_data, build_tokenizer, build_train_data, check_vocab
    from cod_train.runs.app import write_config
    from cod_train.runs.lifecycle import seed_everything
    from cod_train.train.loop import grad_accum_steps, train

    cfg: PretrainConfig = run.cfg
    if cfg.model.use_kernels:
        from cod_train.model.kernels import check_available

        note = check_available(env.device)
        if note and env.is_main:
            log.warning(note)
    grad_accum_steps(cfg.train, env.world_size)
    seed_everything(cfg.seed)
    share_hub_files(cfg, env)
    tokenizer = build_tokenizer(cfg.data)
    model = build_model_for(cfg, len(tokenizer), run.model_overrides)
    check_vocab(tokenizer, model.config.vocab_size)
    train_data = build_train_data(cfg.data, tokenizer, global_batch_size=cfg.train.global_batch_size,
                                  dp_rank=env.rank, dp_world=env.world_size, seed=cfg.seed)

    def eval_data() -> Any:
        return build_eval_data(cfg.data, tokenizer, micro_batch_size=cfg.train.micro_batch_size,
                               max_tokens=cfg.train.eval_tokens, dp_rank=env.rank, dp_world=env.world_size)

    has_eval = cfg.train.eval_tokens > 0 and eval_data() is not None
    if env.is_main:
        write_config(cfg, run.run_dir)
        n = sum(p.numel() for p in model.parameters())
        log.info("model %s (%s): %.2fM parameters; engine %s on %d process(es), %s", cfg.model.name,
                 model_scheme(cfg.model), n / 1e6, cfg.distributed.engine, env.world_size, env.device)
    return train(cfg, model, train_data, env=env, eval_data=eval_data if has_eval else None, tokenizer=tokenizer,
                 callbacks=callbacks_for(cfg), diagnostics_fn=diagnostics_for(cfg))


def check_memory_first(cfg: PretrainConfig) -> None:
    """On a GPU (rank 0, before the process group exists: the plan makes a fake one), plan the configured
    micro-batch (cod-plan, without the search) and warn, naming the plan's numbers, when it would not fit.
    Advisory: a plan that cannot be made is said in one line and the run goes on. ``plan.check=false``: off."""
    from cod_train.runs.app import is_main_process

    if not cfg.plan.check or cfg.device == "cpu" or not is_main_process():
        return
    import torch

    if not torch.cuda.is_available():
        return
    from cod_train.runs.plan import GIB, launch_world_size, memory_warning

    usable = torch.cuda.get_device_properties(0).total_memory / GIB - cfg.plan.reserve_gb
    try:
        warning = memory_warning(cfg, launch_world_size(), usable)
    except Exception as err:  # noqa: BLE001 - the check advises; it never stops a run
        log.warning("memory check skipped: cod-plan could not plan this run (%s: %s)", type(err).__name__, err)
        return
    if warning:
        log.warning(warning)


def pretrain(cfg: PretrainConfig) -> int:
    """The whole cod-pretrain command after parsing: resolve (validate), the memory check on a GPU, then train;
    the exit code."""
    from cod_train.runs.lifecycle import run_training

    run = resolve(cfg)
    check_memory_first(run.cfg)
    return run_training(run, run_pretrain)
