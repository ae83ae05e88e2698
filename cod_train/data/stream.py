"""Streaming loader (``data=c4``): the hub's C4 files (``hf://`` URLs) or local files in ``data.paths``.

Why not ``datasets.load_dataset(..., streaming=True)``: its ``state_dict`` drops the shuffle buffer on
resume (not exact) and its json reader stops at the first malformed line. This module reads the same
files with :mod:`cod_train.data.readers` (bad records skipped and counted) and keeps every piece of state.

Layout: ``S = dp_world * max(num_workers, 1)`` independent streams; stream ``j = rank * W + worker``
reads files ``perm_epoch[j::S]`` (or, with fewer files than streams, every S-th record), so no document is
read twice per epoch. A stream tokenizes documents, shuffles them through a seeded buffer, packs (or
truncates) them into rows and emits whole local batches; the rank's batch n comes from its stream
``n % W`` (the DataLoader's round robin).

Exact resume: a stream's state is small except for its shuffle buffer, so workers send a full snapshot
only every ``data.snapshot_every`` batches; the loader's state per stream is (last snapshot, batches since),
and a restore loads the snapshot and replays at most ``snapshot_every`` batches.
"""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from transformers import PreTrainedTokenizerFast

from cod_train.config import ConfigError, DataConfig
from cod_train.core.errors import RunError
from cod_train.data.common import DataStats, fingerprint
from cod_train.data.loader import rows_to_batch
from cod_train.data.readers import Bad, iter_records

TOKENIZE_BATCH = 64


class DocStream:
    """One stream of documents -> rows. Everything that defines its future output is in ``state_dict``."""

    def __init__(self, files: list[str], stream_id: int, num_streams: int, *, tokenizer_json: str, eos_id: int,
                 seq_len: int, packing: bool, rows_per_batch: int, shuffle_buffer: int, seed: int,
                 text_field: str = "text", text_unit: str = "line", shuffle_files: bool = True,
                 max_epochs: int | None = None):
        self.files, self.stream_id, self.num_streams = files, stream_id, num_streams
        self.tokenizer_json, self.eos_id = tokenizer_json, eos_id
        self.seq_len, self.packing, self.rows_per_batch = seq_len, packing, rows_per_batch
        self.shuffle_buffer, self.seed, self.shuffle_files = shuffle_buffer, seed, shuffle_files
        self.text_field, self.text_unit, self.max_epochs = text_field, text_unit, max_epochs
        self._tok = None
        self._reader: Iterator[str | Bad] | None = None
        self.reset()

    def reset(self) -> None:
        self.epoch, self.file_pos, self.record_pos, self.batches = 0, 0, 0, 0
        self.pending: list[np.ndarray] = []
        self.buffer: list[np.ndarray] = []
        self.carry = np.zeros(0, dtype=np.int64)
        self.rows: list[np.ndarray] = []
        self.stats = DataStats()
        self.rng = np.random.default_rng([self.seed, self.stream_id, 0xC4])
        self._reader = None

    # -- reading --------------------------------------------------------------------------------------
    def _epoch_files(self) -> tuple[list[str], bool]:
        """(files of this stream this epoch, whether to keep only every S-th record)."""
        order = list(range(len(self.files)))
        if self.shuffle_files:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.files)).tolist()
        ordered = [self.files[i] for i in order]
        if len(ordered) >= self.num_streams:
            return ordered[self.stream_id::self.num_streams], False
        return ordered, True

    def _iter_records(self) -> Iterator[str | Bad]:
        """Records of this stream from the current (epoch, file_pos, record_pos), advancing the position."""
        while True:
            files, strided = self._epoch_files()
            while self.file_pos < len(files):
                for i, rec in enumerate(iter_records(files[self.file_pos], self.text_field, self.text_unit)):
                    if i < self.record_pos:
                        continue
                    self.record_pos = i + 1
                    if strided and (self.file_pos * 1_000_003 + i) % self.num_streams != self.stream_id:
                        continue
                    yield rec
                self.file_pos, self.record_pos = self.file_pos + 1, 0
            if self.stats.docs == 0:  # a whole epoch without one usable document
                raise RuntimeError(f"stream {self.stream_id}/{self.num_streams} found no documents in {files}")
            self.epoch, self.file_pos, self.record_pos = self.epoch + 1, 0, 0
            if self.max_epochs is not None and self.epoch >= self.max_epochs:
                return

    def _next_doc(self) -> np.ndarray | None:
        """The next tokenized document (eos appended); None once ``max_epochs`` are read."""
        if not self.pending:
            self._tokenize_more()
        return self.pending.pop(0) if self.pending else None

    def _tokenize_more(self) -> None:
        if self._reader is None:
            self._reader = self._iter_records()
        texts: list[str] = []
        while len(texts) < TOKENIZE_BATCH:
            rec = next(self._reader, None)
            if rec is None:
                break
            if isinstance(rec, Bad):
                self.stats.skip(rec.reason, rec.example)
            else:
                self.stats.docs += 1
                texts.append(rec)
        for enc in self._tokenizer().encode_batch(texts, add_special_tokens=False):
            self.pending.append(np.asarray(enc.ids + [self.eos_id], dtype=np.int64))

    def _tokenizer(self):
        if self._tok is None:
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_str(self.tokenizer_json)
        return self._tok

    # -- shuffling and packing --------------------------------------------------------------------------
    def _shuffled_doc(self) -> np.ndarray | None:
        if self.shuffle_buffer <= 1:
            return self._next_doc()
        while len(self.buffer) < self.shuffle_buffer:
            doc = self._next_doc()
            if doc is None:
                break
            self.buffer.append(doc)
        if not self.buffer:
            return None
        i = int(self.rng.integers(len(self.buffer)))
        new = self._next_doc()
        doc = self.buffer[i]
        if new is None:
            self.buffer.pop(i)
        else:
            self.buffer[i] = new
        return doc

    def _add_rows(self, doc: np.ndarray) -> None:
        t = self.seq_len
        if not self.packing:
            self.rows.append(doc[:t + 1])
            return
        self.carry = np.concatenate([self.carry, doc])
        n = (len(self.carry) - 1) // t
        self.rows.extend(self.carry[k * t:k * t + t + 1] for k in range(n))
        self.carry = self.carry[n * t:]

    def next_rows(self) -> list[np.ndarray]:
        """``rows_per_batch`` rows; fewer (the packing remainder included) only at the end of ``max_epochs``."""
        while len(self.rows) < self.rows_per_batch:
            doc = self._shuffled_doc()
            if doc is None:
                if len(self.carry) > 1:
                    self.rows.append(self.carry)
                self.carry = self.carry[:0]
                break
            self._add_rows(doc)
        out, self.rows = self.rows[:self.rows_per_batch], self.rows[self.rows_per_batch:]
        self.batches += 1
        return out

    # -- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "file_pos": self.file_pos, "record_pos": self.record_pos,
                "batches": self.batches, "pending": _pack(self.pending), "buffer": _pack(self.buffer),
                "carry": torch.from_numpy(self.carry.copy()), "rows": _pack(self.rows),
                "rng": self.rng.bit_generator.state,
                "stats": self.stats.as_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.file_pos = int(state["epoch"]), int(state["file_pos"])
        self.record_pos, self.batches = int(state["record_pos"]), int(state["batches"])
        self.pending, self.buffer = _unpack(state["pending"]), _unpack(state["buffer"])
        self.rows, self.carry = _unpack(state["rows"]), torch.as_tensor(state["carry"]).numpy().astype(np.int64)
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
        self.stats = DataStats.from_dict(state["stats"])
        self._reader = None


