"""Supervised fine-tuning: instruction records, prompt templates, response-only labels, the batch iterator.

``cod-sft`` (``cod_train.runs.sft``) drives these through the shared training loop (``cod_train.train``).
The names below load on first use, so that ``cod_train.sft.config`` can be read without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SFTConfig": "config", "SFTDataConfig": "config",
    "SFTBatches": "loader", "SFTData": "loader", "build_sft_data": "loader", "collate": "loader",
    "eval_batches": "loader", "pack": "loader",
    "Example": "records", "SFTDataError": "records", "load_examples": "records",
    "encode": "template", "resolve_template": "template",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cod_train.sft' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cod_train.sft.{_EXPORTS[name]}"), name)
