"""The body of ``cod-analyze`` (usage: ``cod_train/cli/analyze.py``): depth diagnostics for one or more
checkpoints, every ``checkpoint=`` checked before any model is loaded."""

from __future__ import annotations

import copy
import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cod_train.config import ConfigError, DataConfig, to_typed
from cod_train.core.constants import IGNORE_INDEX
from cod_train.eval.depth_registry import DIAGNOSTICS, NAMES, SUMMARY_FILE, unknown_names

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class DownstreamOptions:
    tasks: list[str] = field(default_factory=list)  # empty = no downstream metric in the pruning curve
    limit: int | None = 100
    batch_size: int = 8
    metric: str = "acc"


@dataclass
class AnalyzeOptions:
    diagnostics: list[str] = field(default_factory=lambda: list(NAMES))  # cod_train.eval.depth_registry
    layers: list[int] = field(
        default_factory=list
    )  # 1-based layers to remove (pruning, skip effect); [] = all
    progress: bool = True  # progress bars with ETA on stderr
    eval_tokens: int = 16384
    micro_batch_size: int = 8
    seq_len: int | None = None  # null = data.seq_len
    grad_batches: int = 1
    text_path: list[str] = field(default_factory=list)  # local .txt/.jsonl instead of `data`
    data_from_run: bool = True  # a run's own config.yaml `data` block wins over `data=` (same held-out split)
    dtype: str = "float32"
    downstream: DownstreamOptions = field(default_factory=DownstreamOptions)


@dataclass
class AnalyzeConfig:
    checkpoint: Any = None
    labels: list[str] | None = None
    run_dir: str | None = None
    device: str = "auto"
    seed: int = 1234
    data: DataConfig = field(default_factory=DataConfig)
    analyze: AnalyzeOptions = field(default_factory=AnalyzeOptions)


def _checkpoint_list(raw: Any) -> list[str]:
    if raw is None or raw == "" or raw == "???":
        raise ConfigError(
            "checkpoint=PATH is required (a run directory, checkpoint, HF directory or hub name)"
        )
    items = list(raw) if isinstance(raw, (list, tuple, ListConfig)) else [raw]
    return [str(x) for x in items]


def validate(cfg: AnalyzeConfig) -> tuple[list, list[str], Path]:
    """Resolve every checkpoint, the labels and the output directory before any work."""
    from cod_train.runs.models import resolve_checkpoint

    sources = [resolve_checkpoint(spec) for spec in _checkpoint_list(cfg.checkpoint)]
    unknown = unknown_names(tuple(cfg.analyze.diagnostics))
    if unknown:
        raise ConfigError(f"analyze.diagnostics: unknown {unknown}; valid: {list(NAMES)}")
    if cfg.analyze.dtype not in DTYPES:
        raise ConfigError(f"analyze.dtype must be one of {list(DTYPES)}, got {cfg.analyze.dtype!r}")
    if cfg.analyze.eval_tokens < 1 or cfg.analyze.micro_batch_size < 1:
        raise ConfigError("analyze.eval_tokens and analyze.micro_batch_size must be >= 1")
    if cfg.analyze.downstream.tasks:
        from cod_train.eval.downstream import validate_tasks

        validate_tasks(list(cfg.analyze.downstream.tasks))
    for path in cfg.analyze.text_path:
        if not Path(path).is_file():
            raise ConfigError(f"analyze.text_path: {path!r} is not a file")
        if not Path(path).read_text(encoding="utf-8", errors="replace").strip():
            raise ConfigError(f"analyze.text_path: {path!r} is empty")
    if any(int(i) < 1 for i in cfg.analyze.layers):
        raise ConfigError(f"analyze.layers: layers are numbered from 1, got {list(cfg.analyze.layers)}")
    labels = list(cfg.labels) if cfg.labels else [_default_label(s) for s in sources]
    if len(labels) != len(sources):
        raise ConfigError(f"labels: {len(labels)} labels for {len(sources)} checkpoints")
    if len(set(labels)) != len(labels):
        labels = [f"{label} [{i}]" for i, label in enumerate(labels)]
    return sources, labels, _output_dir(cfg, sources)


def check_models(cfg: AnalyzeConfig, sources: list) -> None:
    """Before any weights are loaded: each local model (its config.json, built on the meta device) has the
    LLaMA layout and the layers of ``analyze.layers``. Hub models are checked once loaded."""
    import torch

    from cod_train.model.build import register

    register()  # cod_llama with the Auto classes
    from cod_train.eval.depth_io import layout_layers

    for source in sources:
        config_json = Path(source.path) / "config.json" if source.kind != "hub" else None
        if config_json is None or not config_json.is_file():
            continue
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(str(config_json.parent))
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
        check_layer_range(cfg, layout_layers(skeleton, source.spec), source.spec)


