"""Checkpoint directories: atomic writes, ``keep_last`` pruning, ``latest`` discovery, full training state.

Layout of ``run_dir/checkpoints/step_NNNNNNN/``::

    meta.json              step, tokens, engine, format, world size, counters, the run's flattened config,
                           the save's duration and every other file's size and CRC-32 (written last)
    model.safetensors      weights (torch format; also the consolidated copy in DeepSpeed checkpoints)
    optimizer.pt           optimizer state (torch format)        | dcp/ (FSDP2) | deepspeed/ (DeepSpeed)
    config.json            the model's HF config
    tokenizer/             tokenizer files (so an export needs nothing else)
    rng/rank_NNNNN.pt      RNG states per rank
    data/rank_NNNNN.pt     the train iterator's state per rank

Every rank writes into ``.tmp_step_NNNNNNN``; rank 0 then renames it. A crash mid-save leaves only a
``.tmp_*`` directory, which is never picked as ``latest`` and is removed by the next save. A save that fails
to write (disk full, an I/O error) on any rank, inside an engine's own save too, removes its ``.tmp_*``
directory and raises :class:`CheckpointSaveError` on every rank, none left waiting in a collective. The CRC-32s
are computed from the bytes as they are written (the tensor files are never read back; only the few small
files other libraries write, config.json and the tokenizer, are). ``resume=auto`` verifies
the newest checkpoint against its manifest (sizes, CRC-32; the ranks share the reading) and falls back to the
newest intact one, moving damaged ones aside as ``.damaged_step_*``. Non-tensor state is saved with
``torch.save`` and always read back with ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from cod_train.core.errors import CheckpointSaveError, ConfigError, RunError
from cod_train.core.io import WrittenFiles, atomic_write_json, file_crc32, make_readable
from cod_train.engine.distributed import DistEnv, all_gather_object, barrier, on_rank0

if TYPE_CHECKING:
    from cod_train.engine.engines import Engine

log = logging.getLogger("cod_train")
STEP_RE = re.compile(r"^step_(\d+)$")
META_FILE = "meta.json"
FORMAT_VERSION = 1
# The scheduler's warning before a job's time limit, in seconds (hydra/launcher=slurm exports its
# signal_delay_s; set it to N with sbatch --signal=USR1@N): a save must fit in it, or the job is killed mid-save.
SIGNAL_DELAY_ENV = "COD_TRAIN_SIGNAL_DELAY_S"
SIGNAL_DELAY_MARGIN = 1.5


def step_dirname(step: int) -> str:
    return f"step_{step:07d}"


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / META_FILE).is_file()


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_RE.match(p.name)) and is_checkpoint(p)]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def find_checkpoint(path: str | Path, key: str = "checkpoint") -> Path:
    """A checkpoint directory from a checkpoint, a run directory or a ``checkpoints/`` directory (its latest);
    ConfigError naming the ``key`` the path was given as otherwise."""
    spec, path = str(path), Path(path).expanduser()
    if is_checkpoint(path):
        return path
    for root in (path / "checkpoints", path):
        latest = latest_checkpoint(root)
        if latest is not None:
            return latest
    if not path.exists():
        raise ConfigError(f"{key}={spec!r}: no such file or directory")
    raise ConfigError(f"{key}={spec!r} is not a checkpoint (no {META_FILE}) and holds no complete checkpoint")


def resolve_resume(resume: str, ckpt_root: Path, env: DistEnv | None = None) -> Path | None:
    """``auto`` = the latest complete checkpoint (or none), ``none`` = start fresh, else a path that must exist.

    A path may be a checkpoint or a run directory / checkpoints directory (its latest is taken). With ``env``
    (a process group exists) rank 0 lists the candidates and every rank takes its list (a node's stale NFS
    cache cannot make ranks disagree), and the choice is verified: ``auto`` takes the newest intact
    checkpoint, a damaged explicit one is a RunError.
    """
    if resume in ("none", "", None):
        return None
    if resume == "auto":
        return latest_checkpoint(ckpt_root) if env is None else _latest_intact(ckpt_root, env)
    if env is None:
        return find_checkpoint(resume, key="resume")
    found = on_rank0(env, lambda: str(find_checkpoint(resume, key="resume")))
    path = Path(found)
    problems = checkpoint_problems(path, env) if env is not None else []
    if problems:
        raise RunError(f"resume={resume!r}: checkpoint {path} is damaged ({'; '.join(problems[:3])}); pass an "
                       "intact checkpoint, or resume=auto")
    return path


def _latest_intact(root: Path, env: DistEnv) -> Path | None:
    """The newest checkpoint that passes :func:`checkpoint_problems`; newer damaged ones are moved aside."""
    damaged: list[str] = []
    candidates = [Path(p) for p in on_rank0(env, lambda: [str(c) for c in list_checkpoints(root)])]
    for ckpt in reversed(candidates):
        problems = checkpoint_problems(ckpt, env)
        if not problems:
            if damaged and env.is_main:
                log.warning("resuming from %s, the newest intact checkpoint; damaged: %s", ckpt.name,
                            " | ".join(damaged))
            return ckpt
        damaged.append(f"{ckpt.name} ({'; '.join(problems[:3])}) moved to .damaged_{ckpt.name}")
        if env.is_main:
            os.replace(ckpt, ckpt.with_name(f".damaged_{ckpt.name}_{time.time_ns()}"))
        barrier(env)
    if damaged:
        raise RunError(f"no intact checkpoint in {root}: {' | '.join(damaged)}; pass resume=none to start over")
    return None


def check_shared_dir(path: Path, env: DistEnv, wait_s: float = 10.0) -> None:
    """ConfigError unless every process sees ``path`` as the same directory: rank 0 writes a file, every rank
    looks for it (waiting up to ``wait_s`` for NFS attribute caches). A node-local run_dir would split each
    checkpoint across nodes (only rank 0 publishes it) and hang a later resume."""
    if env.world_size < 2:
        return
    token = all_gather_object(uuid.uuid4().hex if env.is_main else None, env)[0]
    probe = path / f".shared_probe_{token}"
    if env.is_main:
        probe.write_text(socket.gethostname())
    barrier(env)
    deadline = time.monotonic() + wait_s
    while not probe.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    seen = all_gather_object((probe.exists(), socket.gethostname(), env.rank), env)
    barrier(env)
    if env.is_main:
        probe.unlink(missing_ok=True)
    blind = [(host, rank) for ok, host, rank in seen if not ok]
    if blind:
        hosts = sorted({host for host, _ in blind})
        raise ConfigError(f"run_dir={str(path)!r} is not one directory shared by every process: {len(blind)} "
                          f"rank(s) on {', '.join(hosts)} cannot see a file rank 0 wrote there; put run_dir on a "
                          "file system every node mounts (checkpoints are written by all ranks)")


def _gathered(items: list[str], env: DistEnv) -> list[str]:
    return sorted(x for part in all_gather_object(items, env) for x in part)


def file_manifest(path: Path, env: DistEnv, written: WrittenFiles | None = None) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "crc32"}}`` of every file under ``path`` but ``meta.json`` (collective).

    The files some rank wrote through ``written`` keep the CRC-32 computed while writing; the others (small
    files other libraries write) are read, each rank a share. A record whose size is not the file's (something
    wrote past our writer) is not trusted: that file is read too."""
    recorded = written.relative_to(path) if written is not None else {}
    known = {k: v for part in all_gather_object(recorded, env) for k, v in part.items()}
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and p.name != META_FILE)
    manifest = {rel: known[rel] for rel in files if rel in known and known[rel]["size"] == (path / rel).stat().st_size}
    unread = [rel for rel in files if rel not in manifest]
    mine = {rel: {"size": (path / rel).stat().st_size, "crc32": file_crc32(path / rel)}
            for i, rel in enumerate(unread) if i % env.world_size == env.rank}
    return manifest | {k: v for part in all_gather_object(mine, env) for k, v in part.items()}


