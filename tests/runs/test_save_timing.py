"""Preemption timing: a checkpoint's CRC-32s are computed while it is written (its tensor files are not read back),
its save time is recorded in meta.json, and a run warns when the scheduler's warning before the time limit
(``COD_TRAIN_SIGNAL_DELAY_S``, exported by ``hydra/launcher=slurm``) is shorter than 1.5x that save time."""

from __future__ import annotations

import builtins
import io
import json
import sys
import zlib
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from cod_train.cli import pretrain
from cod_train.runs.app import config_dir

TINY = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=2",
        "model.num_attention_heads=2", "data.seq_len=32", "train.global_batch_size=4", "train.micro_batch_size=2",
        "train.eval_tokens=128", "train.log_every=1", "train.diag_every=0", "train.cpu_peak_flops=1e11",
        "train.ckpt_every=2", "train.keep_last=0", "train.eval_every=0", "train.export_hf=false"]


def _pretrain(monkeypatch, run_dir: Path, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["cod-pretrain", f"run_dir={run_dir}", *TINY, *args])
    pretrain.main()  # exit code 0: returns without SystemExit


class _CountingReader:
    """A file opened for reading whose bytes read are added to ``counts[path]``."""

    def __init__(self, file, path: str, counts: dict[str, int]):
        self._file, self._path, self._counts = file, path, counts

    def read(self, *args):
        data = self._file.read(*args)
        self._counts[self._path] = self._counts.get(self._path, 0) + len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def _count_reads_under(monkeypatch, root: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    real_open = builtins.open

    def counting_open(file, mode="r", *args, **kwargs):
        opened = real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, Path)) and "r" in mode and str(Path(file)).startswith(str(root)):
            return _CountingReader(opened, str(Path(file)), counts)
        return opened

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)
    return counts


@pytest.mark.slow
def test_crcs_are_computed_while_writing_and_the_save_time_is_recorded(monkeypatch, tmp_path):
    run_dir = tmp_path / "run"
    reads = _count_reads_under(monkeypatch, run_dir / "checkpoints")
    _pretrain(monkeypatch, run_dir, "train.max_steps=2")
    monkeypatch.undo()
    ckpt = run_dir / "checkpoints" / "step_0000002"
    meta = json.loads((ckpt / "meta.json").read_text())
    for rel, want in meta["files"].items():  # the CRC written == an independent CRC of the bytes on the disk
        data = (ckpt / rel).read_bytes()
        assert (len(data), f"{zlib.crc32(data):08x}") == (want["size"], want["crc32"]), rel
    read = {str(Path(p).relative_to(ckpt)): n for p, n in reads.items() if p.startswith(str(ckpt) + "/")}
    header = 8 + int.from_bytes((ckpt / "model.safetensors").read_bytes()[:8], "little")
    assert read.get("model.safetensors", 0) <= header  # its header only: the tensors are hashed in memory
    tensor_files = [rel for rel in meta["files"] if rel.endswith(".pt")]
    assert sorted(tensor_files) == ["data/rank_00000.pt", "optimizer.pt", "rng/rank_00000.pt"]
    assert {rel: read[rel] for rel in tensor_files if read.get(rel)} == {}  # never read back
    assert 0 < meta["save_seconds"] < 60


def _delay_warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if "COD_TRAIN_SIGNAL_DELAY_S" in line]


@pytest.mark.slow
def test_a_signal_delay_shorter_than_the_save_warns(monkeypatch, capsys, tmp_path):
    run_dir = tmp_path / "run"
    monkeypatch.setenv("COD_TRAIN_SIGNAL_DELAY_S", "100000")
    _pretrain(monkeypatch, run_dir, "train.max_steps=2")
    assert _delay_warnings(capsys.readouterr().out) == []
    seconds = json.loads((run_dir / "checkpoints" / "step_0000002" / "meta.json").read_text())["save_seconds"]
    monkeypatch.setenv("COD_TRAIN_SIGNAL_DELAY_S", str(1.4 * seconds))  # below 1.5x the recorded save time
    _pretrain(monkeypatch, run_dir, "train.max_steps=3")
    warnings = _delay_warnings(capsys.readouterr().out)
    assert warnings and f"saving step_0000002 took {seconds:.1f} s" in warnings[0]  # at the resume, before a step
    assert f"at least {1.5 * seconds:.0f} s" in warnings[0]


def test_the_slurm_launcher_exports_its_signal_delay_and_fits_common_time_limits():
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        cfg = compose("pretrain", overrides=["hydra/launcher=slurm", "hydra.launcher.signal_delay_s=900"],
                      return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)  # what hydra hands to submitit
    assert "export COD_TRAIN_SIGNAL_DELAY_S=900" in launcher.params["setup"]
    assert launcher.params["timeout_min"] == 24 * 60
