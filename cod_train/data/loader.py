"""Random-access training and eval loaders over token shards (sources ``sample``, ``files``, ``shards``).

Samples: with ``packing`` the stream of documents (each ending in eos) is cut into windows of
``seq_len + 1`` tokens at stride ``seq_len`` (window k = tokens ``[k*T, k*T + T + 1)``; consecutive windows
share one token so every token after the first is a target exactly once); without packing, sample k is
document k truncated to ``seq_len + 1`` tokens and padded (pad masked out of the loss).

Order: global sample counter c (row i of global batch n has c = n * global_batch + i) maps to epoch
``c // N`` and sample ``perm_epoch(c % N)``, a seeded bijection. Row i of batch n therefore does not depend
on the number of ranks, and the whole state is the counter.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from cod_train.config import ConfigError
from cod_train.core.constants import IGNORE_INDEX
from cod_train.core.errors import RunError
from cod_train.data.common import DataStats
from cod_train.data.shards import TokenShards

IDS_AHEAD = 256  # steps of sample ids computed per permute call
_MASK64 = (1 << 64) - 1


def _round_keys(seed: int, epoch: int, rounds: int = 6) -> list[int]:
    rng = np.random.default_rng([seed & _MASK64, epoch])
    return [int(k) for k in rng.integers(0, 1 << 32, size=rounds, dtype=np.uint64)]


def permute(idx: np.ndarray, n: int, seed: int, epoch: int) -> np.ndarray:
    """A seeded bijection of ``[0, n)`` applied to ``idx``, in O(1) memory (a Feistel network on the next
    even power of two, cycle-walking values that fall outside ``[0, n)``)."""
    bits = max(2, (n - 1).bit_length())
    bits += bits % 2
    half = np.uint64(bits // 2)
    mask = np.uint64((1 << (bits // 2)) - 1)
    keys = [np.uint64(k) for k in _round_keys(seed, epoch)]
    out = np.asarray(idx, dtype=np.uint64).copy()
    todo = np.ones(out.shape, dtype=bool)
    while todo.any():
        x = out[todo]
        left, right = x >> half, x & mask
        for k in keys:
            f = (right * np.uint64(0x9E3779B97F4A7C15)) ^ k  # uint64 arithmetic wraps modulo 2**64
            f = (f ^ (f >> np.uint64(29))) * np.uint64(0xBF58476D1CE4E5B9)
            left, right = right, (left ^ (f >> np.uint64(17))) & mask
        out[todo] = (left << half) | right
        todo = out >= np.uint64(n)
    return out.astype(np.int64)


def rows_to_batch(rows: list[np.ndarray], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Rows of up to ``seq_len + 1`` tokens -> shifted ``input_ids``/``labels``; short rows are padded and
    their padding is ``-100`` in ``labels``."""
    ids = np.full((len(rows), seq_len), pad_id, dtype=np.int64)
    labels = np.full((len(rows), seq_len), IGNORE_INDEX, dtype=np.int64)
    for i, row in enumerate(rows):
        n = len(row) - 1
        if n > 0:
            ids[i, :n] = row[:-1]
            labels[i, :n] = row[1:]
    return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels)}