def checkpoint_problems(path: Path, env: DistEnv) -> list[str]:
    """What is wrong with the checkpoint at ``path`` ([] = intact): unreadable metadata, missing files, sizes
    or CRC-32s that differ from its manifest. Collective; checkpoints without a manifest are taken as intact."""
    try:
        files = read_meta(path).get("files")
    except RunError as err:
        return [str(err)]
    mine = []
    for i, (rel, want) in enumerate(sorted((files or {}).items())):
        target = path / rel
        if i % env.world_size != env.rank:
            continue
        if not target.is_file():
            mine.append(f"{rel} is missing")
        elif target.stat().st_size != want["size"]:
            mine.append(f"{rel} has {target.stat().st_size} bytes, {want['size']} expected")
        elif file_crc32(target) != want["crc32"]:
            mine.append(f"{rel} fails its CRC-32 check")
    return _gathered(mine, env)


def checkpoint_bytes(path: Path | None) -> int:
    """The size of a checkpoint from its manifest (0 when unknown)."""
    if path is None:
        return 0
    try:
        return sum(int(f["size"]) for f in (read_meta(path).get("files") or {}).values())
    except (RunError, KeyError, TypeError, ValueError):
        return 0


def read_meta(path: Path) -> dict[str, Any]:
    """The checkpoint's ``meta.json``; RunError when it is there but unreadable (a damaged checkpoint)."""
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError) as err:
        raise RunError(f"{path} is not a readable checkpoint ({META_FILE}: {err})") from None
    if not isinstance(meta, dict) or "step" not in meta:
        raise RunError(f"{path} is not a readable checkpoint ({META_FILE} holds no step)")
    return meta


