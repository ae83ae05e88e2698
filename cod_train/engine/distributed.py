"""Process-group set-up for every launcher: torchrun, the deepspeed launcher, SLURM ``srun`` or none.

torchrun and the deepspeed launcher export ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``.
Under ``srun`` (one task per GPU) only ``SLURM_*`` variables exist; they are translated here, with the
first host of the job as the rendezvous address. GPU runs use NCCL, CPU runs gloo.

``LOCAL_RANK`` is exported as the index of this process's GPU: DeepSpeed (its comm init and its engine), ZeRO-3
and torch's device mesh all read it as a device ordinal. With one GPU visible per SLURM task it is 0 on every
task, while ``DistEnv.local_rank`` keeps the task's position on its node.

Host-side sums (``host_all_reduce``) go through a gloo group of their own. gloo binds to the address the host
name resolves to, which on many hosts is 127.0.1.1 (Debian's /etc/hosts): on several nodes it then cannot
connect. ``GLOO_SOCKET_IFNAME=<iface>`` (read by torch) picks the interface; without it, or when the group
cannot be created, the sums use the default (NCCL) group instead, said once in the log.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from cod_train.config import DistributedConfig
from cod_train.core.errors import ConfigError, RunError

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: its rank, the world, and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # position among this node's processes (the device index is ``device.index``)
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str = "gloo"
    initialized: bool = False  # a process group exists

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _slurm_env() -> dict[str, str]:
    """Translate ``srun`` variables into the torchrun ones (``{}`` outside an ``srun`` step)."""
    if "SLURM_PROCID" not in os.environ or "SLURM_NTASKS" not in os.environ:
        return {}
    out = {
        "RANK": os.environ["SLURM_PROCID"],
        "WORLD_SIZE": os.environ["SLURM_NTASKS"],
        "LOCAL_RANK": os.environ.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": str(_slurm_tasks_on_this_node()),
    }
    if "MASTER_ADDR" not in os.environ:
        out["MASTER_ADDR"] = _first_slurm_host()
    if "MASTER_PORT" not in os.environ:
        out["MASTER_PORT"] = str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000)
    return out


def _slurm_tasks_on_this_node() -> int:
    """This node's task count from SLURM's per-node list, e.g. ``8(x2),4`` = 8, 8, 4 (nodes with different
    counts), indexed by ``SLURM_NODEID``."""
    spec = (os.environ.get("SLURM_STEP_TASKS_PER_NODE") or os.environ.get("SLURM_TASKS_PER_NODE")
            or os.environ.get("SLURM_NTASKS_PER_NODE") or "1")
    counts: list[int] = []
    for part in spec.split(","):
        count, _, repeat = part.partition("(x")
        counts += [int(count)] * int(repeat.rstrip(")") or 1)
    node = int(os.environ.get("SLURM_NODEID", "0"))
    return counts[node] if node < len(counts) else counts[-1]


def _first_slurm_host() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST", "")
    try:
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True,
                               capture_output=True, text=True).stdout.split()
        return hosts[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return first_host(nodelist)


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list without ``scontrol``: ``node[01-02,05],gpu7`` -> ``node01``."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        return "127.0.0.1"
    prefix, ranges = m.group(1), m.group(2)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launcher_env() -> dict[str, str]:
    """The torchrun-style variables of this process, from whichever launcher started it."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return {}
    return _slurm_env()


