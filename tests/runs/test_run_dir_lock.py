"""The run_dir lock where ``flock`` does not work (Lustre without ``-o flock`` answers ENOSYS): the real
cod-pretrain with ``fcntl.flock`` made to fail in its process falls back to a lock file with a heartbeat."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cod_train.cli import pretrain
from cod_train.core.errors import ConfigError
from cod_train.runs.lock import HEARTBEAT_FILE, RunDirLock
from tests.helpers.cli import FAULT_RUN as TINY
from tests.helpers.cli import cod_pretrain_stderr, one_error_line
from tests.helpers.processes import REPO, subprocess_env
from tests.helpers.run_dirs import losses, metric_rows

pytestmark = pytest.mark.slow

WITHOUT_FLOCK = """
import errno, fcntl, sys
def no_flock(*args):
    raise OSError(errno.ENOSYS, "Function not implemented")
fcntl.flock = no_flock
sys.argv[0] = "cod-pretrain"
from cod_train.cli.pretrain import main
main()
"""


def no_flock(*args):
    raise OSError(errno.ENOSYS, "Function not implemented")


def _wait_for(condition, what: str, proc: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the holder exited {proc.returncode} before {what}:\n{proc.communicate()[0][-4000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_without_flock_a_second_run_is_refused_while_the_first_holds_the_lock(monkeypatch, capsys, tmp_path):
    run_dir = tmp_path / "run"
    lock_file = run_dir / HEARTBEAT_FILE
    holder = subprocess.Popen([sys.executable, "-c", WITHOUT_FLOCK, f"run_dir={run_dir}", *TINY,
                               "train.max_steps=100000", "train.ckpt_every=100000"],
                              cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        _wait_for(lambda: (run_dir / "metrics.jsonl").exists() and metric_rows(run_dir), "its first step",
                  holder)
        assert json.loads(lock_file.read_text())["pid"] == holder.pid
        monkeypatch.setattr(fcntl, "flock", no_flock)
        code, err = cod_pretrain_stderr(capsys, f"run_dir={run_dir}", *TINY)
        line = one_error_line(err)
        assert code == 2 and "in use by another run" in line and f"PID {holder.pid}" in line, line
        holder.send_signal(signal.SIGTERM)  # saves a checkpoint and exits 0, releasing the lock
        out = holder.communicate(timeout=600)[0]
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert holder.returncode == 0, out[-4000:]
    assert "does not support flock (ENOSYS)" in out
    assert not lock_file.exists()  # removed at exit


def test_a_stale_lock_file_is_taken_over_and_removed_at_exit(monkeypatch, capsys, tmp_path):
    """A lock file whose heartbeat stopped an hour ago (its node crashed) does not block the next run."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stale = run_dir / HEARTBEAT_FILE
    stale.write_text(json.dumps({"host": "crashed-node", "pid": 4242, "started": "2026-12-01T00:00:00Z"}))
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    monkeypatch.setattr(fcntl, "flock", no_flock)
    monkeypatch.setattr(sys, "argv", ["cod-pretrain", f"run_dir={run_dir}", *TINY, "train.max_steps=2"])
    pretrain.main()  # exit code 0: returns without SystemExit
    log = capsys.readouterr().out  # the run's log goes to stdout
    assert "took over the stale run_dir lock" in log and "PID 4242 on host crashed-node" in log, log[-3000:]
    assert sorted(losses(run_dir)) == [1, 2]
    assert not stale.exists()


def test_the_heartbeat_keeps_the_lock_fresh(monkeypatch, tmp_path: Path):
    """A live holder's lock file is touched every beat, so it never turns stale while the run lives."""
    monkeypatch.setattr(fcntl, "flock", no_flock)
    lock_file = tmp_path / HEARTBEAT_FILE
    with RunDirLock(tmp_path, heartbeat_s=0.05, stale_beats=100):
        an_hour_ago = time.time() - 3600
        os.utime(lock_file, (an_hour_ago, an_hour_ago))
        time.sleep(0.5)
        assert time.time() - lock_file.stat().st_mtime < 5  # an hour old before
        with pytest.raises(ConfigError, match=f"PID {os.getpid()} .* last heartbeat"):
            RunDirLock(tmp_path, heartbeat_s=0.05, stale_beats=100).__enter__()
    assert not lock_file.exists()