def packed_window_count(num_tokens: int, seq_len: int) -> int:
    return max(0, (num_tokens - 1) // seq_len)


class SampleIndex:
    """Sample k of a shard set as a token array (packed window or truncated document)."""

    def __init__(self, shards: TokenShards, seq_len: int, packing: bool):
        self.shards, self.seq_len, self.packing = shards, seq_len, packing
        self.num_samples = packed_window_count(shards.num_tokens, seq_len) if packing else shards.num_docs

    def row(self, k: int) -> np.ndarray:
        if self.packing:
            start = k * self.seq_len
            return self.shards.tokens(start, start + self.seq_len + 1)
        return self.shards.doc(k, self.seq_len + 1)


class ShardLoader:
    """Infinite, world-size-invariant, exactly resumable iterator of this rank's rows of each global batch.

    Runs in the training process (``data.num_workers`` is for the streaming loader): a batch is a few numpy
    calls on a memory map, well under a millisecond (BENCHMARKS.md)."""

    def __init__(self, shards: TokenShards, *, seq_len: int, packing: bool, global_batch_size: int, dp_rank: int,
                 dp_world: int, seed: int, pad_id: int, stats: DataStats | None = None):
        if global_batch_size % dp_world:
            raise ConfigError(f"train.global_batch_size={global_batch_size} is not divisible by the "
                              f"data-parallel world size {dp_world}")
        self.index = SampleIndex(shards, seq_len, packing)
        if self.index.num_samples == 0:
            raise ConfigError(f"{shards.path}: {shards.num_tokens} tokens is too little data for one "
                              f"sample of seq_len={seq_len}")
        self.seq_len, self.global_batch_size, self.seed, self.pad_id = seq_len, global_batch_size, seed, pad_id
        self.dp_rank, self.dp_world = dp_rank, dp_world
        self.local_batch_size = global_batch_size // dp_world
        self.consumed = 0  # samples of the global order consumed by all ranks together
        self._stats = stats or DataStats()
        self._ids_cache: tuple[int, np.ndarray | None] = (0, None)

    @property
    def num_samples(self) -> int:
        return self.index.num_samples

    def sample_ids(self, counters: np.ndarray) -> np.ndarray:
        n = self.num_samples
        out = np.empty(len(counters), dtype=np.int64)
        epochs = counters // n
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = permute(counters[sel] % n, n, self.seed, int(epoch))
        return out

    def _batch_ids(self, start: int) -> np.ndarray:
        """Sample ids of this rank's rows starting at counter ``start``; computed for ``IDS_AHEAD`` steps at a
        time because one vectorized ``permute`` call costs about the same for 16 ids as for thousands."""
        base, ids = self._ids_cache
        step = (start - base) // self.global_batch_size
        if ids is None or start < base or (start - base) % self.global_batch_size or step >= len(ids):
            offsets = np.arange(IDS_AHEAD)[:, None] * self.global_batch_size + np.arange(self.local_batch_size)
            ids = self.sample_ids(start + offsets.ravel()).reshape(IDS_AHEAD, self.local_batch_size)
            base, step = start, 0
            self._ids_cache = (base, ids)
        return ids[step]

    def batch_at(self, consumed: int) -> dict[str, torch.Tensor]:
        ids = self._batch_ids(consumed + self.dp_rank * self.local_batch_size)
        if self.index.packing:
            rows = self.index.shards.windows(ids * self.seq_len, self.seq_len + 1).astype(np.int64)
            return {"input_ids": torch.from_numpy(rows[:, :-1].copy()), "labels": torch.from_numpy(rows[:, 1:].copy())}
        return rows_to_batch([self.index.row(int(k)) for k in ids], self.seq_len, self.pad_id)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = self.batch_at(self.consumed)
        self.consumed += self.global_batch_size
        return batch

    def state_dict(self) -> dict:
        return {"kind": "shards", "consumed": self.consumed, "num_samples": self.num_samples, "seed": self.seed,
                "seq_len": self.seq_len, "packing": self.index.packing}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("kind", "num_samples", "seed", "seq_len", "packing"):
            if state.get(key) != mine[key]:
                raise RunError(f"data loader state does not match this data: {key}={state.get(key)!r} in the "
                                 f"checkpoint, {mine[key]!r} now (different corpus, tokenizer or data config?)")
        self.consumed = int(state["consumed"])

    def stats(self) -> dict:
        return {**self._stats.as_dict(), "epoch": self.consumed // self.num_samples,
                "samples_consumed": self.consumed, "num_samples": self.num_samples}


class ShardEvalData:
    """Deterministic held-out batches: samples in order until ``max_tokens`` target tokens (all ranks together);
    rank r takes samples r, r + R, ...; every rank yields the same number of batches (short ranks get
    all-ignored rows), so collective ops in the model never hang."""

    def __init__(self, shards: TokenShards, *, seq_len: int, packing: bool, micro_batch_size: int, max_tokens: int,
                 dp_rank: int, dp_world: int, pad_id: int):
        self.index = SampleIndex(shards, seq_len, packing)
        self.seq_len, self.micro_batch_size, self.pad_id = seq_len, micro_batch_size, pad_id
        self.dp_rank, self.dp_world = dp_rank, dp_world
        self.num_samples = self._samples_for(max_tokens)
        self.rows_per_rank = math.ceil(self.num_samples / dp_world)

    def _samples_for(self, max_tokens: int) -> int:
        if self.index.packing:
            return min(self.index.num_samples, math.ceil(max_tokens / self.seq_len))
        lengths = np.minimum(self.index.shards.doc_lengths(), self.seq_len + 1) - 1
        reached = np.nonzero(np.cumsum(lengths) >= max_tokens)[0]
        return int(reached[0]) + 1 if len(reached) else len(lengths)

    def __len__(self) -> int:
        return math.ceil(self.rows_per_rank / self.micro_batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        mine = list(range(self.dp_rank, self.num_samples, self.dp_world))
        mine += [-1] * (self.rows_per_rank - len(mine))
        empty = np.asarray([self.pad_id], dtype=np.int64)
        for lo in range(0, len(mine), self.micro_batch_size):
            rows = [self.index.row(k) if k >= 0 else empty for k in mine[lo:lo + self.micro_batch_size]]
            yield rows_to_batch(rows, self.seq_len, self.pad_id)