def parse_device(name: str) -> torch.device:
    """``auto`` = the GPU when one is visible, else the CPU; ``cpu``, ``cuda`` or ``cuda:N``. A ConfigError for
    any other name and for a CUDA device that is not visible."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = torch.device("meta")  # refused below
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is visible; use device=cpu or device=auto")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return dev


def _pick_device(device: str, local_rank: int) -> torch.device:
    dev = parse_device(device)
    if dev.type != "cuda":
        return dev
    # one GPU visible per task (SLURM): index 0
    index = dev.index if dev.index is not None else local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", torch.cuda.current_device())


def _export_local_rank(dev: torch.device, local_rank: int) -> None:
    """``LOCAL_RANK`` = the GPU's index, for everything that reads it as a device ordinal (DeepSpeed's comm
    init and engine, ZeRO-3, torch's device mesh): with one GPU visible per task, task 5 of a node would
    otherwise ask for cuda:5 ("invalid device ordinal"). mpirun's own variable must agree (DeepSpeed asserts it)."""
    value = str(dev.index if dev.type == "cuda" and dev.index is not None else local_rank)
    os.environ["LOCAL_RANK"] = value
    if "OMPI_COMM_WORLD_LOCAL_RANK" in os.environ:
        os.environ["OMPI_COMM_WORLD_LOCAL_RANK"] = value


def init_distributed(dist_cfg: DistributedConfig, device: str = "auto") -> DistEnv:
    """Join (or skip) the process group described by the launcher's environment and pick the device.

    ``single`` refuses to run under a multi-process launcher; the other engines create a process group
    even with one process (a free localhost port is chosen when no launcher set one).
    """
    os.environ.update(_launcher_env())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if dist_cfg.engine == "single" and world > 1:
        raise ConfigError(f"distributed=single cannot run with {world} processes; "
                          "use distributed=ddp, fsdp or deepspeed")
    dev = _pick_device(device, local_rank)
    _export_local_rank(dev, local_rank)
    backend = dist_cfg.backend if dist_cfg.backend != "auto" else ("nccl" if dev.type == "cuda" else "gloo")
    if dist_cfg.engine == "single":
        return DistEnv(device=dev, backend=backend)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    timeout = timedelta(minutes=dist_cfg.timeout_minutes)
    several_nodes = local_world < world
    _check_gloo_ifname()
    if backend == "gloo" and several_nodes and (problem := _gloo_address_problem()):
        raise ConfigError(f"gloo on several nodes cannot work here: {problem}; set GLOO_SOCKET_IFNAME to the "
                          "network interface the nodes reach each other on (e.g. GLOO_SOCKET_IFNAME=eth0)")
    if not dist.is_initialized():
        if dist_cfg.engine == "deepspeed":
            import deepspeed

            deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
        else:
            kwargs: dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
            dist.init_process_group(backend=backend, timeout=timeout, **kwargs)
    env = DistEnv(rank, world, local_rank, local_world, dev, backend, initialized=True)
    _make_host_group(env, timeout, several_nodes)
    return env


def _check_gloo_ifname() -> None:
    """``GLOO_SOCKET_IFNAME`` (comma-separated, read by torch for every gloo group) names interfaces of this
    host, or the gloo group would fail much later with an obscure message."""
    value = os.environ.get("GLOO_SOCKET_IFNAME", "")
    if not value:
        return
    present = sorted(name for _, name in socket.if_nameindex())
    missing = [name for name in value.split(",") if name not in present]
    if missing:
        raise ConfigError(f"GLOO_SOCKET_IFNAME={value}: host {socket.gethostname()} has no network interface "
                          f"{', '.join(missing)} (it has: {', '.join(present)})")


def _gloo_address_problem() -> str | None:
    """Why other nodes cannot reach gloo's default address (the host name's); None if they can, when
    ``GLOO_SOCKET_IFNAME`` chooses the interface instead, or when the rendezvous host is this machine's loopback
    (every process runs here)."""
    if os.environ.get("GLOO_SOCKET_IFNAME") or _loopback_address(os.environ.get("MASTER_ADDR", "127.0.0.1")):
        return None
    host = socket.gethostname()
    address = _loopback_address(host)
    return f"the host name {host!r} resolves to the loopback address {address}" if address else None


def _loopback_address(name: str) -> str | None:
    """The loopback address ``name`` is or resolves to (a name that does not resolve: gloo uses 127.0.0.1)."""
    try:
        address = str(ipaddress.ip_address(name))
    except ValueError:
        try:
            address = socket.gethostbyname(name)
        except OSError:
            return "127.0.0.1"
    return address if ipaddress.ip_address(address).is_loopback else None


