"""Token shards: the on-disk format, its random-access reader and the parallel tokenizer that writes it.

A shard set is a directory::

    meta.json             {"format", "version", "dtype", "eos_id", "vocab_size", "num_tokens", "num_docs",
                           "shards": [{"file", "index", "tokens", "docs"}], "stats": {...}}
    00000.bin             tokens, uint16 (vocab <= 65536) or uint32; every document is followed by eos
    00000.idx.npy         int64 document start offsets into the .bin, length docs + 1

Because each document ends with eos, the concatenation of all shards *is* the packed token stream, so a
packed window is one slice and an unpacked sample is one document.

A tokenized corpus (``tokenize_corpus``) is a directory with ``train/`` and, when something is held out,
``eval/``, each a shard set; ``cod-data tokenize`` also saves ``tokenizer/`` next to them.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cod_train.data.common import DataStats, log
from cod_train.data.readers import Bad, iter_records

FORMAT = "cod-token-shards"
VERSION = 1
SHARD_TOKENS = 1 << 28  # ~512 MiB of uint16 per shard file
CHUNK_CHARS = 1 << 20  # text handed to one tokenizer worker at a time


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class ShardWriter:
    def __init__(self, out: Path, vocab_size: int, eos_id: int, shard_tokens: int = SHARD_TOKENS):
        self.out, self.vocab_size, self.eos_id, self.shard_tokens = out, vocab_size, eos_id, shard_tokens
        self.dtype = token_dtype(vocab_size)
        self.shards: list[dict] = []
        self._file: BinaryIO | None = None
        self._offsets: list[int] = []
        out.mkdir(parents=True, exist_ok=True)

    def add(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents given as one flat token array (eos included) and their lengths; a new shard file
        starts at a document boundary once ``shard_tokens`` is reached."""
        while len(lengths):
            if self._file is None or self._offsets[-1] >= self.shard_tokens:
                self._roll()
            ends = self._offsets[-1] + np.cumsum(lengths, dtype=np.int64)
            take = max(1, int(np.searchsorted(ends, self.shard_tokens, side="left")) + 1)
            take = min(take, len(lengths))
            n_tok = int(ends[take - 1] - self._offsets[-1])
            assert self._file is not None  # opened by _roll() above
            self._file.write(np.ascontiguousarray(flat[:n_tok], dtype=self.dtype).tobytes())
            self._offsets.extend(ends[:take].tolist())
            flat, lengths = flat[n_tok:], lengths[take:]

    def _roll(self) -> None:
        self._finish_shard()
        name = f"{len(self.shards):05d}"
        self._file = open(self.out / f"{name}.bin", "wb")
        self._offsets = [0]
        self.shards.append({"file": f"{name}.bin", "index": f"{name}.idx.npy"})

    def _finish_shard(self) -> None:
        if self._file is None:
            return
        self._file.close()
        shard = self.shards[-1]
        np.save(self.out / shard["index"], np.asarray(self._offsets, dtype=np.int64))
        shard.update(tokens=int(self._offsets[-1]), docs=len(self._offsets) - 1)
        self._file = None

    def close(self, stats: DataStats, **extra: object) -> dict:
        if self._file is None and not self.shards:
            self._roll()
        self._finish_shard()
        meta = {"format": FORMAT, "version": VERSION, "dtype": self.dtype.name, "eos_id": self.eos_id,
                "vocab_size": self.vocab_size, "num_tokens": sum(s["tokens"] for s in self.shards),
                "num_docs": sum(s["docs"] for s in self.shards), "shards": self.shards,
                "stats": stats.as_dict(), **extra}
        (self.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        return meta


class TokenShards:
    """Random access to a shard set: global token ranges and documents, across shard files."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.exists():
            raise FileNotFoundError(f"{self.path} is not a token shard directory (no meta.json)")
        self.meta = json.loads(meta_file.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{meta_file}: not a {FORMAT} directory")
        self.dtype = np.dtype(self.meta["dtype"])
        self.eos_id = int(self.meta["eos_id"])
        shards = [s for s in self.meta["shards"] if s["tokens"] > 0]
        self._tokens = [np.memmap(self.path / s["file"], dtype=self.dtype, mode="r") for s in shards]
        self._offsets = [np.load(self.path / s["index"]) for s in shards]
        self._tok_start = np.concatenate([[0], np.cumsum([s["tokens"] for s in shards])]).astype(np.int64)
        self._doc_start = np.concatenate([[0], np.cumsum([s["docs"] for s in shards])]).astype(np.int64)
        self.num_tokens = int(self._tok_start[-1])
        self.num_docs = int(self._doc_start[-1])

    @property
    def stats(self) -> DataStats:
        return DataStats.from_dict(self.meta.get("stats", {}))

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the concatenated stream."""
        s = int(np.searchsorted(self._tok_start, start, side="right")) - 1
        local = start - int(self._tok_start[s])
        first = self._tokens[s][local:local + (stop - start)]
        if len(first) == stop - start or s + 1 >= len(self._tokens):
            return first
        return np.concatenate([first, self.tokens(int(self._tok_start[s + 1]), stop)])

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """``[len(starts), length]`` array of token ranges ``[s, s + length)``, gathered with one fancy-index per
        shard file (rows that cross a file boundary are read one by one)."""
        out = np.empty((len(starts), length), dtype=self.dtype)
        first = np.searchsorted(self._tok_start, starts, side="right") - 1
        last = np.searchsorted(self._tok_start, starts + length - 1, side="right") - 1
        for s in np.unique(first):
            rows = np.nonzero((first == s) & (last == s))[0]
            if len(rows):
                local = starts[rows] - self._tok_start[s]
                out[rows] = self._tokens[s][local[:, None] + np.arange(length)]
        for row in np.nonzero(first != last)[0]:
            out[row] = self.tokens(int(starts[row]), int(starts[row]) + length)
        return out

    def doc(self, i: int, max_len: int | None = None) -> np.ndarray:
        s = int(np.searchsorted(self._doc_start, i, side="right")) - 1
        j = i - int(self._doc_start[s])
        lo, hi = int(self._offsets[s][j]), int(self._offsets[s][j + 1])
        if max_len is not None:
            hi = min(hi, lo + max_len)
        return self._tokens[s][lo:hi]

    def doc_lengths(self) -> np.ndarray:
        if not self._offsets:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.diff(o) for o in self._offsets])


