"""Launcher environments -> DistEnv (no process group is created here)."""

from __future__ import annotations

import os

import pytest
import torch

from cod_train.config import ConfigError, DistributedConfig
from cod_train.engine import distributed
from cod_train.engine.distributed import DistEnv, init_distributed

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", "SLURM_JOB_NODELIST",
                 "SLURM_JOB_ID")


@pytest.fixture
def clean_env(monkeypatch):
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_single_without_launcher(clean_env):
    env = init_distributed(DistributedConfig(engine="single"), device="cpu")
    assert env == DistEnv() and env.is_main and not env.initialized


def test_single_under_a_multi_process_launcher_is_refused(clean_env):
    clean_env.setenv("RANK", "0")
    clean_env.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="distributed=ddp, fsdp or deepspeed"):
        init_distributed(DistributedConfig(engine="single"), device="cpu")


def test_srun_variables_are_translated(clean_env):
    clean_env.setenv("SLURM_PROCID", "5")
    clean_env.setenv("SLURM_NTASKS", "8")
    clean_env.setenv("SLURM_LOCALID", "1")
    clean_env.setenv("SLURM_NTASKS_PER_NODE", "4(x2)")
    clean_env.setenv("SLURM_JOB_NODELIST", "gpu-a")
    clean_env.setenv("SLURM_JOB_ID", "1234")
    clean_env.setattr(distributed, "_first_slurm_host", lambda: "gpu-a")
    env = distributed._launcher_env()
    assert env == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                   "MASTER_ADDR": "gpu-a", "MASTER_PORT": str(20000 + 1234)}


def test_torchrun_variables_win_over_slurm(clean_env):
    clean_env.setenv("RANK", "0")
    clean_env.setenv("WORLD_SIZE", "1")
    clean_env.setenv("SLURM_PROCID", "3")
    clean_env.setenv("SLURM_NTASKS", "4")
    assert distributed._launcher_env() == {}


def test_bad_device(clean_env):
    with pytest.raises(ConfigError, match="device"):
        init_distributed(DistributedConfig(engine="single"), device="tpu")


@pytest.mark.parametrize(("nodelist", "host"), [
    ("node[01-02]", "node01"), ("gpu-a[3,5-7],gpu-b1", "gpu-a3"), ("single", "single"), ("n[007]", "n007"),
    ("", "127.0.0.1"),
])
def test_first_slurm_host_without_scontrol(nodelist, host):
    from cod_train.engine.distributed import first_host

    assert first_host(nodelist) == host


def test_meta_init_is_refused_on_cpu():
    from cod_train.config import ConfigError, DistributedConfig, PretrainConfig
    from cod_train.runs.pretrain import run_pretrain

    cfg = PretrainConfig(distributed=DistributedConfig(engine="fsdp", meta_init=True))
    with pytest.raises(ConfigError, match="meta_init=true needs CUDA"):
        run_pretrain(cfg, DistEnv())


def test_one_visible_gpu_per_task_maps_every_local_rank_to_it(monkeypatch):
    """Simulated SLURM task 5 of a node whose tasks each see one GPU: ours and DeepSpeed's device agree."""
    import torch

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: chosen.append(i))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: chosen[-1])
    monkeypatch.setenv("LOCAL_RANK", "5")
    device = distributed._pick_device("cuda", 5)
    assert device == torch.device("cuda", 0) and chosen == [0]
    assert os.environ["LOCAL_RANK"] == "0"  # what DeepSpeed's set_device(int(LOCAL_RANK)) will use


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals of a machine without a GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "tpu", "gpu", "cuda:x"])
def test_device_names_are_checked_before_any_work(name):
    """Every command reads ``device=`` through one parser: a name that is not a device, or a GPU that is not
    there, is a one-line user error (exit 2), not a traceback from the first ``.to()``."""
    from cod_train.engine.distributed import parse_device

    with pytest.raises(ConfigError, match="device"):
        parse_device(name)
    assert parse_device("auto") == parse_device("cpu") == torch.device("cpu")
