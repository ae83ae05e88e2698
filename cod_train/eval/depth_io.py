"""Inputs and outputs of the depth analyses: held-out batches from text files, the analysis file names, the
summary of a loaded model. (Which model a ``checkpoint=`` names, and loading it: ``cod_train.runs.models``.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cod_train.config import ConfigError, model_scheme
from cod_train.eval.depth_registry import DIAG_FILES, SUMMARY_FILE

__all__ = ["DIAG_FILES", "SUMMARY_FILE", "layout_layers", "model_info", "text_batches"]


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


def layout_layers(model: nn.Module, spec: str) -> int:
    """The number of decoder layers; ConfigError (one line) when the model lacks the LLaMA layout."""
    from cod_train.eval.depth_hooks import num_layers

    try:
        return num_layers(model)
    except TypeError as err:
        raise ConfigError(f"checkpoint={spec!r}: {err}") from None


def model_info(model: nn.Module, spec: str, label: str) -> dict[str, Any]:
    """Summary of a loaded model; ConfigError when it lacks the LLaMA layout the diagnostics need."""
    from cod_train.eval.depth_scalars import learned_scalars

    layers = layout_layers(model, spec)
    cfg = getattr(model, "config", None)
    ours = getattr(cfg, "model_type", "") == "cod_llama"
    norm_type = getattr(cfg, "norm_type", None if ours else "pre_ln")
    return {
        "label": label,
        "checkpoint": spec,
        "model_type": getattr(cfg, "model_type", None),
        "norm_type": norm_type,
        "scheme": model_scheme(cfg) if ours else norm_type,  # the run directory's name for it: lns+gpas+dyt
        "num_layers": layers,
        "params": sum(p.numel() for p in model.parameters()),
        "learned_scalars": learned_scalars(
            model
        ),  # DyT alphas, GPAS gates, ReZero / LayerScale gains per layer
    }


def add_scheme_outputs(model: nn.Module, info: dict[str, Any], batch: dict[str, torch.Tensor]) -> None:
    """The residual scheme's own outputs on ``batch``: its weights' token means join ``info["learned_scalars"]``
    (suffix ``.tokens``) and its analyses join ``info`` (hyper-connections: ``hc_connection_map``, the unfolded
    connection map); nothing for a scheme without them."""
    from cod_train.eval.depth_hooks import backbone, model_device, residual_scheme, to_device, unwrap_model

    scheme = residual_scheme(model)
    if scheme is None:
        return
    inner = backbone(unwrap_model(model))
    batch = to_device({k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}, model_device(model))
    info["learned_scalars"].update(scheme.learned_scalars(inner, batch=batch))
    info.update(scheme.analyses(inner, batch))