@dataclass(frozen=True)
class _HostGroup:
    group: Any  # a gloo group; None = the default group
    device: torch.device  # where the summed tensor lives: the CPU for gloo, the default group's device else


_HOST_GROUP: list[_HostGroup] = []  # [the group host_all_reduce uses], once per process group


def _make_host_group(env: DistEnv, timeout: timedelta, several_nodes: bool) -> None:
    """The CPU (gloo) group for host_all_reduce, with the run's collective timeout; the default group when
    gloo cannot be used. A collective: every rank calls it at the same point, and all ranks agree on the
    outcome (a rank that used gloo while another used the default group would wait forever)."""
    if _HOST_GROUP or env.world_size == 1:
        return
    problems = _every_rank_problem(_gloo_address_problem() if several_nodes else None, env)
    group = None
    if not problems:
        problem = None
        try:
            group = dist.new_group(backend="gloo", timeout=timeout)
        except (RuntimeError, ValueError) as err:  # DistBackendError / DistNetworkError are RuntimeErrors
            problem = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
        problems = _every_rank_problem(problem, env)
    if problems:
        group = None
        if env.is_main:
            log.warning("the host-side gloo group cannot be used (%s); host sums go through the %s group "
                        "instead. On several nodes set GLOO_SOCKET_IFNAME to the interface the nodes reach "
                        "each other on", "; ".join(problems), env.backend)
    _HOST_GROUP.append(_HostGroup(group, torch.device("cpu") if group is not None else env.device))


def _every_rank_problem(problem: str | None, env: DistEnv) -> list[str]:
    """Every rank's problem (``rank r on host: ...``), the same list on every rank (a collective)."""
    labelled = f"rank {env.rank} on {socket.gethostname()}: {problem}" if problem else None
    return [p for p in all_gather_object(labelled, env) if p]


def host_all_reduce(values: list[float], env: DistEnv) -> list[float]:
    """Sum small host-side numbers (token counts, flags) over every rank through a CPU (gloo) group.

    No device work is involved, so nothing waits for the device's queue: the same sum through NCCL and a
    ``.item()`` would stall the host until every kernel queued so far has run (what the fallback to the
    default group costs, when gloo cannot be used)."""
    if not (env.initialized and env.world_size > 1):
        return list(values)
    host = _HOST_GROUP[0] if _HOST_GROUP else _HostGroup(None, env.device)  # a group not made by init_distributed
    summed = torch.tensor(values, dtype=torch.float64, device=host.device)  # exact for counts below 2**53
    dist.all_reduce(summed, group=host.group)
    return summed.tolist()


def destroy_distributed(wait_for_others: bool = True) -> None:
    """Tear the process group down. After a normal finish every rank waits for the others first: a rank that
    destroys the group while another still has collectives in flight can abort (gloo's threads go under it).
    After an error, don't wait (the others may never arrive): exit and let the launcher stop the rest."""
    if dist.is_available() and dist.is_initialized():
        if wait_for_others and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()
    _HOST_GROUP.clear()


def all_gather_object(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` without a process group)."""
    if not (env.initialized and env.world_size > 1):
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def on_rank0(env: DistEnv, compute: Callable[[], Any]) -> Any:
    """``compute()`` on rank 0 only, its result (or its ConfigError / RunError, raised) on every rank."""
    result: Any = None
    if env.is_main:
        try:
            result = ("ok", compute())
        except (ConfigError, RunError) as err:
            result = (type(err).__name__, str(err))
    kind, value = all_gather_object(result, env)[0]
    if kind == "ok":
        return value
    raise (ConfigError if kind == "ConfigError" else RunError)(value)


def barrier(env: DistEnv) -> None:
    if env.initialized and env.world_size > 1:
        dist.barrier()


def all_reduce(tensor: torch.Tensor, env: DistEnv, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce that is a no-op for a single process."""
    if env.initialized and env.world_size > 1:
        dist.all_reduce(tensor, op=op)
    return tensor
