"""Fault injection: a run is never silently corrupted. Each scenario asserts the exit code, one `error:` line
without a traceback, that the newest intact checkpoint and metrics.jsonl are left as they were, and that a
resume afterwards logs the uninterrupted run's losses bit-exactly (tiny model, bundled sample, CPU)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cod_train.cli import pretrain
from cod_train.core.errors import ConfigError
from cod_train.runs.lock import RunDirLock
from tests.helpers.cli import FAULT_RUN, cod_pretrain_stderr, one_error_line
from tests.helpers.processes import REPO, subprocess_env
from tests.helpers.run_dirs import losses
from tests.runs.tmpfs import can_mount, remount, tmpfs, used_bytes  # noqa: F401 - can_mount: a fixture

TINY = FAULT_RUN
pytestmark = pytest.mark.slow


def _main(monkeypatch, capsys, run_dir: Path, *args: str) -> tuple[int, str]:
    """cod-pretrain in this process on the fault-injection run; (exit code, stderr)."""
    return cod_pretrain_stderr(capsys, f"run_dir={run_dir}", *TINY, *args)


def _snapshot(run_dir: Path) -> dict[str, str]:
    """Hash of every file of the checkpoints and of metrics.jsonl."""
    files = [run_dir / "metrics.jsonl", *sorted((run_dir / "checkpoints").rglob("*"))]
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, float]:
    """The uninterrupted run's losses."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["cod-pretrain", f"run_dir={run_dir}", *TINY])
        pretrain.main()  # exit code 0: returns without SystemExit
    assert sorted(losses(run_dir)) == list(range(1, 9))
    return losses(run_dir)


def test_resume_under_another_placement_or_shape_is_refused(monkeypatch, capsys, tmp_path):
    run_dir = tmp_path / "run"
    assert _main(monkeypatch, capsys, run_dir, "train.max_steps=4")[0] == 0
    before = _snapshot(run_dir)
    code, err = _main(monkeypatch, capsys, run_dir, "norm=lns")
    assert code == 2 and "model.norm_type: 'pre_ln' -> 'lns'" in one_error_line(err)
    code, err = _main(monkeypatch, capsys, run_dir, "model.hidden_size=64")
    assert code == 2 and "model.hidden_size: 32 -> 64" in one_error_line(err)
    assert _snapshot(run_dir) == before  # nothing was touched
    (run_dir / "checkpoints" / "step_0000004" / "meta.json").write_text("{")  # damaged: step 3 would resume
    code, err = _main(monkeypatch, capsys, run_dir, "norm=lns")
    assert code == 2 and "model.norm_type: 'pre_ln' -> 'lns'" in one_error_line(err)
    code, _ = _main(monkeypatch, capsys, run_dir, "train.max_steps=5")  # max_steps may change
    assert code == 0 and max(losses(run_dir)) == 5


def test_resume_allow_change_continues_anyway(monkeypatch, capsys, tmp_path):
    run_dir = tmp_path / "run"
    assert _main(monkeypatch, capsys, run_dir, "train.max_steps=3")[0] == 0
    code, _ = _main(monkeypatch, capsys, run_dir, "train.max_steps=4", "model.mix_ln_ratio=0.5",
                    "resume_allow_change=true")
    assert code == 0 and max(losses(run_dir)) == 4