# --- RNG ------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    # legacy=True, the default, gives MT19937's tuple (numpy's stubs type the default as legacy=False: a dict)
    np_state = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rank_file(path: Path, kind: str, rank: int) -> Path:
    return path / kind / f"rank_{rank:05d}.pt"


def _save_rank_state(path: Path, kind: str, rank: int, obj: Any, written: WrittenFiles) -> None:
    target = _rank_file(path, kind, rank)
    target.parent.mkdir(parents=True, exist_ok=True)
    written.save_torch(obj, target)


def _load_rank_state(path: Path, kind: str, env: DistEnv, saved_world: int) -> Any:
    """This rank's state; rank 0's when the world size changed (states are world-size invariant then)."""
    rank = env.rank if saved_world == env.world_size else 0
    target = _rank_file(path, kind, rank)
    if not target.exists():
        return None
    return torch.load(target, map_location="cpu", weights_only=True)


# --- save / load ----------------------------------------------------------------------------------
@dataclass
class TrainState:
    """Counters the loop carries across restarts (saved in ``meta.json``)."""

    step: int = 0
    tokens: int = 0
    nonfinite_total: int = 0
    nonfinite_in_a_row: int = 0


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished temporary directory into place (replacing an older one of the same step)."""
    if final.exists():
        trash = final.with_name(f".old_{final.name}_{time.time_ns()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints (0 = keep all) and stale temp dirs."""
    for stale in root.glob(".tmp_step_*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in root.glob(".old_step_*"):
        shutil.rmtree(stale, ignore_errors=True)
    if keep_last > 0:
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)


def _collectively(env: DistEnv, final: Path, tmp: Path, what: Callable[[], None]) -> None:
    """Run ``what`` on every rank (its collectives aligned across ranks, whatever fails: see the engines'
    ``save``). If it fails on any rank, every rank removes the temporary directory and raises instead of
    waiting in the next collective: a CheckpointSaveError naming the first failed write (a full disk, an I/O
    error) on every rank; for anything else (a bug), the original error with its traceback on the rank it
    happened on, a RunError on the others."""
    failure: Exception | None = None
    try:
        what()
    except Exception as err:  # noqa: BLE001 - reported to every rank, re-raised below
        failure = err
    write = _write_failure(failure) if failure is not None else None
    mine = None if failure is None else ("write", write) if write else ("other", _first_line(failure))
    outcomes = [(rank, o) for rank, o in enumerate(all_gather_object(mine, env)) if o is not None]
    if not outcomes:
        return
    if env.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    writes = [(rank, reason) for rank, (kind, reason) in outcomes if kind == "write"]
    if failure is not None and not write:
        raise failure
    if writes:
        rank, reason = writes[0]
        where = f" on rank {rank}" if env.world_size > 1 else ""
        raise CheckpointSaveError(_save_failure(final, f"{reason}{where}"))
    raise RunError(f"checkpoint {final} could not be written: {outcomes[0][1][1]} on rank {outcomes[0][0]} "
                   "(its traceback is in that rank's log)")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:300]}" if text else type(err).__name__


def _write_failure(err: BaseException) -> str | None:
    """Why the write failed when ``err`` is a failure to write (an OSError in its chain: a full disk, a quota,
    an I/O error; torch.save wraps its writer's OSError in a RuntimeError), else None."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError):
            return f"{cause.strerror or cause}" + (f" ({cause.filename})" if cause.filename else "")
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def _save_failure(final: Path, reason: str) -> str:
    root = final.parent
    free = shutil.disk_usage(root).free if root.exists() else 0
    last = latest_checkpoint(root)
    need = checkpoint_bytes(last)
    return (f"could not write checkpoint {final}: {reason}; {free / 2**30:.2f} GiB free on {root}"
            + (f", the last checkpoint took {need / 2**30:.2f} GiB" if need else "")
            + (f"; the latest intact checkpoint is still {last.name}: free space and run again (resume=auto)"
               if last is not None else "; no earlier checkpoint exists"))


def _warn_if_low_space(root: Path) -> None:
    need = checkpoint_bytes(latest_checkpoint(root))
    free = shutil.disk_usage(root).free
    if need and free < 1.5 * need:
        log.warning("only %.2f GiB free on %s and the last checkpoint took %.2f GiB: the next save may fail",
                    free / 2**30, root, need / 2**30)


def signal_delay_s() -> float | None:
    """The scheduler's warning before the time limit (``$COD_TRAIN_SIGNAL_DELAY_S``), None when not known."""
    raw = os.environ.get(SIGNAL_DELAY_ENV, "").strip()
    try:
        return float(raw) if raw else None
    except ValueError:
        log.warning("%s=%r is not a number of seconds; not checking that a save fits in it", SIGNAL_DELAY_ENV, raw)
        return None


