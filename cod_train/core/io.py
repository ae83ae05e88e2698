"""Files written so that a crash never leaves half of one: the one atomic JSON writer; files whose CRC-32 is
computed from the bytes as they are written (a checkpoint's manifest without reading anything back)."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

CHUNK = 8 << 20
PathLike = str | os.PathLike[str]


def jsonable(obj: Any) -> Any:
    """``obj`` with non-finite floats as None (strict JSON has no NaN / Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 1) -> Path:
    """Write ``obj`` as strict JSON to ``path`` atomically (temp file in the same directory, fsync, rename),
    readable by everyone (0644) like every other file of a run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(jsonable(obj), indent=indent, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def make_readable(root: str | Path) -> None:
    """Give every file under ``root`` the permissions of a normally created file (0666 minus the umask):
    safetensors writes its files 0600, unlike everything else in a run directory."""
    umask = os.umask(0)
    os.umask(umask)
    for path in Path(root).rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o666 & ~umask)


def file_crc32(path: PathLike) -> str:
    """The CRC-32 of a file's bytes, read from the disk, as 8 hex digits."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


class CrcWriter:
    """A new binary file written front to back; its size and CRC-32 are computed from the bytes as they pass
    (no read-back), and it is fsynced on close. It has no ``fileno()``, so a writer that would go around
    ``write`` (torch.save's legacy format writes storages straight to a file descriptor) uses ``write``."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.size = 0
        self.crc = 0
        self.error: OSError | None = None  # the first write failure (torch.save turns it into a RuntimeError)
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close()

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        try:
            self._file.write(view)
        except OSError as err:
            self._fail(err)
            raise
        self.crc = zlib.crc32(view, self.crc)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        """Flush, fsync and close (again: a no-op)."""
        if self._file.closed:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as err:
            self._fail(err)
            raise
        finally:
            self._file.close()

    def _fail(self, err: OSError) -> None:
        if err.filename is None:
            err.filename = str(self.path)
        self.error = self.error or err


class WrittenFiles:
    """The size and CRC-32 of every file written through it, by path: a checkpoint's manifest, computed while
    writing. Thread-safe (DCP writes from threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.files: dict[str, dict[str, Any]] = {}

    def add(self, path: PathLike, size: int, crc: int) -> None:
        with self._lock:
            self.files[str(Path(path))] = {"size": size, "crc32": f"{crc:08x}"}

    def rename(self, old: PathLike, new: PathLike) -> None:
        """Move ``old`` to ``new`` on the disk and in the records."""
        os.replace(old, new)
        with self._lock:
            if str(Path(old)) in self.files:
                self.files[str(Path(new))] = self.files.pop(str(Path(old)))

    @contextmanager
    def open(self, path: PathLike) -> Iterator[CrcWriter]:
        """A :class:`CrcWriter` for ``path``; recorded once it is closed without an error. A write failure
        is raised as the OSError itself, whatever the writer made of it."""
        writer = CrcWriter(path)
        try:
            yield writer
            writer.close()
        except BaseException as err:
            try:
                writer.close()
            except OSError:
                pass
            if writer.error is not None and writer.error is not err:
                raise writer.error from None
            raise
        self.add(path, writer.size, writer.crc)

    def save_torch(self, obj: Any, path: PathLike, **kwargs: Any) -> None:
        """``torch.save(obj)`` into ``path`` through a :class:`CrcWriter`."""
        import torch

        with self.open(path) as f:
            torch.save(obj, f, **kwargs)  # type: ignore[arg-type]

    def save_safetensors(self, obj: torch.nn.Module | dict[str, torch.Tensor], path: PathLike) -> None:
        """Write a module's weights (``save_model``: shared tensors once) or a dict of tensors as safetensors; its
        CRC-32 comes from the tensors in memory (see :func:`_safetensors_crc`). A failed write raises OSError."""
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import save_file, save_model

        try:
            if isinstance(obj, torch.nn.Module):
                save_model(obj, str(path))
            else:
                save_file(obj, str(path))
        except SafetensorError as err:  # "... I/O error: No space left on device (os error 28)"
            code = re.search(r"\(os error (\d+)\)", str(err))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from err
        size_crc = _safetensors_crc(Path(path), obj.state_dict() if isinstance(obj, torch.nn.Module) else obj)
        if size_crc is not None:
            self.add(path, *size_crc)

    def relative_to(self, root: PathLike) -> dict[str, dict[str, Any]]:
        """The records of files under ``root``, keyed by their path relative to it."""
        root = Path(root)
        with self._lock:
            return {str(Path(p).relative_to(root)): v for p, v in self.files.items() if Path(p).is_relative_to(root)}


def _safetensors_crc(path: Path, tensors: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    """(size, CRC-32) of the safetensors file just written at ``path``, from ``tensors`` in memory. By the
    format, the file is an 8-byte length, a JSON header (read back: a few KB) and then the data, each tensor's
    bytes at the offsets its header entry gives; None when the offsets do not tile the data exactly with the
    tensors given (the manifest then reads the file)."""
    with open(path, "rb") as f:
        length = f.read(8)
        header = f.read(int.from_bytes(length, "little"))
    index = json.loads(header)
    index.pop("__metadata__", None)
    crc, end = zlib.crc32(header, zlib.crc32(length)), 0
    for name, info in sorted(index.items(), key=lambda item: item[1]["data_offsets"]):
        begin, stop = info["data_offsets"]
        data = _tensor_bytes(tensors[name]) if name in tensors else None
        if begin != end or data is None or len(data) != stop - begin:
            return None
        crc, end = zlib.crc32(data, crc), stop
    size = len(length) + len(header) + end
    return (size, crc) if size == path.stat().st_size else None


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A tensor's bytes as safetensors writes them (little-endian, row-major), without a copy on the CPU."""
    import torch

    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data
