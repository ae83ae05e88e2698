"""A real file system that fills up: a tmpfs of a chosen size (root only; the tests skip otherwise)."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount(where: Path, size: int) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True,
                   capture_output=True)


def remount(where: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True, capture_output=True)


@contextmanager
def tmpfs(where: Path, size: int):
    where.mkdir(parents=True, exist_ok=True)
    _mount(where, size)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


@pytest.fixture(scope="module")
def can_mount(tmp_path_factory) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs (a real full file system) needs root")
    probe = tmp_path_factory.mktemp("mount_probe")
    try:
        with tmpfs(probe, 1 << 20):
            pass
    except subprocess.CalledProcessError as err:
        pytest.skip(f"mount -t tmpfs is not permitted here: {err.stderr.decode().strip()}")


def used_bytes(fs: Path) -> int:
    stat = os.statvfs(fs)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize
