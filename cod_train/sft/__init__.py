"""Supervised fine-tuning: instruction records, prompt templates, response-only labels, the batch iterator.

``cod-sft`` (``cod_train.cli.sft``) drives these through the shared training loop (``cod_train.train``).
"""

from cod_train.sft.config import SFTConfig, SFTDataConfig
from cod_train.sft.loader import SFTBatches, SFTData, build_sft_data, collate, eval_batches, pack
from cod_train.sft.records import Example, SFTDataError, load_examples
from cod_train.sft.template import encode, resolve_template

__all__ = [
    "Example",
    "SFTBatches",
    "SFTConfig",
    "SFTData",
    "SFTDataConfig",
    "SFTDataError",
    "build_sft_data",
    "collate",
    "encode",
    "eval_batches",
    "load_examples",
    "pack",
    "resolve_template",
]