def test_a_second_run_in_the_same_run_dir_exits_2_and_a_killed_holder_leaves_no_lock(monkeypatch, capsys,
                                                                                      tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from cod_train.runs.lock import RunDirLock; "
         f"RunDirLock({str(run_dir)!r}).__enter__(); print('locked', flush=True); time.sleep(120)"],
        cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = _main(monkeypatch, capsys, run_dir)
        line = one_error_line(err)
        assert code == 2 and "in use by another run" in line and f"PID {holder.pid}" in line
        assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    with RunDirLock(run_dir):  # SIGKILL released it
        with pytest.raises(ConfigError, match=f"PID {os.getpid()}"):
            RunDirLock(run_dir).__enter__()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated model": lambda c: _truncate(c / "model.safetensors"),
    "flipped byte in model": lambda c: _flip_a_byte(c / "model.safetensors"),
    "truncated optimizer": lambda c: _truncate(c / "optimizer.pt"),
    "missing optimizer": lambda c: (c / "optimizer.pt").unlink(),
    "corrupt meta": lambda c: (c / "meta.json").write_text('{"step": '),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(monkeypatch, capsys, tmp_path, damage,
                                                                       reference):
    run_dir = tmp_path / "run"
    assert _main(monkeypatch, capsys, run_dir, "train.max_steps=7")[0] == 0  # checkpoints 3, 6, 7
    intact = _snapshot(run_dir)
    DAMAGE[damage](run_dir / "checkpoints" / "step_0000007")
    code, err = _main(monkeypatch, capsys, run_dir, "resume=" + str(run_dir / "checkpoints" / "step_0000007"))
    assert code == 1 and "step_0000007" in one_error_line(err)  # an explicit damaged checkpoint: refused
    assert {k: v for k, v in _snapshot(run_dir).items() if "step_0000006" in k} == \
        {k: v for k, v in intact.items() if "step_0000006" in k}
    code, _ = _main(monkeypatch, capsys, run_dir)  # resume=auto: falls back to step 6, runs 7 and 8
    assert code == 0
    assert list((run_dir / "checkpoints").glob(".damaged_step_0000007_*"))
    assert losses(run_dir) == reference


@pytest.mark.usefixtures("can_mount")
def test_disk_full_during_a_save_keeps_the_last_checkpoint_and_resumes_bit_exact(monkeypatch, capsys, tmp_path,
                                                                                  reference):
    """A real full disk: run_dir on a tmpfs shrunk, after the step-3 checkpoint, to what is used plus half a
    checkpoint (tests/runs/test_disk_full.py does the same on every engine, in separate processes)."""
    with tmpfs(tmp_path / "fs", 64 << 20) as fs:
        run_dir = fs / "run"
        assert _main(monkeypatch, capsys, run_dir, "train.max_steps=3")[0] == 0
        ckpt = run_dir / "checkpoints" / "step_0000003"
        remount(fs, used_bytes(fs) + sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file()) // 2)
        code, err = _main(monkeypatch, capsys, run_dir)  # saving step 6 fails
        line = one_error_line(err)
        assert code == 4 and "could not write checkpoint" in line and "No space left on device" in line
        assert "free on" in line and "the last checkpoint took" in line and "step_0000003" in line
        ckpts = run_dir / "checkpoints"
        assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000003"]  # no partial .tmp_step_0000006
        remount(fs, 64 << 20)  # space freed
        code, _ = _main(monkeypatch, capsys, run_dir)
        assert code == 0 and losses(run_dir) == reference


@pytest.mark.parametrize(("args", "message"), [
    (["model=nope"], "model=nope"),
    (["train.lr=abc"], "train.lr"),
    (["train.no_such_key=1"], "train.no_such_key"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(monkeypatch, capsys, tmp_path, args, message):
    code, err = _main(monkeypatch, capsys, tmp_path / "run", *args)
    assert code == 2 and message in one_error_line(err) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_every_file_of_a_run_is_readable_by_others(monkeypatch, capsys, tmp_path):
    run_dir = tmp_path / "run"
    assert _main(monkeypatch, capsys, run_dir, "train.max_steps=3")[0] == 0
    modes = {str(p.relative_to(run_dir)): oct(p.stat().st_mode & 0o777) for p in run_dir.rglob("*") if p.is_file()}
    assert {k: m for k, m in modes.items() if m != "0o644" and not k.endswith(".lock")} == {}
    assert json.loads((run_dir / "checkpoints" / "step_0000003" / "meta.json").read_text())["files"]
