"""What a training run is, around the loop: seeding, the process group, the summary line and the exit code.
Shared by cod-pretrain and cod-sft."""

from __future__ import annotations

import random
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cod_train.runs.app import (
    EXIT_INTERRUPTED,
    EXIT_NONFINITE,
    EXIT_OK,
    EXIT_SIGNAL_BASE,
    is_main_process,
    local_sweep_job,
)

if TYPE_CHECKING:
    from cod_train.engine.distributed import DistEnv
    from cod_train.runs.resolve import ResolvedRun
    from cod_train.train.loop import TrainResult


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def summarize(result: TrainResult, env: DistEnv) -> None:
    """The run's last lines on rank 0: why it stopped, the final eval, where the checkpoint and export are."""
    if not env.is_main:
        return
    how = result.stopped if result.stop_signal is None else signal.Signals(result.stop_signal).name.lower()
    lines = [f"stopped: {how} at step {result.step} ({result.tokens:,} tokens)"]
    if result.last_eval:
        lines.append(f"final eval: loss {result.last_eval['eval_loss']:.4f}, "
                     f"perplexity {result.last_eval['eval_ppl']:.2f}")
    if result.checkpoint:
        lines.append(f"checkpoint: {result.checkpoint}")
    if result.hf_dir:
        lines.append(f"HF export: {result.hf_dir}")
    if result.nonfinite_total:
        lines.append(f"non-finite steps skipped: {result.nonfinite_total}")
    print("\n".join(lines), flush=True)


def prepare_run_dir(cfg: Any) -> tuple[Path, Path | None]:
    """The run-directory part of a training command's resolution, after every other check: the checkpoint
    ``resume`` names exists and continues the same run (runs/identity.py), then run_dir is created. Returns
    (run_dir, that checkpoint or None); the loop verifies the checkpoint under the process group."""
    from cod_train.config import flatten_config
    from cod_train.engine.checkpoint import resolve_resume
    from cod_train.runs.identity import check_resume
    from cod_train.train.loop import check_run_dir

    ckpt = resolve_resume(cfg.resume, Path(cfg.run_dir) / "checkpoints")
    check_resume(ckpt, flatten_config(cfg), cfg.resume_allow_change)
    return check_run_dir(cfg.run_dir), ckpt


def run_training(run: ResolvedRun, train_fn: Callable[[ResolvedRun, DistEnv], TrainResult]) -> int:
    """Hold the run_dir lock, initialize torch.distributed, ``train_fn(run, env)``, summarize, tear down; the
    command's exit code. After an error the ranks do not wait for each other (one may never arrive)."""
    from cod_train.engine.checkpoint import check_shared_dir
    from cod_train.engine.distributed import destroy_distributed, init_distributed
    from cod_train.runs.lock import RunDirLock

    with RunDirLock(run.run_dir, enabled=is_main_process()):
        env = init_distributed(run.cfg.distributed, run.cfg.device)
        try:
            check_shared_dir(run.run_dir, env)
            result = train_fn(run, env)
            summarize(result, env)
        except BaseException:
            destroy_distributed(wait_for_others=False)
            raise
        destroy_distributed()
    pass_on_stop_signal(result.stop_signal)
    return exit_code(result)


def exit_code(result: TrainResult) -> int:
    """0 done; 3 non-finite losses; stopped by a signal (checkpoint saved): 0 for SIGTERM / SIGUSR1 / SIGUSR2
    (preemption: the next job resumes), 130 for Ctrl-C, and 128 + the signal's number in a local ``-m`` sweep,
    which then stops instead of starting its next job."""
    if result.stopped == "nonfinite":
        return EXIT_NONFINITE
    if result.stop_signal is None:
        return EXIT_OK
    sweep = local_sweep_job()
    if sweep is not None:
        sweep_dir, job = sweep
        if is_main_process():
            print(f"sweep stopped by {signal.Signals(result.stop_signal).name}: job {job} saved "
                  f"{result.checkpoint}, the later jobs were not started (to go on, run the same command with "
                  f"hydra.sweep.dir={sweep_dir})", file=sys.stderr, flush=True)
        return EXIT_SIGNAL_BASE + result.stop_signal
    return EXIT_INTERRUPTED if result.stop_signal == signal.SIGINT else EXIT_OK


def pass_on_stop_signal(signum: int | None) -> None:
    """Hand the signal that stopped the run to the handler a launcher installed for it, now that the
    checkpoint is written and the process group is gone.

    submitit (``hydra/launcher=slurm``) installs a SIGUSR2 handler that, on task 0, resubmits the same command
    and requeues the job (``scontrol requeue``), then exits; the training loop took the signal over while it
    ran, so without this the job would end at its time limit instead of continuing with ``resume=auto``.
    With no such handler (the default action, ignored, or Python's own Ctrl-C handler, which would raise
    KeyboardInterrupt), nothing happens."""
    handler = signal.getsignal(signum) if signum is not None else None
    if signum is not None and callable(handler) and handler is not signal.default_int_handler:
        signal.raise_signal(signum)
