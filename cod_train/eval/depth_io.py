"""Inputs and outputs of ``cod-analyze``: which model a ``checkpoint=`` names, held-out batches, JSON files.

``checkpoint=`` may be
- an HF directory (``config.json`` + weights), e.g. ``run_dir/hf``;
- a training checkpoint ``run_dir/checkpoints/step_NNNNNNN`` (loaded with ``cod_train.engine.export``);
- a run directory (its ``hf/`` export when present, else its latest checkpoint);
- a hub name (``org/model``), loaded with ``AutoModelForCausalLM.from_pretrained``.
Anything else is a :class:`~cod_train.config.ConfigError`, raised before any model is loaded.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cod_train.config import ConfigError
from cod_train.core import hub

HF_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
HUB_MODEL_HINT = ("pass checkpoint= a local run directory, training checkpoint or HF directory (e.g. one saved "
                  "with save_pretrained), or download the model where the hub is reachable")
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DIAG_FILES = {
    "variance": "layer_variance",
    "angular": "angular_distance",
    "pruning": "layer_pruning",
    "grad_norms": "grad_norms",
}


@dataclass
class ModelSource:
    """A resolved ``checkpoint=``: ``kind`` is ``hf``, ``checkpoint`` or ``hub``."""

    spec: str
    kind: str
    path: str
    run_dir: Path | None = None


def _is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any((path / w).is_file() for w in HF_WEIGHTS)


def _is_train_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / "meta.json").is_file()


def _looks_like_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in ("metrics.jsonl", "config.yaml", "checkpoints", "hf"))


def _latest_checkpoint(run_dir: Path) -> Path | None:
    """Latest complete ``step_N`` under ``run_dir/checkpoints`` (or ``run_dir`` itself being that folder)."""
    for root in (run_dir / "checkpoints", run_dir):
        if root.is_dir():
            steps = [
                p for p in root.iterdir() if re.fullmatch(r"step_\d+", p.name) and _is_train_checkpoint(p)
            ]
            if steps:
                return max(steps, key=lambda p: int(p.name.split("_")[1]))
    return None


def resolve_checkpoint(spec: str) -> ModelSource:
    """Classify ``spec`` without loading anything; raise ConfigError with a clear message if it is no model."""
    path = Path(str(spec)).expanduser()
    if path.is_dir():
        if _is_train_checkpoint(path):  # before the HF test: torch-format checkpoints also hold config.json
            run = path.parent.parent if path.parent.name == "checkpoints" else None
            return ModelSource(str(spec), "checkpoint", str(path), run)
        if _is_hf_dir(path):
            parent = path.parent if path.name == "hf" and _looks_like_run_dir(path.parent) else None
            return ModelSource(str(spec), "hf", str(path), parent)
        if _is_hf_dir(path / "hf"):
            return ModelSource(str(spec), "hf", str(path / "hf"), path)
        latest = _latest_checkpoint(path)
        if latest is not None:
            run = latest.parent.parent if latest.parent.name == "checkpoints" else None
            return ModelSource(str(spec), "checkpoint", str(latest), run)
        raise ConfigError(
            f"checkpoint={spec!r} is a directory but not a model: expected an HF directory (config.json + "
            "model.safetensors), a training checkpoint (meta.json), or a run directory with hf/ or checkpoints/"
        )
    if path.exists():
        raise ConfigError(f"checkpoint={spec!r} is a file, not a checkpoint directory")
    # runs/x (or anything whose parent exists here) is a local path that is missing, not a hub name
    local = path.parts[0] in ("runs", "outputs", "multirun") or (path.parent != Path(".") and path.parent.is_dir())
    if local:
        raise ConfigError(f"checkpoint={spec!r}: no such directory (run cod-pretrain / cod-sft first, or pass "
                          "checkpoint= a run directory, checkpoint, HF directory or hub name)")
    if HUB_NAME.match(str(spec)) and not str(spec).startswith((".", "/", "~")):
        return ModelSource(str(spec), "hub", str(spec), None)
    raise ConfigError(f"checkpoint={spec!r}: no such directory (and not a hub name like 'org/model')")


def load_model(source: ModelSource, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load the model of ``source`` on CPU in eval mode."""
    import cod_train  # noqa: F401  (registers cod_llama)

    if source.kind == "checkpoint":
        from cod_train.engine.export import build_from_checkpoint

        model = build_from_checkpoint(Path(source.path))
        return model.to(dtype).eval()
    from transformers import AutoModelForCausalLM

    if source.kind == "hub":
        return hub.cached_or_hub(AutoModelForCausalLM.from_pretrained, source.path, f"checkpoint={source.spec!r}",
                                 HUB_MODEL_HINT, dtype=dtype).eval()
    try:
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype)
    except (OSError, ValueError) as err:
        raise ConfigError(f"checkpoint={source.spec!r} could not be loaded: {err}") from None
    return model.eval()