def _pack(arrays: list[np.ndarray]) -> dict:
    """Compact, ``torch.load(weights_only=True)``-safe form of a list of token arrays (the shuffle buffer)."""
    lengths = torch.tensor([len(a) for a in arrays], dtype=torch.int64)
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    return {"flat": torch.from_numpy(flat.astype(np.int32)), "lengths": lengths}


def _unpack(packed: dict) -> list[np.ndarray]:
    flat = torch.as_tensor(packed["flat"]).numpy().astype(np.int64)
    bounds = np.cumsum(torch.as_tensor(packed["lengths"]).numpy())
    return list(np.split(flat, bounds[:-1])) if len(bounds) else []


class _WorkerStreams(IterableDataset):
    """DataLoader worker ``slot`` runs local stream ``(slot + rotate) % W``; items carry stats and periodic
    snapshots so the main process can checkpoint the workers' state."""

    def __init__(self, make_stream: Callable[[int], DocStream], starts: list[tuple[dict | None, int]], rotate: int,
                 snapshot_every: int, seq_len: int, pad_id: int):
        self.make_stream, self.starts, self.rotate = make_stream, starts, rotate
        self.snapshot_every, self.seq_len, self.pad_id = snapshot_every, seq_len, pad_id

    def __iter__(self) -> Iterator[tuple[int, dict[str, torch.Tensor], dict | None, dict]]:
        info = get_worker_info()
        w = ((info.id if info else 0) + self.rotate) % len(self.starts)
        stream = restore_stream(self.make_stream(w), *self.starts[w])
        while True:
            rows = stream.next_rows()
            snap = stream.state_dict() if stream.batches % self.snapshot_every == 0 else None
            yield w, rows_to_batch(rows, self.seq_len, self.pad_id), snap, stream.stats.as_dict()


