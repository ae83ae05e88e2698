"""Robust document readers for local (and fsspec-URL) corpora.

Every format yields one item per *record*: the document text, or a :class:`Bad` marker. Yielding the bad
records (instead of silently dropping them) lets callers count them and lets the streaming loader resume
at an exact record position. Bad data never raises: malformed JSON, invalid UTF-8, a missing or empty
text field and a truncated gzip member all become ``Bad``.

Transient read errors (a connection reset or timeout from a hub / fsspec file, an I/O error) are retried up to
``READ_RETRIES`` times with exponential back-off by reopening the file and skipping the records already yielded,
so the records are exactly those of an uninterrupted read; only when every retry fails does the rest of the file
become one ``Bad("read_error")`` naming the exception (never ``truncated_gz``, which means a cut gzip stream).
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, cast

from cod_train.config import ConfigError
from cod_train.data.common import log

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
TEXT_SUFFIXES = (".txt", ".text", ".md")
PARQUET_SUFFIXES = (".parquet",)

READ_RETRIES = 4  # tries after the first, per failure; the count starts again once a retry gets further
READ_BACKOFF_S = 2.0  # sleep before retry k (0-based): READ_BACKOFF_S * 2**k (2 + 4 + 8 + 16 = 30 s in all)
FORMAT_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)  # the bytes are bad: rereading gives the same
PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
# HTTP client errors that are not OSError (httpx, which huggingface_hub uses, aiohttp) or are (requests, urllib3)
NETWORK_ERROR_BASES = {("httpx", "HTTPError"), ("httpx2", "HTTPError"), ("aiohttp", "ClientError"),
                       ("requests", "RequestException"), ("urllib3", "HTTPError")}


@dataclass(frozen=True)
class Bad:
    reason: str  # malformed_json | invalid_utf8 | missing_text | empty_text | truncated_gz | unreadable |
    # read_error (a transient error that outlasted the retries; the example names the exception)
    example: str


def resolve_paths(patterns: list[str], what: str = "data.paths") -> list[str]:
    """Expand globs (sorted, deduplicated); a pattern matching nothing is a :class:`ConfigError`."""
    if not patterns:
        raise ConfigError(f"{what} is empty: give local files as globs, e.g. {what}=[/data/c4/*.json.gz]")
    out: list[str] = []
    for pattern in patterns:
        if "://" in pattern:
            out.append(pattern)
            continue
        matches = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
        if not matches:
            raise ConfigError(f"{what}: {pattern!r} matches no file (cwd {os.getcwd()}); check the path or glob")
        out.extend(matches)
    return list(dict.fromkeys(out))


def file_format(path: str) -> str:
    name = path.lower()
    for suffix in (".gz", ".bz2", ".zst", ".xz"):
        name = name.removesuffix(suffix)
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(JSON_SUFFIXES):
        return "json"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    raise ConfigError(f"unsupported file type {path!r}: use .jsonl/.json(.gz), .parquet or .txt(.gz)")


def _open_binary(path: str) -> IO[bytes]:
    if "://" in path:
        import fsspec

        return fsspec.open(path, "rb", compression="infer").open()
    if path.endswith(".gz"):
        return cast(IO[bytes], gzip.open(path, "rb"))  # a GzipFile: a binary file, though not typed IO[bytes]
    if path.endswith(".bz2"):
        import bz2

        return bz2.open(path, "rb")
    return open(path, "rb")


def is_transient(err: BaseException) -> bool:
    """Whether rereading may succeed: a network error or an I/O error other than a bad or missing file.
    A bare ``OSError`` without errno is how bz2 ("Invalid data stream") and pyarrow ("Couldn't deserialize
    thrift") report bad bytes, so it is not transient; errors from a Python file object reach us unchanged."""
    if isinstance(err, FORMAT_ERRORS) or (type(err) is OSError and err.errno is None):
        return False
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    if isinstance(err, OSError) and not isinstance(err, PERMANENT_OS_ERRORS):
        return True
    return any((cls.__module__.split(".")[0], cls.__name__) in NETWORK_ERROR_BASES for cls in type(err).__mro__)


def iter_records(path: str, text_field: str = "text", text_unit: str = "line") -> Iterator[str | Bad]:
    """The records of ``path``; transient read errors are retried (see the module doc), never raised."""
    fmt = file_format(path)
    done, failures, failed_at = 0, 0, -1
    while True:
        try:
            for i, rec in enumerate(_records(path, fmt, text_field, text_unit)):
                if i >= done:  # a reopened file: skip what was yielded before the error
                    done = i + 1
                    yield rec
            return
        except Exception as err:
            if not is_transient(err):
                if not isinstance(err, (*FORMAT_ERRORS, OSError)):
                    raise  # not a read error: a bug
                bad = "truncated_gz" if path.endswith(".gz") and isinstance(err, FORMAT_ERRORS) else "unreadable"
                yield Bad(bad, f"{path}: {err}")
                return
            failures = 1 if done > failed_at else failures + 1
            failed_at = done
            if failures > READ_RETRIES:
                yield Bad("read_error", f"{path}: {type(err).__name__} after record {done}, "
                                        f"{READ_RETRIES} retries: {err}")
                return
            delay = READ_BACKOFF_S * 2 ** (failures - 1)
            log.warning("reading %s failed after record %d (%s: %s); reopening in %.0f s (retry %d/%d)",
                        path, done, type(err).__name__, err, delay, failures, READ_RETRIES)
            time.sleep(delay)


def _records(path: str, fmt: str, text_field: str, text_unit: str) -> Iterator[str | Bad]:
    """The records of one open of ``path``; read errors propagate (``iter_records`` handles them)."""
    if fmt == "parquet":
        yield from _iter_parquet(path, text_field)
        return
    with _open_binary(path) as f:
        if fmt == "json":
            yield from _iter_json(f, path, text_field)
        else:
            yield from _iter_text(f, path, text_unit)


def _iter_json(f: IO[bytes], path: str, text_field: str) -> Iterator[str | Bad]:
    first = f.peek(64)[:64].lstrip() if hasattr(f, "peek") else b""
    if first.startswith(b"["):  # a JSON array file (e.g. alpaca-style .json)
        yield from _iter_json_array(f, path, text_field)
        return
    for lineno, raw in enumerate(f, 1):
        if not raw.strip():
            continue
        yield _parse_json_line(raw, f"{path}:{lineno}", text_field)


def _parse_json_line(raw: bytes, where: str, text_field: str) -> str | Bad:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Bad("invalid_utf8", f"{where}: {raw[:120]!r}")
    try:
        obj = json.loads(line)
    except ValueError:
        return Bad("malformed_json", f"{where}: {line[:120]!r}")
    return _text_of(obj, where, text_field)


def _text_of(obj: object, where: str, text_field: str) -> str | Bad:
    text = obj.get(text_field) if isinstance(obj, dict) else None
    if not isinstance(text, str):
        return Bad("missing_text", f"{where}: no string field {text_field!r} in {str(obj)[:100]!r}")
    if not text.strip():
        return Bad("empty_text", f"{where}: empty {text_field!r}")
    return text


def _iter_json_array(f: IO[bytes], path: str, text_field: str) -> Iterator[str | Bad]:
    try:
        items = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        yield Bad("malformed_json", f"{path}: {err}")
        return
    for i, obj in enumerate(items if isinstance(items, list) else [items]):
        yield _text_of(obj, f"{path}[{i}]", text_field)


def _iter_text(f: IO[bytes], path: str, text_unit: str) -> Iterator[str | Bad]:
    reader = io.TextIOWrapper(f, encoding="utf-8", errors="strict", newline=None)
    if text_unit == "file":
        try:
            text = reader.read()
        except UnicodeDecodeError as err:
            yield Bad("invalid_utf8", f"{path}: {err}")
            return
        yield text if text.strip() else Bad("empty_text", f"{path}: empty file")
        return
    yield from _iter_text_units(f, path, text_unit)


def _iter_text_units(f: IO[bytes], path: str, text_unit: str) -> Iterator[str | Bad]:
    block: list[str] = []
    for lineno, raw in enumerate(f, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield Bad("invalid_utf8", f"{path}:{lineno}: {raw[:120]!r}")
            continue
        if text_unit == "line":
            if line.strip():
                yield line.rstrip("\r\n")
        elif line.strip():
            block.append(line)
        elif block:
            yield "".join(block).rstrip("\r\n")
            block = []
    if block:
        yield "".join(block).rstrip("\r\n")


def _iter_parquet(path: str, text_field: str) -> Iterator[str | Bad]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(_open_binary(path) if "://" in path else path)
        if text_field not in pf.schema_arrow.names:
            yield Bad("missing_text", f"{path}: no column {text_field!r} (has {pf.schema_arrow.names})")
            return
        row = 0
        for batch in pf.iter_batches(columns=[text_field], batch_size=4096):
            for text in batch.column(0).to_pylist():
                row += 1
                yield _text_of({text_field: text}, f"{path}[{row}]", text_field)
    except pa.ArrowInvalid as err:  # not a parquet file (damaged ones raise OSError: see is_transient)
        yield Bad("unreadable", f"{path}: {err}")
