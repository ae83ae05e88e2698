"""Tokenized SFT rows and the stateful batch iterator the shared training loop drives.

Rows are built identically on every rank (examples shuffled once with the seed, tokenized, optionally
packed). Global batch ``n`` is rows ``n*G .. n*G+G-1`` of an endless sequence of per-epoch permutations;
rank ``r`` of ``W`` gets its contiguous ``G/W`` share, padded to the longest row of the *global* batch. So
row i of global batch n is the same whatever W is, and ``state_dict()`` (just the step) restores exactly,
also onto a different world size.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from cod_train.config import ConfigError
from cod_train.core.constants import IGNORE_INDEX
from cod_train.sft.config import SFTDataConfig
from cod_train.sft.records import Example, SFTDataError, load_examples
from cod_train.sft.template import encode, resolve_template

log = logging.getLogger("cod_train.sft")

Row = tuple[list[int], list[int]]  # (input_ids, labels)


@dataclass
class SFTData:
    """Train and held-out rows plus what happened while building them."""

    train: list[Row]
    eval: list[Row]
    template: str
    pad_id: int
    stats: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=8)
        for ids, labels in self.train:
            h.update(repr((ids, labels)).encode())
        return h.hexdigest()


def encode_examples(examples: list[Example], template: str, tokenizer: Any, cfg: SFTDataConfig) -> tuple[list[Row], dict]:
    """Tokenize; drop examples whose response was truncated away entirely (counted in the stats)."""
    rows, no_target, truncated = [], 0, 0
    for ex in examples:
        ids, labels = encode(ex, template, tokenizer, cfg)
        if all(lab == IGNORE_INDEX for lab in labels):
            no_target += 1
            continue
        truncated += len(ids) == cfg.row_length
        rows.append((ids, labels))
    return rows, {"examples": len(examples), "dropped_no_response": no_target, "truncated": truncated}


def pack(rows: list[Row], max_length: int) -> list[Row]:
    """Greedily concatenate consecutive rows up to ``max_length`` tokens; no row is split."""
    packed: list[Row] = []
    cur_ids: list[int] = []
    cur_labels: list[int] = []
    for ids, labels in rows:
        if cur_ids and len(cur_ids) + len(ids) > max_length:
            packed.append((cur_ids, cur_labels))
            cur_ids, cur_labels = [], []
        cur_ids = cur_ids + ids
        cur_labels = cur_labels + labels
    if cur_ids:
        packed.append((cur_ids, cur_labels))
    return packed


def split_examples(examples: list[Example], eval_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = math.ceil(eval_fraction * len(examples)) if eval_fraction > 0 and len(examples) >= 10 else 0
    return [examples[i] for i in order[n_eval:]], [examples[i] for i in order[:n_eval]]


def build_sft_data(cfg: SFTDataConfig, tokenizer: Any, seed: int, examples: list[Example] | None = None) -> SFTData:
    """Load (unless ``examples`` are given), split, tokenize and (with ``cfg.packing``) pack."""
    examples = load_examples(cfg) if examples is None else examples
    template = resolve_template(cfg.template, tokenizer)
    train_ex, eval_ex = split_examples(examples, cfg.eval_fraction, seed)
    train, stats = encode_examples(train_ex, template, tokenizer, cfg)
    held, held_stats = encode_examples(eval_ex, template, tokenizer, cfg)
    stats = {k: stats[k] + held_stats[k] for k in stats}
    if not train:
        raise SFTDataError(f"no training example has a response within sft.max_length={cfg.row_length} tokens")
    if cfg.packing:
        train, held = pack(train, cfg.row_length), pack(held, cfg.row_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stats.update(template=template, train_rows=len(train), eval_rows=len(held),
                 response_tokens=sum(sum(lab != IGNORE_INDEX for lab in labels) for _, labels in train))
    log.info("sft data: %s", stats)
    return SFTData(train, held, template, int(pad_id), stats)


def collate(rows: list[Row], pad_id: int, length: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad to ``length`` (default: the longest row): ``input_ids`` with ``pad_id``, labels with -100."""
    length = length or max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, labs) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[i, : len(labs)] = torch.tensor(labs, dtype=torch.long)
    return {"input_ids": input_ids, "labels": labels}


class SFTBatches:
    """Endless, resumable iterator over this rank's share of each global batch (see module docstring)."""

    def __init__(self, data: SFTData, *, global_batch_size: int, dp_rank: int = 0, dp_world: int = 1,
                 seed: int = 0) -> None:
        if global_batch_size % dp_world:
            raise ConfigError(f"train.global_batch_size={global_batch_size} is not divisible by the "
                              f"data-parallel world size {dp_world}")
        self.rows, self.pad_id = data.train, data.pad_id
        self.global_batch_size, self.rank, self.world, self.seed = global_batch_size, dp_rank, dp_world, seed
        self.step = 0
        self._fingerprint = data.fingerprint()
        self._perm: tuple[int, list[int]] = (-1, [])

    def _order(self, epoch: int) -> list[int]:
        if self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.rows), generator=g).tolist())
        return self._perm[1]

    def global_rows(self, step: int) -> list[Row]:
        n, out = len(self.rows), []
        for i in range(step * self.global_batch_size, (step + 1) * self.global_batch_size):
            out.append(self.rows[self._order(i // n)[i % n]])
        return out

    @property
    def epoch(self) -> float:
        return self.step * self.global_batch_size / len(self.rows)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        rows = self.global_rows(self.step)
        length = max(len(ids) for ids, _ in rows)
        share = self.global_batch_size // self.world
        self.step += 1
        return collate(rows[self.rank * share: (self.rank + 1) * share], self.pad_id, length)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "seed": self.seed, "rows": len(self.rows), "fingerprint": self._fingerprint,
                "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("fingerprint") != self._fingerprint or state.get("seed") != self.seed:
            raise ConfigError("the SFT data (files, template, tokenizer, max_length, packing or seed) differs from "
                              "the checkpoint's; resume with the same sft.* settings or resume=none")
        if state.get("global_batch_size") != self.global_batch_size:
            raise ConfigError(f"checkpoint was trained with train.global_batch_size={state.get('global_batch_size')}")
        self.step = int(state["step"])


def eval_batches(data: SFTData, *, micro_batch_size: int, dp_rank: int = 0, dp_world: int = 1) -> list[dict[str, torch.Tensor]]:
    """This rank's held-out micro-batches (rows ``rank::world``), a fresh deterministic list."""
    rows = data.eval[dp_rank::dp_world]
    return [collate(rows[i: i + micro_batch_size], data.pad_id) for i in range(0, len(rows), micro_batch_size)]
