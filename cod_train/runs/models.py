"""Models from anywhere: what a ``checkpoint=`` names, classified once, and loading it with its tokenizer.

``checkpoint=`` may be
- an HF directory (``config.json`` + weights), e.g. ``run_dir/hf``;
- a training checkpoint ``run_dir/checkpoints/step_NNNNNNN`` (loaded with ``cod_train.engine.export``);
- a run directory (its ``hf/`` export when present, else its latest checkpoint);
- a hub name (``org/model``), loaded with ``AutoModelForCausalLM.from_pretrained`` (the local HF cache first).
Anything else is a :class:`~cod_train.config.ConfigError`, raised before any model is loaded.
cod-sft, cod-eval and cod-analyze use this module, so they accept the same inputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cod_train.core import hub
from cod_train.core.errors import ConfigError
from cod_train.engine.checkpoint import is_checkpoint, latest_checkpoint

HF_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
HUB_MODEL_HINT = ("pass checkpoint= a local run directory, training checkpoint or HF directory (e.g. one saved "
                  "with save_pretrained), or download the model where the hub is reachable")
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
@dataclass
class ModelSource:
    """A resolved ``checkpoint=``: ``kind`` is ``hf``, ``checkpoint`` or ``hub``."""

    spec: str
    kind: str
    path: str
    run_dir: Path | None = None


def _is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any((path / w).is_file() for w in HF_WEIGHTS)


def _looks_like_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in ("metrics.jsonl", "config.yaml", "checkpoints", "hf"))


def resolve_checkpoint(spec: str) -> ModelSource:
    """Classify ``spec`` without loading anything; raise ConfigError with a clear message if it is no model."""
    path = Path(str(spec)).expanduser()
    if path.is_dir():
        if is_checkpoint(path):  # before the HF test: torch-format checkpoints also hold config.json
            run = path.parent.parent if path.parent.name == "checkpoints" else None
            return ModelSource(str(spec), "checkpoint", str(path), run)
        if _is_hf_dir(path):
            parent = path.parent if path.name == "hf" and _looks_like_run_dir(path.parent) else None
            return ModelSource(str(spec), "hf", str(path), parent)
        if _is_hf_dir(path / "hf"):
            return ModelSource(str(spec), "hf", str(path / "hf"), path)
        latest = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
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
    from cod_train.model.build import register

    register()  # cod_llama with the Auto classes

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


def tokenizer_for(source: Any, override: str | None, spec: str) -> Any:
    """``override`` (a path or hub name) if given, else the tokenizer saved with the model; pad defaults to eos."""
    tok: Any
    if override:
        from transformers import AutoTokenizer

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


def check_vocab(model: Any, tokenizer: Any, spec: str) -> None:
    """The tokenizer's ids all fit the model's embedding."""
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        raise ConfigError(f"checkpoint={spec!r}: its tokenizer has {len(tokenizer)} tokens but the model embeds "
                          f"only {vocab}; pass the tokenizer it was trained with (tokenizer=...)")
