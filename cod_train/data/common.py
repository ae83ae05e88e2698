"""Shared helpers: the cache directory, cross-process locks, fingerprints and bad-data statistics."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

log = logging.getLogger("cod_train.data")

MAX_EXAMPLE_CHARS = 200


def cache_root(override: str = "") -> Path:
    """``override``, else ``$COD_TRAIN_CACHE``, else ``$XDG_CACHE_HOME/cod_train``, else ``~/.cache/cod_train``."""
    if override:
        return Path(override).expanduser()
    if os.environ.get("COD_TRAIN_CACHE"):
        return Path(os.environ["COD_TRAIN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cod_train"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive file lock ``<path>.lock`` (ranks and processes building the same artefact wait)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        yield


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``final``; rename it into place only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


FULL_HASH_BYTES = 64 << 20


def file_fingerprint(path: str) -> str:
    """Content hash of a local file: all bytes up to 64 MiB; larger files hash size, mtime and both ends
    (re-hashing a 100 GB corpus at every start would cost minutes). Remote URLs hash the name only."""
    if "://" in path:
        return hashlib.blake2b(path.encode(), digest_size=16).hexdigest()
    h = hashlib.blake2b(digest_size=16)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        else:
            h.update(f.read(1 << 20))
            f.seek(size - (1 << 20))
            h.update(f.read())
            h.update(str(os.stat(path).st_mtime_ns).encode())
    return f"{size}-{h.hexdigest()}"


def fingerprint(*parts: object) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=10).hexdigest()


@dataclass
class DataStats:
    """Documents kept and records skipped (by reason), with the first bad example of each reason."""

    docs: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    first: dict[str, str] = field(default_factory=dict)

    def skip(self, reason: str, example: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.first.setdefault(reason, example[:MAX_EXAMPLE_CHARS])

    def merge(self, other: DataStats) -> DataStats:
        self.docs += other.docs
        for reason, n in other.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n
        for reason, ex in other.first.items():
            self.first.setdefault(reason, ex)
        return self

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def as_dict(self) -> dict:
        return {"docs": self.docs, "skipped_total": self.skipped_total, "skipped": dict(self.skipped),
                "first_bad": dict(self.first)}

    @classmethod
    def from_dict(cls, d: dict) -> DataStats:
        return cls(docs=int(d.get("docs", 0)), skipped=dict(d.get("skipped", {})), first=dict(d.get("first_bad", {})))

    def warn(self, where: str) -> None:
        for reason, n in sorted(self.skipped.items()):
            log.warning("%s: skipped %d record(s) with %s; first: %s", where, n, reason, self.first.get(reason, ""))
