"""Launcher environments -> DistEnv (no process group is created here)."""

from __future__ import annotations

import json
import re
import socket
import sys

import pytest
import torch

from cod_train.config import ConfigError, DistributedConfig
from cod_train.engine import distributed
from cod_train.engine.distributed import DistEnv, init_distributed
from tests.helpers.processes import run_checked, torchrun

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", "SLURM_JOB_NODELIST",
                 "SLURM_JOB_ID", "GLOO_SOCKET_IFNAME", "SLURM_TASKS_PER_NODE", "SLURM_STEP_TASKS_PER_NODE",
                 "SLURM_NODEID")


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


@pytest.mark.parametrize(("per_node", "node", "local_world"), [
    ("8(x2),4", "0", "8"), ("8(x2),4", "1", "8"), ("8(x2),4", "2", "4"), ("3", "5", "3"), ("2,6", "1", "6"),
])
def test_nodes_with_different_task_counts(clean_env, per_node, node, local_world):
    """srun's per-node list (``8(x2),4``: 8, 8 and 4 tasks) gives this node's count; it used to crash."""
    for var, value in (("SLURM_PROCID", "0"), ("SLURM_NTASKS", "20"), ("SLURM_LOCALID", "0"),
                       ("SLURM_STEP_TASKS_PER_NODE", per_node), ("SLURM_NODEID", node), ("MASTER_ADDR", "h"),
                       ("MASTER_PORT", "1")):
        clean_env.setenv(var, value)
    assert distributed._launcher_env()["LOCAL_WORLD_SIZE"] == local_world


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


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals of a machine without a GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "tpu", "gpu", "cuda:x"])
def test_device_names_are_checked_before_any_work(name):
    """Every command reads ``device=`` through one parser: a name that is not a device, or a GPU that is not
    there, is a one-line user error (exit 2), not a traceback from the first ``.to()``."""
    from cod_train.engine.distributed import parse_device

    with pytest.raises(ConfigError, match="device"):
        parse_device(name)
    assert parse_device("auto") == parse_device("cpu") == torch.device("cpu")


@pytest.mark.slow
def test_deepspeed_with_one_visible_gpu_per_slurm_task_uses_device_0_everywhere():
    """SLURM task 5 of 8, its node's tasks each seeing one GPU: init_distributed, then DeepSpeed's comm init
    and engine (as far as a CPU-only torch goes: its first CUDA allocation). Every device choice is 0, and so is
    the LOCAL_RANK DeepSpeed reads; the task keeps its rank and its position on the node."""
    out = run_checked([sys.executable, "tests/engine/one_gpu_per_task.py"]).stdout
    seen = json.loads(next(line for line in out.splitlines() if line.startswith("SEEN "))[5:])
    assert seen["set_device"] and set(seen["set_device"]) == {0}  # ours, then DeepSpeed's engine
    assert seen["init_process_group"] == {"LOCAL_RANK": "0", "device_id": "cuda:0"}  # DeepSpeed's comm init
    assert seen["engine_local_rank"] == 0 and seen["engine_device"] == "cuda:0"
    assert seen["LOCAL_RANK_after_init"] == seen["LOCAL_RANK_at_end"] == "0"
    assert (seen["env_device"], seen["env_rank"], seen["env_local_rank"]) == ("cuda:0", 5, 5)
    error = seen["engine_error"]
    assert error is None or "not compiled with CUDA" in error, error  # not "invalid device ordinal"


def _host_group_runs(mode: str) -> tuple[list[dict], str]:
    proc = torchrun("tests/engine/host_group.py", mode, nproc=2)
    # two ranks print at once: their lines may run together
    rows = [json.loads(m) for m in re.findall(r"HOST (\{.*?\})", proc.stdout)]
    return sorted(rows, key=lambda row: row["rank"]), proc.stdout + proc.stderr


@pytest.mark.slow
def test_the_host_group_is_gloo_with_the_configured_timeout():
    rows, _ = _host_group_runs("ok")
    assert [row["rank"] for row in rows] == [0, 1]
    for row in rows:
        assert row["gloo"] and row["timeout_s"] == row["default_timeout_s"] == 7 * 60
        assert row["sums"] == [1.0 + 2.0, 10.0 + 20.0]


@pytest.mark.slow
def test_when_gloo_cannot_be_created_host_sums_use_the_default_group():
    rows, output = _host_group_runs("gloo_fails")
    assert [row["rank"] for row in rows] == [0, 1]
    for row in rows:
        assert not row["gloo"] and row["sums"] == [1.0 + 2.0, 10.0 + 20.0]
    assert output.count("host-side gloo group cannot be used") == 1  # said once, by rank 0, for every rank
    assert "rank 0 on" in output and "rank 1 on" in output and "connectFullMesh" in output


@pytest.fixture
def two_nodes(clean_env):
    """Rank 1 of 2 processes, one per node, node 0 being 10.0.0.1; no process group is created before the
    refusals tested here."""
    for var, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1"}.items():
        clean_env.setenv(var, value)
    return clean_env


def test_gloo_across_nodes_with_a_loopback_host_name_is_refused_before_connecting(two_nodes):
    two_nodes.setattr(socket, "gethostbyname", lambda host: "127.0.1.1")  # Debian's /etc/hosts
    with pytest.raises(ConfigError, match="resolves to the loopback address 127.0.1.1; set GLOO_SOCKET_IFNAME"):
        init_distributed(DistributedConfig(engine="ddp", timeout_minutes=1), device="cpu")
    two_nodes.setenv("MASTER_ADDR", "localhost")  # every "node" on this machine (tests, a 2-node launch here)
    assert distributed._gloo_address_problem() is None


def test_a_gloo_interface_that_does_not_exist_is_refused(two_nodes):
    two_nodes.setenv("GLOO_SOCKET_IFNAME", "nosuch0")
    with pytest.raises(ConfigError, match=r"GLOO_SOCKET_IFNAME=nosuch0: host .* has no network interface nosuch0 "
                                          r"\(it has: .*lo"):
        init_distributed(DistributedConfig(engine="ddp", timeout_minutes=1), device="cpu")