def restore_stream(stream: DocStream, base: dict | None, replay: int) -> DocStream:
    if base is not None:
        stream.load_state_dict(base)
    for _ in range(replay):
        stream.next_rows()
    return stream


def _ignore_ctrl_c(worker_id: int) -> None:
    """Ctrl-C reaches every process in the terminal's foreground group, the loader's workers too. The main process
    saves a checkpoint and then shuts the workers down; a worker killed by the signal first would fail that run
    with "DataLoader worker exited unexpectedly" instead. (SIGTERM keeps its default: it is how multiprocessing
    stops a worker that did not exit when asked.) The worker starts with SIGINT blocked (see `_workers_started`),
    so a Ctrl-C that came before this line stays pending and is dropped here."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextlib.contextmanager
def _workers_started() -> Iterator[None]:
    """Block SIGINT in this thread while the loader starts its workers: a new process inherits the mask, so a
    Ctrl-C between its start and `_ignore_ctrl_c` cannot kill it. This process gets the signal once unblocked."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class StreamLoader:
    """This rank's batches from ``max(num_workers, 1)`` streams; ``state_dict`` is exact (see module doc)."""

    def __init__(self, files: list[str], tokenizer: PreTrainedTokenizerFast, cfg: DataConfig, *,
                 global_batch_size: int, dp_rank: int, dp_world: int, seed: int):
        if not files:
            raise ConfigError("data=c4: no files to stream")
        self.files, self.cfg, self.seed = files, cfg, seed
        self.dp_rank, self.dp_world = dp_rank, dp_world
        self.num_workers = max(cfg.num_workers, 0)
        self.local_streams = max(self.num_workers, 1)
        self.rows_per_batch = global_batch_size // dp_world
        self.tokenizer_json = tokenizer.backend_tokenizer.to_str()
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.snapshot_every = max(1, cfg.snapshot_every)
        self._starts: list[tuple[dict | None, int]] = [(None, 0)] * self.local_streams
        self._latest_stats: list[dict] = [DataStats().as_dict()] * self.local_streams
        self.next_stream = 0
        self._it: Iterator | None = None
        self._inline: DocStream | None = None
        self._warn_at = 1

    def make_stream(self, w: int) -> DocStream:
        cfg = self.cfg
        return DocStream(self.files, self.dp_rank * self.local_streams + w, self.dp_world * self.local_streams,
                         tokenizer_json=self.tokenizer_json, eos_id=self.eos_id, seq_len=cfg.seq_len,
                         packing=cfg.packing, rows_per_batch=self.rows_per_batch, shuffle_buffer=cfg.shuffle_buffer,
                         seed=self.seed, text_field=cfg.text_field, text_unit=cfg.text_unit)

    def _start(self) -> None:
        if self.num_workers == 0:
            self._inline = restore_stream(self.make_stream(0), *self._starts[0])
            return
        ds = _WorkerStreams(self.make_stream, list(self._starts), self.next_stream, self.snapshot_every,
                            self.cfg.seq_len, self.pad_id)
        loader = DataLoader(ds, batch_size=None, num_workers=self.num_workers, prefetch_factor=4,
                            worker_init_fn=_ignore_ctrl_c)
        with _workers_started():
            self._it = iter(loader)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._inline is None and self._it is None:
            self._start()
        if self._inline is not None:
            batch = rows_to_batch(self._inline.next_rows(), self.cfg.seq_len, self.pad_id)
        else:
            w, batch, snap, stats = next(self._it)  # type: ignore[arg-type]
            assert w == self.next_stream, f"stream order broken: got {w}, expected {self.next_stream}"
            base, replay = self._starts[w]
            self._starts[w] = (snap, 0) if snap is not None else (base, replay + 1)
            self._latest_stats[w] = stats
            self.next_stream = (w + 1) % self.local_streams
        self._warn_bad_data()
        return batch

    def _warn_bad_data(self) -> None:
        """Log the bad-record counts whenever their total reaches the next power of two (1, 2, 4, ...)."""
        stats = self.stats()
        if stats["skipped_total"] >= self._warn_at:
            DataStats.from_dict(stats).warn(f"data=c4 rank {self.dp_rank} (total so far)")
            while self._warn_at <= stats["skipped_total"]:
                self._warn_at *= 2

    def close(self) -> None:
        """Stop the worker processes (they also stop when the loader is garbage collected)."""
        it, self._it = self._it, None
        # Private API: a DataLoader iterator has no public way to stop its worker processes now (they stop
        # only when the iterator is garbage collected, which a reference cycle can delay past the next start).
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()

    def state_dict(self) -> dict:
        starts = self._starts
        if self._inline is not None:
            starts = [(self._inline.state_dict(), 0)]
        return {"kind": "stream", "files": fingerprint(self.files), "dp_rank": self.dp_rank,
                "dp_world": self.dp_world, "num_workers": self.num_workers, "next_stream": self.next_stream,
                "streams": [{"base": b, "replay": r} for b, r in starts]}

    def load_state_dict(self, state: dict) -> None:
        mismatch = resume_mismatch(state, self.state_dict())
        if mismatch:
            raise RunError(mismatch)
        self._starts = [(s["base"], int(s["replay"])) for s in state["streams"]]
        self.next_stream = int(state["next_stream"])
        self._latest_stats = [(s["base"] or {}).get("stats", DataStats().as_dict()) for s in state["streams"]]
        self.close()
        self._inline = None

    def stats(self) -> dict:
        if self._inline is not None:
            return self._inline.stats.as_dict()
        total = DataStats()
        for s in self._latest_stats:
            total.merge(DataStats.from_dict(s))
        return total.as_dict()