def check_layer_range(cfg: AnalyzeConfig, num_layers: int, spec: str) -> None:
    bad = [i for i in cfg.analyze.layers if int(i) > num_layers]
    if bad:
        raise ConfigError(
            f"analyze.layers: {bad} out of range for checkpoint={spec!r}, which has layers 1..{num_layers}"
        )


def _default_label(source: Any) -> str:
    if source.kind == "hub":
        return source.spec
    path = Path(source.path)
    if source.kind == "checkpoint":
        return f"{source.run_dir.name}@{path.name}" if source.run_dir else path.name
    return source.run_dir.name if source.run_dir else path.name


def _output_dir(cfg: AnalyzeConfig, sources: list) -> Path:
    if cfg.run_dir:
        return Path(cfg.run_dir)
    if len(sources) == 1 and sources[0].run_dir is not None:
        return sources[0].run_dir
    return Path("runs/analysis")


def data_config_for(cfg: AnalyzeConfig, source: Any) -> DataConfig:
    """The run's own ``data`` block (from ``run_dir/config.yaml``) when ``analyze.data_from_run``, else ``data``."""
    run_cfg = source.run_dir / "config.yaml" if source.run_dir is not None else None
    if not cfg.analyze.data_from_run or run_cfg is None or not run_cfg.is_file():
        return copy.deepcopy(cfg.data)
    try:
        block = cast(DictConfig, OmegaConf.load(run_cfg)).get("data")
        data = to_typed(block, DataConfig) if block is not None else None
    except (ConfigError, OmegaConfBaseException, OSError):
        data = None
    if data is None:
        print(f"cod-analyze: {run_cfg} has no usable data block; using data={cfg.data.source}")
        return copy.deepcopy(cfg.data)
    return data


def held_out_batches(cfg: AnalyzeConfig, tokenizer: Any, data_cfg: DataConfig | None = None) -> list[dict]:
    """``analyze.eval_tokens`` tokens of held-out text: ``analyze.text_path`` if set, else ``data_cfg``
    (default ``cfg.data``) through ``cod_train.data.build_eval_data``."""
    from cod_train.eval.depth_io import text_batches

    opts = cfg.analyze
    seq_len = opts.seq_len or (data_cfg or cfg.data).seq_len
    if opts.text_path:
        return text_batches(
            list(opts.text_path),
            tokenizer,
            seq_len=seq_len,
            micro_batch_size=opts.micro_batch_size,
            max_tokens=opts.eval_tokens,
        )
    import torch

    from cod_train.data import build_eval_data

    data_cfg = copy.deepcopy(data_cfg or cfg.data)
    data_cfg.seq_len = seq_len
    batches, tokens = [], 0
    data = build_eval_data(
        data_cfg,
        tokenizer,
        micro_batch_size=opts.micro_batch_size,
        max_tokens=opts.eval_tokens,
        dp_rank=0,
        dp_world=1,
    )
    for batch in data if data is not None else []:  # None: the source holds nothing out
        batches.append({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)})
        tokens += int((batch["labels"] != IGNORE_INDEX).sum())
        if tokens >= opts.eval_tokens:
            break
    if not batches:
        raise ConfigError("the held-out data produced no batches; check data.* or set analyze.text_path")
    return batches


def _tokenizer_for(source: Any, data_cfg: DataConfig) -> Any:
    from cod_train.runs.models import load_tokenizer

    tokenizer = load_tokenizer(source)
    if tokenizer is not None:
        return tokenizer
    from cod_train.data import build_tokenizer

    return build_tokenizer(data_cfg)


def _metric_fn(cfg: AnalyzeConfig, tokenizer: Any) -> Any:
    opts = cfg.analyze.downstream
    if not opts.tasks or "pruning" not in cfg.analyze.diagnostics:
        return None
    from cod_train.eval.downstream import DownstreamConfig, prepare_tasks, run_downstream

    ds_cfg = DownstreamConfig(
        tasks=list(opts.tasks), limit=opts.limit, batch_size=opts.batch_size, metric=opts.metric
    )
    manager = prepare_tasks(ds_cfg)
    return lambda model: run_downstream(model, tokenizer, ds_cfg, task_manager=manager)["average"]