def load_tokenizer(source: ModelSource) -> Any | None:
    """The tokenizer stored with the model (HF dir, ``checkpoint/tokenizer``, or the run's ``hf/``)."""
    from transformers import AutoTokenizer

    candidates = [Path(source.path)]
    if source.kind == "checkpoint":
        candidates = [Path(source.path) / "tokenizer"]
    if source.run_dir is not None:
        candidates.append(source.run_dir / "hf")
    for cand in candidates:
        if (cand / "tokenizer.json").is_file() or (cand / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(str(cand))
    if source.kind == "hub":
        return hub.cached_or_hub(AutoTokenizer.from_pretrained, source.path, f"the tokenizer of {source.spec!r}",
                                 HUB_MODEL_HINT)
    return None


# ----------------------------------------------------------------------------- held-out text


def _read_texts(path: Path, text_field: str = "text") -> Iterator[str]:
    if path.suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    yield str(json.loads(line).get(text_field, ""))
    else:
        yield path.read_text(encoding="utf-8")


def text_batches(
    paths: list[str], tokenizer: Any, *, seq_len: int, micro_batch_size: int, max_tokens: int
) -> list[dict[str, torch.Tensor]]:
    """Tokenize documents (eos between them), pack into ``seq_len`` rows, up to ``max_tokens`` tokens."""
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for name in paths:
        for text in _read_texts(Path(name)):
            ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
            if eos is not None:
                ids.append(eos)
            if len(ids) >= max_tokens + 1:
                break
    n_rows = min(len(ids) - 1, max_tokens) // seq_len
    if n_rows < 1:
        raise ConfigError(f"analyze.text_path holds {len(ids)} tokens, fewer than one row of {seq_len}")
    flat = torch.tensor(ids[: n_rows * seq_len + 1])
    inputs, labels = flat[:-1].view(n_rows, seq_len), flat[1:].view(n_rows, seq_len)
    return [
        {"input_ids": inputs[i : i + micro_batch_size], "labels": labels[i : i + micro_batch_size]}
        for i in range(0, n_rows, micro_batch_size)
    ]


# ----------------------------------------------------------------------------- outputs


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as JSON (non-finite floats become null), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def model_info(model: nn.Module, source: ModelSource, label: str) -> dict[str, Any]:
    """Summary of a loaded model; ConfigError when it lacks the LLaMA layout the diagnostics need."""
    from cod_train.eval.depth_hooks import num_layers

    try:
        layers = num_layers(model)
    except TypeError as err:
        raise ConfigError(f"checkpoint={source.spec!r}: {err}") from None
    cfg = getattr(model, "config", None)
    return {
        "label": label,
        "checkpoint": source.spec,
        "model_type": getattr(cfg, "model_type", None),
        "norm_type": getattr(
            cfg, "norm_type", "pre_ln" if getattr(cfg, "model_type", "") != "cod_llama" else None
        ),
        "num_layers": layers,
        "params": sum(p.numel() for p in model.parameters()),
    }