RESUME_LAYOUT = ("data=c4 resumes only on the same number of data-parallel processes and the same "
                 "data.num_workers (its streams are split by rank x worker); data=files, data=shards and "
                 "data=sample resume on any world size")


def resume_mismatch(saved: dict, now: dict) -> str | None:
    """Why a streaming loader state ``saved`` cannot be loaded into a loader whose state is ``now``; None if it can.
    One line, for a :class:`RunError`."""
    if saved.get("kind") != now["kind"]:
        return (f"the checkpoint's data loader state is not a data=c4 streaming state (kind={saved.get('kind')!r}): "
                "resume with the data.source the run was started with")
    layout = ("dp_world", "num_workers")
    if any(saved.get(key) != now[key] for key in layout):
        return (f"cannot resume the data=c4 stream: the checkpoint was saved with {saved.get('dp_world')} "
                f"data-parallel process(es) and data.num_workers={saved.get('num_workers')}, this run has "
                f"{now['dp_world']} and data.num_workers={now['num_workers']}; {RESUME_LAYOUT}")
    if saved.get("dp_rank") != now["dp_rank"]:
        return (f"cannot resume the data=c4 stream: data-parallel rank {now['dp_rank']} was given the state of rank "
                f"{saved.get('dp_rank')!r} (the number of processes changed?); {RESUME_LAYOUT}")
    if saved.get("files") != now["files"]:
        return ("cannot resume the data=c4 stream: its file list changed since the checkpoint (other data.paths, "
                "data.hub_dataset / data.hub_config / data.train_split, or files added on the hub)")
    return None


class StreamEvalData:
    """Held-out stream (C4 validation or ``eval_paths``), unshuffled; rank r takes every R-th record and
    yields ``ceil(ceil(max_tokens / seq_len) / R)`` rows (padded with ignored rows if data runs out)."""

    def __init__(self, files: list[str], tokenizer: PreTrainedTokenizerFast, cfg: DataConfig, *,
                 micro_batch_size: int, max_tokens: int, dp_rank: int, dp_world: int):
        self.files, self.cfg = files, cfg
        self.micro_batch_size, self.dp_rank, self.dp_world = micro_batch_size, dp_rank, dp_world
        self.rows_per_rank = math.ceil(math.ceil(max_tokens / cfg.seq_len) / dp_world)
        self.tokenizer_json = tokenizer.backend_tokenizer.to_str()
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id

    def __len__(self) -> int:
        return math.ceil(self.rows_per_rank / self.micro_batch_size)

    def _rows(self) -> Iterator[np.ndarray]:
        stream = DocStream(self.files, self.dp_rank, self.dp_world, tokenizer_json=self.tokenizer_json,
                           eos_id=self.eos_id, seq_len=self.cfg.seq_len, packing=self.cfg.packing, rows_per_batch=1,
                           shuffle_buffer=0, seed=0, text_field=self.cfg.text_field, text_unit=self.cfg.text_unit,
                           shuffle_files=False, max_epochs=1)
        while rows := stream.next_rows():
            yield from rows

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rows: list[np.ndarray] = []
        source = self._rows()
        empty = np.asarray([self.pad_id], dtype=np.int64)
        for _ in range(self.rows_per_rank):
            rows.append(next(source, empty))
            if len(rows) == self.micro_batch_size:
                yield rows_to_batch(rows, self.cfg.seq_len, self.pad_id)
                rows = []
        if rows:
            yield rows_to_batch(rows, self.cfg.seq_len, self.pad_id)