def analyze_one(cfg: AnalyzeConfig, source: Any, label: str, device: torch.device) -> dict[str, dict]:
    """Load one model, run the diagnostics, return ``{diagnostic: entry}`` (entries carry the model info)."""
    import torch

    from cod_train.eval.depth_io import add_scheme_outputs, model_info
    from cod_train.eval.diagnostics import run_diagnostics
    from cod_train.runs.models import load_model

    data_cfg = data_config_for(cfg, source)
    tokenizer = _tokenizer_for(source, data_cfg)
    model = load_model(source, getattr(torch, cfg.analyze.dtype)).to(device)
    info = model_info(model, source.spec, label)  # checks the layout before any data work
    info.update(weights_origin(source))
    check_layer_range(cfg, info["num_layers"], source.spec)
    config: Any = model.config  # an HF config, whatever the model class
    if tokenizer is not None and len(tokenizer) > config.vocab_size:
        raise ConfigError(
            f"checkpoint={source.spec!r}: tokenizer has {len(tokenizer)} tokens, the model only "
            f"{config.vocab_size}; analyze with the tokenizer the model was trained with"
        )
    batches = held_out_batches(cfg, tokenizer, data_cfg)
    info["eval_tokens"] = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
    add_scheme_outputs(model, info, batches[0])  # e.g. hyper-connections' weights on held-out tokens
    results = run_diagnostics(
        model,
        batches,
        which=cfg.analyze.diagnostics,
        grad_batches=cfg.analyze.grad_batches,
        metric_fn=_metric_fn(cfg, tokenizer),
        layers=[int(i) - 1 for i in cfg.analyze.layers] or None,
        progress=cfg.analyze.progress,
        log=print,
    )
    if "pruning" in results and cfg.analyze.downstream.tasks:
        results["pruning"]["metric_name"] = f"downstream {cfg.analyze.downstream.metric} (avg)"
    del model
    gc.collect()
    return {name: {**info, **entry} for name, entry in results.items()}


def weights_origin(source: Any) -> dict[str, Any]:
    """The run directory the weights were trained in (absolute) and their training step, so that cod-report gives
    each model of a joint analysis to its own run and says which step it shows; None for a hub model."""
    from cod_train.report.runs import weights_step

    if source.kind == "hub":
        return {"run_dir": None, "step": None}
    return {"run_dir": str(source.run_dir.resolve()) if source.run_dir is not None else None,
            "step": weights_step(Path(source.path))}  # fmt: skip


def write_outputs(out_dir: Path, per_model: list[dict[str, dict]]) -> list[Path]:
    """One JSON and one PNG per diagnostic under ``out_dir/analysis``, and ``depth_summary.json``."""
    from cod_train.core.io import atomic_write_json
    from cod_train.eval.depth_summary import depth_summary
    from cod_train.report import plots

    written = []
    for diag in DIAGNOSTICS:
        entries = [m[diag.name] for m in per_model if diag.name in m]
        if not entries:
            continue
        base = out_dir / "analysis" / diag.file
        written.append(atomic_write_json(base.with_suffix(".json"), {"diagnostic": diag.file, "models": entries}))
        png = getattr(plots, diag.plot)(entries, base.with_suffix(".png")) if diag.plot else None
        if png is not None:
            written.append(png)
    written += scheme_figures([next(iter(m.values())) for m in per_model if m], out_dir / "analysis")
    summaries = [
        {**_identity(m), **depth_summary(m.get("pruning"), m.get("logit_lens"))}
        for m in per_model
        if "pruning" in m or "logit_lens" in m
    ]
    if summaries:
        path = out_dir / "analysis" / f"{SUMMARY_FILE}.json"
        written.append(atomic_write_json(path, {"diagnostic": SUMMARY_FILE, "models": summaries}))
    return written


def scheme_figures(entries: list[dict], out_dir: Path) -> list[Path]:
    """The residual schemes' own figures (`Residual.figures`: hyper-connections' maps, AttnRes's depth
    attention), each drawn from the entries that carry what it shows."""
    import importlib

    from cod_train.model import zoo

    figures = {stem: ref for name in zoo.residual_names() for stem, ref in zoo.residual(name).figures.items()}
    written = []
    for stem, ref in sorted(figures.items()):
        module, function = ref.split(":")
        png = getattr(importlib.import_module(module), function)(entries, out_dir / f"{stem}.png")
        written += [png] if png is not None else []
    return written


def _identity(entries: dict[str, dict]) -> dict[str, Any]:
    first = next(iter(entries.values()))
    keys = ("label", "checkpoint", "run_dir", "step", "model_type", "norm_type", "scheme", "num_layers", "params", "eval_tokens")
    return {k: first.get(k) for k in keys}


def run(cfg: AnalyzeConfig) -> list[Path]:
    import torch

    from cod_train.engine.distributed import parse_device

    sources, labels, out_dir = validate(cfg)
    check_models(cfg, sources)
    torch.manual_seed(cfg.seed)
    device = parse_device(cfg.device)
    per_model = []
    for source, label in zip(sources, labels, strict=True):
        start = time.perf_counter()
        print(f"cod-analyze: {label} ({source.kind}: {source.path})")
        per_model.append(analyze_one(cfg, source, label, device))
        print(f"cod-analyze: {label} done in {time.perf_counter() - start:.1f}s")
    written = write_outputs(out_dir, per_model)
    print(f"cod-analyze: wrote {len(written)} files to {out_dir / 'analysis'}")
    return written


def analyze_command(cfg: AnalyzeConfig) -> int:
    """The command: exit code 0 (a ConfigError becomes exit code 2 in ``hydra_app``)."""
    run(cfg)
    return 0
