"""The body of ``cod-eval`` (usage: ``cod_train/cli/eval.py``): perplexity on held-out data and downstream
accuracy through lm-eval-harness, written to ``run_dir/eval.json``."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cod_train.config import DEVICES, ConfigError, DataConfig, LoggerConfig
from cod_train.core.io import atomic_write_json
from cod_train.eval.downstream import DownstreamConfig

log = logging.getLogger("cod_train.eval")


@dataclass
class PerplexityOptions:
    enabled: bool = True
    eval_tokens: int = 65536  # held-out tokens (the papers: ~10M on C4 validation)
    micro_batch_size: int = 8


@dataclass
class EvalConfig:
    checkpoint: str = "runs/llama_tiny-pre_ln-sft"
    tokenizer: str | None = None  # None: the tokenizer saved with the model
    run_dir: str | None = None  # None: the checkpoint's run directory, else runs/<name>-eval
    device: str = "auto"
    seed: int = 1234
    dtype: str = "float32"  # float32 | bfloat16
    data: DataConfig = field(default_factory=DataConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    perplexity: PerplexityOptions = field(default_factory=PerplexityOptions)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)

    def validate(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.downstream.tasks:
            self.downstream.validate()
        if self.perplexity.enabled:
            self.data.validate()


def _run_dir(cfg: EvalConfig, source: Any) -> str:
    if cfg.run_dir:
        return cfg.run_dir
    if source.run_dir is not None:
        return str(source.run_dir)
    name = Path(cfg.checkpoint.rstrip("/")).name if source.kind != "hub" else cfg.checkpoint.replace("/", "_")
    return f"runs/{name}-eval"


def preflight(cfg: EvalConfig) -> tuple[Any, Any]:
    """Checkpoint path, task names, offline task data and run_dir, before any model is loaded."""
    from cod_train.eval.downstream import prepare_tasks
    from cod_train.runs.models import resolve_checkpoint
    from cod_train.train.loop import check_run_dir

    cfg.validate()
    source = resolve_checkpoint(cfg.checkpoint)
    task_manager = prepare_tasks(cfg.downstream) if cfg.downstream.tasks else None
    cfg.run_dir = _run_dir(cfg, source)
    check_run_dir(cfg.run_dir)
    return source, task_manager


def load(cfg: EvalConfig, source: Any) -> tuple[Any, Any]:
    """The model (eval mode, on the configured device) and its tokenizer."""
    import torch

    from cod_train.engine.distributed import parse_device
    from cod_train.runs.models import load_model, tokenizer_for

    tokenizer = tokenizer_for(source, cfg.tokenizer, cfg.checkpoint)
    model = load_model(source, dtype=getattr(torch, cfg.dtype))
    return model.to(parse_device(cfg.device)).eval(), tokenizer


def perplexity(cfg: EvalConfig, model: Any, tokenizer: Any) -> dict[str, Any] | None:
    """exp(mean token loss) over ``perplexity.eval_tokens`` held-out tokens of ``data``."""
    from cod_train.data import build_eval_data
    from cod_train.eval.perplexity import evaluate_perplexity

    opts = cfg.perplexity
    batches = build_eval_data(cfg.data, tokenizer, micro_batch_size=opts.micro_batch_size,
                              max_tokens=opts.eval_tokens, dp_rank=0, dp_world=1)
    if batches is None:
        log.warning("data=%s has no held-out split; perplexity skipped", cfg.data.source)
        return None
    out = evaluate_perplexity(model, batches, device=next(model.parameters()).device, max_tokens=opts.eval_tokens)
    return {**out, "data": cfg.data.source, "seq_len": cfg.data.seq_len}


def model_summary(model: Any, source: Any) -> dict[str, Any]:
    mcfg = model.config
    return {"kind": source.kind, "path": source.path, "model_type": mcfg.model_type,
            "norm_type": getattr(mcfg, "norm_type", None), "num_layers": mcfg.num_hidden_layers,
            "params": sum(p.numel() for p in model.parameters())}


def wandb_row(result: dict[str, Any]) -> dict[str, float]:
    """Flat ``eval/...`` metrics for wandb."""
    row: dict[str, float] = {}
    ppl = result.get("perplexity") or {}
    for key in ("eval_loss", "eval_ppl"):
        if key in ppl:
            row[f"eval/{key}"] = ppl[key]
    for task, scores in (result.get("downstream") or {}).items():
        if isinstance(scores, dict):
            row.update({f"eval/{task}/{m}": v for m, v in scores.items() if m != "n"})
        elif isinstance(scores, float):
            row[f"eval/downstream_{task}"] = scores
    return row


def log_wandb(cfg: EvalConfig, result: dict[str, Any]) -> None:
    from cod_train.train.metrics import WandbSink, wandb_mode

    if cfg.logger.type != "wandb" or wandb_mode(cfg.logger) == "disabled":
        return
    assert cfg.run_dir is not None  # set by preflight()
    sink = WandbSink(cfg.logger, Path(cfg.run_dir), {"eval": dataclasses.asdict(cfg)})
    try:
        row = wandb_row(result)
        sink.log(row)
        sink.run.summary.update(row)
    finally:
        sink.close()


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run cod-eval as configured; returns what it wrote to ``run_dir/eval.json``."""
    from cod_train.eval.downstream import run_downstream

    source, task_manager = preflight(cfg)
    assert cfg.run_dir is not None  # set by preflight()
    import torch

    torch.manual_seed(cfg.seed)
    model, tokenizer = load(cfg, source)
    start = time.perf_counter()
    result: dict[str, Any] = {"checkpoint": cfg.checkpoint, "model": model_summary(model, source)}
    result["perplexity"] = perplexity(cfg, model, tokenizer) if cfg.perplexity.enabled else None
    result["downstream"] = (run_downstream(model, tokenizer, cfg.downstream, task_manager=task_manager)
                            if cfg.downstream.tasks else None)
    result["settings"] = {"downstream": dataclasses.asdict(cfg.downstream), "perplexity": dataclasses.asdict(cfg.perplexity)}
    result["seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_json(Path(cfg.run_dir) / "eval.json", result)
    log_wandb(cfg, result)
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    if result.get("perplexity"):
        p = result["perplexity"]
        lines.append(f"perplexity ({p['data']}, {p['eval_tokens']:,} tokens): {p['eval_ppl']:.2f}")
    for task, scores in (result.get("downstream") or {}).items():
        if isinstance(scores, dict):
            extra = f", acc_norm {scores['acc_norm']:.4f}" if "acc_norm" in scores else ""
            lines.append(f"{task}: acc {scores['acc']:.4f}{extra} (n={scores['n']})")
    if result.get("downstream"):
        lines.append(f"average: {result['downstream']['average']:.4f}")
    return lines


def eval_command(cfg: EvalConfig) -> int:
    """The whole cod-eval command after parsing: evaluate, write eval.json and eval_config.yaml, print."""
    from cod_train.runs.app import write_config

    result = evaluate(cfg)
    assert cfg.run_dir is not None  # set by evaluate()'s preflight()
    write_config(cfg, cfg.run_dir, name="eval_config.yaml")
    print("\n".join([*summary_lines(result), f"wrote {Path(cfg.run_dir) / 'eval.json'}"]), flush=True)
    return 0