# --- parallel tokenization ------------------------------------------------------------------------------

_WORKER_TOKENIZER = None


def _set_tokenizer(tokenizer_json: str) -> None:
    global _WORKER_TOKENIZER
    from tokenizers import Tokenizer

    _WORKER_TOKENIZER = Tokenizer.from_str(tokenizer_json)


def _init_worker(tokenizer_json: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    _set_tokenizer(tokenizer_json)


def _encode_chunk(args: tuple[list[str], list[bool], int]) -> tuple[np.ndarray, np.ndarray, list[bool]]:
    texts, is_eval, eos_id = args
    encodings = _WORKER_TOKENIZER.encode_batch(texts, add_special_tokens=False)  # type: ignore[union-attr]
    lengths = np.fromiter((len(e.ids) + 1 for e in encodings), dtype=np.int64, count=len(encodings))
    flat = np.empty(int(lengths.sum()), dtype=np.int64)
    pos = 0
    for enc, n in zip(encodings, lengths, strict=True):
        flat[pos:pos + n - 1] = enc.ids
        flat[pos + n - 1] = eos_id
        pos += int(n)
    return flat, lengths, is_eval


def is_held_out(text: str, eval_fraction: float) -> bool:
    """Stable, order-independent hold-out decision (crc32 of the text)."""
    return eval_fraction > 0 and zlib.crc32(text.encode("utf-8")) < eval_fraction * 2**32


def _chunks(records: Iterable[tuple[str, bool]], eos_id: int) -> Iterator[tuple[list[str], list[bool], int]]:
    texts: list[str] = []
    flags: list[bool] = []
    size = 0
    for text, held in records:
        texts.append(text)
        flags.append(held)
        size += len(text)
        if size >= CHUNK_CHARS:
            yield texts, flags, eos_id
            texts, flags, size = [], [], 0
    if texts:
        yield texts, flags, eos_id


def _records(paths: list[str], eval_paths: list[str], eval_fraction: float, text_field: str, text_unit: str,
             stats: DataStats) -> Iterator[tuple[str, bool]]:
    for path, forced_eval in [(p, False) for p in paths] + [(p, True) for p in eval_paths]:
        for rec in iter_records(path, text_field, text_unit):
            if isinstance(rec, Bad):
                stats.skip(rec.reason, rec.example)
                continue
            stats.docs += 1
            yield rec, forced_eval or (not eval_paths and is_held_out(rec, eval_fraction))


def tokenize_corpus(paths: list[str], tokenizer_json: str, eos_id: int, vocab_size: int, out: Path, *,
                    eval_paths: Sequence[str] = (), eval_fraction: float = 0.0, text_field: str = "text",
                    text_unit: str = "line", workers: int = 0, shard_tokens: int = SHARD_TOKENS) -> DataStats:
    """Tokenize ``paths`` (+ ``eval_paths``) into ``out/train`` and ``out/eval`` with ``workers`` processes.

    Output is identical for any worker count: chunks are tokenized in parallel but written in input order.
    Held out: all of ``eval_paths`` if given, else the ``eval_fraction`` of documents picked by
    :func:`is_held_out`.
    """
    workers = workers or os.cpu_count() or 1
    stats = DataStats()
    writers = {False: ShardWriter(out / "train", vocab_size, eos_id, shard_tokens),
               True: ShardWriter(out / "eval", vocab_size, eos_id, shard_tokens)}
    chunks = _chunks(_records(list(paths), list(eval_paths), eval_fraction, text_field, text_unit, stats), eos_id)
    for flat, lengths, flags in _map_chunks(chunks, tokenizer_json, workers):
        _write_split(writers, flat, lengths, np.asarray(flags, dtype=bool))
    for held, writer in writers.items():
        meta = writer.close(stats if not held else DataStats(), eval_fraction=eval_fraction,
                            sources=list(eval_paths) if held else list(paths))
        if held and meta["num_tokens"] == 0:
            shutil.rmtree(out / "eval")
    stats.warn(f"tokenizing {len(paths) + len(eval_paths)} file(s)")
    return stats


def _map_chunks(chunks: Iterator, tokenizer_json: str, workers: int) -> Iterator:
    if workers <= 1:
        _set_tokenizer(tokenizer_json)
        yield from map(_encode_chunk, chunks)
        return
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    with ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer_json,)) as pool:
        yield from pool.imap(_encode_chunk, chunks)


def _write_split(writers: dict[bool, ShardWriter], flat: np.ndarray, lengths: np.ndarray, flags: np.ndarray) -> None:
    if not flags.any() or flags.all():
        writers[bool(flags.any())].add(flat, lengths)
        return
    doc_of_token = np.repeat(flags, lengths)
    for held in (False, True):
        writers[held].add(flat[doc_of_token == held], lengths[flags == held])


def log_shards(shards: TokenShards, what: str) -> None:
    log.info("%s: %s tokens in %s documents (%s)", what, f"{shards.num_tokens:,}", f"{shards.num_docs:,}",
             shards.path)
