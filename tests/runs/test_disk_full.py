"""A full disk, for real: ``cod-pretrain`` with its run_dir on a small tmpfs, on every engine (one process for
``single``, two with gloo for the others, started as torchrun starts its workers). The first run writes the step-2 checkpoint; the
tmpfs is then shrunk to what is used plus half a checkpoint (measured), and a resume of the run fails to write
the step-4 checkpoint, inside the engine's own save (safetensors, DCP, DeepSpeed) or ours. Every rank must exit
4 with one ``error:`` line and no traceback, leave no ``.tmp_*`` directory and leave the step-2 checkpoint as it
was, intact by its manifest (whose CRC-32s, computed while writing, are those of the files on the disk)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from cod_train.engine.checkpoint import checkpoint_problems
from cod_train.engine.distributed import DistEnv
from tests.helpers.processes import REPO, free_port, subprocess_env
from tests.runs.tmpfs import can_mount, remount, tmpfs, used_bytes  # noqa: F401 - can_mount: a fixture

pytestmark = pytest.mark.slow
TINY = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=2",
        "model.num_attention_heads=2", "data.seq_len=32", "train.global_batch_size=4", "train.micro_batch_size=2",
        "train.eval_tokens=128", "train.log_every=1", "train.diag_every=0", "train.cpu_peak_flops=1e11",
        "train.ckpt_every=2", "train.keep_last=0", "train.eval_every=0", "train.export_hf=false"]
# ZeRO-1 is left out: it shares ZeRO-2's optimizer class and save path (about 40 s of suite time saved).
ENGINES = {
    "single": (1, ["distributed=single"]),
    "ddp": (2, ["distributed=ddp"]),
    "fsdp": (2, ["distributed=fsdp"]),
    "zero2": (2, ["distributed=deepspeed", "distributed.zero_stage=2"]),
    "zero3": (2, ["distributed=deepspeed", "distributed.zero_stage=3"]),
}
HANG_S = 420  # far above a run's time on a busy 2-core machine, far below the 30-min collective timeout


def _run(nproc: int, run_dir: Path, args: list[str], logs: Path) -> list[tuple[int, str]]:
    """``cod-pretrain`` in ``nproc`` processes, each rank's (exit code, output).

    The ranks get the environment torchrun gives its workers, without torchrun's agent: it sends SIGTERM to
    the other ranks as soon as one exits, which would hide both their exit codes and a rank left hanging."""
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "cod_train.cli.pretrain", f"run_dir={run_dir}", *TINY, *args]
    port, procs = str(free_port()), []
    for rank in range(nproc):
        dist = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
                "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        with open(logs / f"rank{rank}.log", "w") as out:
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(**(dist if nproc > 1 else {})),
                                          stdout=out, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + HANG_S
    try:
        codes = [proc.wait(timeout=max(deadline - time.monotonic(), 1)) for proc in procs]
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail(f"cod-pretrain hung: still running after {HANG_S} s\n"
                    + "\n".join((logs / f"rank{r}.log").read_text()[-2000:] for r in range(nproc)))
    return [(code, (logs / f"rank{rank}.log").read_text()) for rank, code in enumerate(codes)]


def _manifest_matches_disk(ckpt: Path) -> None:
    """The manifest lists every file but meta.json, with its size and an independently computed CRC-32."""
    files = json.loads((ckpt / "meta.json").read_text())["files"]
    on_disk = {str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file() and p.name != "meta.json"}
    assert set(files) == on_disk
    for rel, want in files.items():
        data = (ckpt / rel).read_bytes()
        assert (len(data), f"{zlib.crc32(data):08x}") == (want["size"], want["crc32"]), rel


def _hashes(ckpt: Path) -> dict[str, str]:
    return {str(p.relative_to(ckpt)): hashlib.sha256(p.read_bytes()).hexdigest() for p in ckpt.rglob("*")
            if p.is_file()}


@pytest.mark.usefixtures("can_mount")
@pytest.mark.parametrize("engine", list(ENGINES))
def test_a_full_disk_exits_4_on_every_rank_and_keeps_the_last_checkpoint(tmp_path, engine):
    nproc, args = ENGINES[engine]
    with tmpfs(tmp_path / "fs", 64 << 20) as fs:
        run_dir = fs / "run"
        first = _run(nproc, run_dir, [*args, "train.max_steps=2"], tmp_path / "logs1")
        assert [code for code, _ in first] == [0] * nproc, first[0][1][-3000:]
        step2 = run_dir / "checkpoints" / "step_0000002"
        _manifest_matches_disk(step2)
        before = _hashes(step2)
        checkpoint_bytes = sum(p.stat().st_size for p in step2.rglob("*") if p.is_file())
        remount(fs, used_bytes(fs) + checkpoint_bytes // 2)  # the step-4 checkpoint cannot fit

        outs = _run(nproc, run_dir, [*args, "train.max_steps=4"], tmp_path / "logs2")
        for rank, (code, out) in enumerate(outs):
            errors = [line for line in out.splitlines() if line.startswith("error:")]
            assert code == 4 and len(errors) == 1 and "Traceback" not in out, f"rank {rank}: exit {code}\n{out[-4000:]}"
            assert "could not write checkpoint" in errors[0] and "No space left on device" in errors[0]
            assert "step_0000002" in errors[0]  # the latest intact checkpoint is named
        assert "resumed from" in outs[0][1] and "at step 2" in outs[0][1]  # the step-2 checkpoint loaded
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_0000002"]  # no .tmp_*
        assert _hashes(step2) == before
        assert checkpoint_problems(step2, DistEnv()) == []
