"""Robust document readers for local (and fsspec-URL) corpora.

Every format yields one item per *record*: the document text, or a :class:`Bad` marker. Yielding the bad
records (instead of silently dropping them) lets callers count them and lets the streaming loader resume
at an exact record position. Bad data never raises: malformed JSON, invalid UTF-8, a missing or empty
text field and a truncated gzip member all become ``Bad``.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, cast

from cod_train.config import ConfigError

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
TEXT_SUFFIXES = (".txt", ".text", ".md")
PARQUET_SUFFIXES = (".parquet",)


@dataclass(frozen=True)
class Bad:
    reason: str  # malformed_json | invalid_utf8 | missing_text | empty_text | truncated_gz | unreadable
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


def iter_records(path: str, text_field: str = "text", text_unit: str = "line") -> Iterator[str | Bad]:
    fmt = file_format(path)
    if fmt == "parquet":
        yield from _iter_parquet(path, text_field)
        return
    try:
        with _open_binary(path) as f:
            if fmt == "json":
                yield from _iter_json(f, path, text_field)
            else:
                yield from _iter_text(f, path, text_unit)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as err:
        yield Bad("truncated_gz" if path.endswith(".gz") else "unreadable", f"{path}: {err}")


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
    except (OSError, pa.ArrowInvalid) as err:
        yield Bad("unreadable", f"{path}: {err}")