def warn_if_signal_delay_short(ckpt: Path) -> bool:
    """Warn (True) when the scheduler's warning before the time limit is shorter than 1.5x the time the
    checkpoint at ``ckpt`` took to save: at the time limit that save would be killed mid-way, and a job killed
    at its time limit is not requeued (the chain of jobs ends there)."""
    delay = signal_delay_s()
    seconds = float(read_meta(ckpt).get("save_seconds") or 0.0)
    need = SIGNAL_DELAY_MARGIN * seconds
    if delay is None or not seconds or delay >= need:
        return False
    log.warning("saving %s took %.1f s, but the scheduler warns only %.0f s before the time limit (%s): a save "
                "there would be killed mid-way and the job not requeued; set hydra.launcher.signal_delay_s "
                "(or sbatch --signal=USR1@N) to at least %.0f s, %.1fx the save time, plus a step",
                ckpt.name, seconds, delay, SIGNAL_DELAY_ENV, need, SIGNAL_DELAY_MARGIN)
    return True


def save_checkpoint(engine: Engine, root: Path, state: TrainState, *, data_state: Any = None,
                    tokenizer: Any = None, keep_last: int = 0, run_config: dict[str, Any] | None = None) -> Path:
    """Write the full training state of ``engine`` atomically to ``root/step_NNNNNNN``; collective. A failure to
    write (a full disk) on any rank leaves no partial directory and raises CheckpointSaveError on every rank."""
    env: DistEnv = engine.env
    final = root / step_dirname(state.step)
    tmp = root / f".tmp_{final.name}"
    written = WrittenFiles()
    started = time.perf_counter()

    def prepare() -> None:
        if env.is_main:
            root.mkdir(parents=True, exist_ok=True)
            _warn_if_low_space(root)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)

    def rank_parts() -> None:
        barrier(env)
        engine.save(tmp, written)
        _save_rank_state(tmp, "rng", env.rank, rng_state(), written)
        if data_state is not None:
            _save_rank_state(tmp, "data", env.rank, data_state, written)

    def main_parts() -> None:
        config = getattr(engine.module, "config", None)
        if env.is_main and config is not None:
            if tokenizer is not None:  # the tokenizer's ids, not the config class's Llama defaults
                from cod_train.model.configuration import set_token_ids

                set_token_ids(config, tokenizer)
            config.to_json_file(str(tmp / "config.json"))
        if env.is_main and tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / "tokenizer"))
        if env.is_main:
            make_readable(tmp)
        barrier(env)
        files = file_manifest(tmp, env, written)
        if env.is_main:
            meta = _meta(engine, state, env) | {"run_config": run_config or {}, "files": files,
                                                "save_seconds": round(time.perf_counter() - started, 3)}
            atomic_write_json(tmp / META_FILE, meta, indent=2)  # written last: marks the directory complete
            _fsync_dir(tmp)
            _publish(tmp, final)

    for part in (prepare, rank_parts, main_parts):
        _collectively(env, final, tmp, part)
    if env.is_main:
        prune(root, keep_last)
    barrier(env)
    return final


def _meta(engine: Engine, state: TrainState, env: DistEnv) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION, "engine": engine.name, "format": engine.format,
        "world_size": env.world_size, "zero_stage": getattr(engine.dist_cfg, "zero_stage", None),
        "precision": engine.precision, "step": state.step, "tokens": state.tokens,
        "nonfinite_total": state.nonfinite_total, "nonfinite_in_a_row": state.nonfinite_in_a_row,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def load_checkpoint(engine: Engine, path: Path) -> tuple[TrainState, Any]:
    """Restore ``engine`` (model + optimizer), this rank's RNG; return the counters and the data state."""
    meta = read_meta(path)
    env: DistEnv = engine.env
    engine.load(path, meta)
    saved_world = int(meta.get("world_size", 1))
    rng = _load_rank_state(path, "rng", env, saved_world)
    if rng is not None:
        set_rng_state(rng)
    data_state = _load_rank_state(path, "data", env, saved_world)
    state = TrainState(step=int(meta["step"]), tokens=int(meta.get("tokens", 0)),
                       nonfinite_total=int(meta.get("nonfinite_total", 0)),
                       nonfinite_in_a_row=int(meta.get("nonfinite_in_a_row", 0)))
    return state, data_state
