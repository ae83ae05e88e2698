"""One run per run_dir: the job holds a lock on its run_dir for its whole life.

On a local file system the lock is the kernel's ``flock`` on ``run_dir/.lock``: released when the process ends
in any way (SIGKILL included), so a crashed run never leaves a stale one. Shared file systems do not keep that
promise: Lustre mounted without ``-o flock`` refuses ``flock`` (ENOSYS), NFS mounted ``nolock`` keeps it per
node (two nodes both get it), and NFSv3 can keep a crashed node's lock. So where ``flock`` fails, and on every
network file system, the job (also) holds ``run_dir/.lock.heartbeat``: created with ``O_EXCL``, touched by a
thread every ``HEARTBEAT_S`` seconds, removed at exit. One that has missed ``STALE_BEATS`` beats (its run was
killed, or its node crashed) is stale: the next run takes it over with a warning."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from cod_train.core.errors import ConfigError

LOCK_FILE = ".lock"
HEARTBEAT_FILE = ".lock.heartbeat"
HEARTBEAT_S = 15.0
STALE_BEATS = 8  # 2 minutes without a beat: generous for a stalled NFS server or clock skew between nodes
# file systems where flock may be missing, per node, or outlive a crashed node (/proc/mounts' type column)
NETWORK_FILE_SYSTEMS = frozenset({"nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "beegfs", "ceph",
                                  "fuse.glusterfs", "fuse.sshfs", "9p"})

log = logging.getLogger(__name__)


class RunDirLock:
    """``with RunDirLock(run_dir):`` holds the lock or raises ConfigError naming the holder (host, PID, start).
    Only the main process of a job takes it (``enabled=False`` on the other ranks)."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, heartbeat_s: float = HEARTBEAT_S,
                 stale_beats: int = STALE_BEATS):
        self.path = Path(run_dir) / LOCK_FILE
        self.enabled = enabled
        self._fd: int | None = None
        self._heartbeat = HeartbeatLock(Path(run_dir) / HEARTBEAT_FILE, heartbeat_s, stale_beats)
        self._holds_heartbeat = False

    def __enter__(self) -> RunDirLock:
        if not self.enabled:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        has_flock = self._take_flock()
        fs_type = file_system_type(self.path.parent)
        if has_flock and fs_type not in NETWORK_FILE_SYSTEMS:
            return self
        try:
            self._heartbeat.acquire()
        except BaseException:
            self._release_flock()
            raise
        self._holds_heartbeat = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._holds_heartbeat:
            self._heartbeat.release()
            self._holds_heartbeat = False
        self._release_flock()

    def _take_flock(self) -> bool:
        """Hold ``flock`` on ``.lock`` (False when the file system refuses flock); ConfigError when busy."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe_holder(_read_json(os.pread(fd, 4096, 0)))
            os.close(fd)
            raise _busy(self.path.parent, holder) from None
        except OSError as err:  # ENOSYS: Lustre without -o flock; ENOLCK: NFS without a lock daemon
            os.close(fd)
            log.warning("the file system of %s does not support flock (%s): the run_dir lock is a lock file "
                        "with a heartbeat instead", self.path.parent, errno.errorcode.get(err.errno or 0, str(err)))
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_me()) + "\n").encode(), 0)
        self._fd = fd
        return True

    def _release_flock(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class HeartbeatLock:
    """A lock file created with ``O_EXCL`` (atomic on NFSv3+ and Lustre), kept fresh by a thread that touches
    it every ``beat_s`` seconds; stale after ``stale_beats`` missed beats, or at once when its holder is a dead
    process of this host (and PID namespace)."""

    def __init__(self, path: Path, beat_s: float, stale_beats: int):
        self.path = path
        self.beat_s = beat_s
        self.stale_after_s = beat_s * stale_beats
        self._token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Create the lock file (taking over a stale one), then start the heartbeat; ConfigError when busy."""
        record = (json.dumps({**_me(), "token": self._token, "heartbeat_s": self.beat_s}) + "\n").encode()
        for _ in range(3):  # a stale file taken over, or one that vanished meanwhile: try again
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            try:
                os.write(fd, record)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name="run-dir-lock-heartbeat", daemon=True)
            self._thread.start()
            return
        raise _busy(self.path.parent, describe_holder(_read_json(_read(self.path))))

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if _read_json(_read(self.path)).get("token") == self._token:  # not if another run took it over
            self.path.unlink(missing_ok=True)

    def _beat(self) -> None:
        warned = False
        while not self._stop.wait(self.beat_s):
            try:
                os.utime(self.path)
            except OSError as err:
                if not warned:
                    log.warning("cannot refresh the run_dir lock %s (%s): after %.0f s another run may take "
                                "it over", self.path, err, self.stale_after_s)
                    warned = True

    def _take_over_if_stale(self) -> None:
        """Remove the existing lock file when it is stale; ConfigError naming its holder when it is alive."""
        try:
            stat = os.stat(self.path)
            holder = _read_json(_read(self.path))
        except FileNotFoundError:
            return  # released meanwhile
        age = time.time() - stat.st_mtime
        if age < self.stale_after_s and not _dead_here(holder):
            raise _busy(self.path.parent, f"{describe_holder(holder)}, last heartbeat {age:.0f} s ago; a lock "
                                          f"without heartbeat for {self.stale_after_s:.0f} s is taken over")
        aside = self.path.with_name(f"{self.path.name}.stale-{self._token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another run took it over first; the retry sees its lock
        if os.stat(aside).st_ino != stat.st_ino:  # what was moved is a run's fresh lock, not the stale one
            os.rename(aside, self.path)
            raise _busy(self.path.parent, describe_holder(_read_json(_read(self.path))))
        aside.unlink()
        log.warning("took over the stale run_dir lock %s of %s (last heartbeat %.0f s ago)", self.path,
                    describe_holder(holder), age)


def file_system_type(path: Path) -> str:
    """The type of the file system ``path`` is on, from /proc/mounts ('' where that is not readable)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    real = os.path.realpath(path)
    best, fs_type = "", ""
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = fields[1].replace("\\040", " ")
        inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, fs_type = mount_point, fields[2]
    return fs_type


def _me() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_ns": _pid_namespace(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _dead_here(holder: dict[str, Any]) -> bool:
    """The holder is a process of this host and PID namespace that no longer exists."""
    if holder.get("host") != socket.gethostname() or holder.get("pid_ns") != _pid_namespace():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, KeyError, ValueError, TypeError):
        return False
    return False


def _busy(run_dir: Path, holder: str) -> ConfigError:
    return ConfigError(f"run_dir={str(run_dir)!r} is in use by another run ({holder}); wait for it to finish, "
                       "stop it, or choose another run_dir")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()[:4096]
    except OSError:
        return b""


def _read_json(data: bytes) -> dict[str, Any]:
    try:
        info = json.loads(data.decode() or "{}")
    except (UnicodeDecodeError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def describe_holder(info: dict[str, Any]) -> str:
    try:
        return f"PID {info['pid']} on host {info['host']}, started {info['started']}"
    except KeyError:
        return "holder unknown"
