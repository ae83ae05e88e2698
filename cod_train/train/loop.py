"""The one training loop, shared by pre-training and SFT.

``train(cfg, model, train_data, env=...)`` takes a plain model (it is wrapped here by ``parallelize``), this
rank's iterator over its share of each global batch (with ``state_dict``/``load_state_dict``), a factory of
held-out batches, the tokenizer (saved into checkpoints and the final HF export) and a run config with the
fields ``train``, ``distributed``, ``logger``, ``run_dir``, ``resume`` and ``seed`` (``PretrainConfig``
and the SFT config both have them).

Loss normalization: each micro-batch's loss is ``sum(token losses) / (valid tokens in the global batch /
world size)``, so the gradients that DDP/FSDP/DeepSpeed average across ranks are exactly those of the mean
over the global batch, whatever the micro-batch size and the number of processes.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from torch import nn

from cod_train.config import DistributedConfig, LoggerConfig, TrainConfig, flatten_config
from cod_train.core.constants import IGNORE_INDEX
from cod_train.core.errors import ConfigError, RunError
from cod_train.engine.checkpoint import (
    TrainState,
    load_checkpoint,
    read_meta,
    resolve_resume,
    save_checkpoint,
    warn_if_signal_delay_short,
)
from cod_train.engine.distributed import DistEnv, all_reduce, barrier, host_all_reduce
from cod_train.engine.engines import Engine
from cod_train.engine.export import save_hf
from cod_train.engine.parallelize import parallelize
from cod_train.eval.perplexity import evaluate_perplexity
from cod_train.train.metrics import (
    MetricsLogger,
    mfu,
    model_flops_per_token,
    peak_flops,
    peak_memory_gb,
)
from cod_train.train.optim import build_optimizer, lr_at
from cod_train.train.step_stats import StepStats

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

log = logging.getLogger(__name__)
Batch = dict[str, torch.Tensor]


class BatchIterator(Protocol):
    def __iter__(self) -> Iterator[Batch]: ...
    def __next__(self) -> Batch: ...
    def state_dict(self) -> Any: ...
    def load_state_dict(self, state: Any) -> None: ...


class RunConfig(Protocol):
    """What the loop reads from a command's config (read-only: ``SFTConfig.train`` is an ``SFTTrainConfig``)."""

    @property
    def train(self) -> TrainConfig: ...
    @property
    def distributed(self) -> DistributedConfig: ...
    @property
    def logger(self) -> LoggerConfig: ...
    @property
    def run_dir(self) -> str: ...
    @property
    def resume(self) -> str: ...
    @property
    def seed(self) -> int: ...


# diagnostics_fn(model=<plain model>, step=<1-based step>, batch=<first micro-batch>) -> metrics dict.
# Called on every rank after backward and before the optimizer step, every ``train.diag_every`` steps.
DiagnosticsFn = Callable[..., dict[str, Any]]


class Callback:
    """Hooks into every step of the loop; override the ones needed. Each runs on every rank, in list order.

    ``before_optimizer_step(model, step, batch)``: after backward, before clipping and the optimizer step,
    under the training autocast; returns metrics for the step's row (``{}``: none).
    ``after_optimizer_step(model, step)``: after the optimizer step, under ``torch.no_grad()`` (e.g. renormalize
    weights). ``on_step_end(row, step)``: once per step, after logging / eval / checkpoint; ``row`` holds the
    device statistics (loss, grad_norm) only on the steps that read them (log, eval, checkpoint steps).
    ``model`` is the plain module (under FSDP2 its parameters are the rank's DTensor shards); ``step`` is the
    1-based number of the step being taken."""

    def before_optimizer_step(self, model: nn.Module, step: int, batch: Batch) -> dict[str, Any]:
        return {}

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        pass

    def on_step_end(self, row: dict[str, Any], step: int) -> None:
        pass


class Diagnostics(Callback):
    """``fn(model=, step=, batch=) -> metrics`` every ``every`` steps (the depth diagnostics of cod-pretrain)."""

    def __init__(self, fn: DiagnosticsFn, every: int):
        self.fn, self.every = fn, every

    def before_optimizer_step(self, model: nn.Module, step: int, batch: Batch) -> dict[str, Any]:
        if not self.every or step % self.every:
            return {}
        return self.fn(model=model, step=step, batch=batch) or {}


@dataclass
class TrainResult:
    step: int
    tokens: int
    stopped: str  # max_steps | sigterm | nonfinite
    checkpoint: Path | None
    last_eval: dict[str, float] | None
    nonfinite_total: int
    hf_dir: Path | None = None
    stop_signal: int | None = None  # the signal that stopped the run (stopped == "sigterm")


# --- validation (before any work) -----------------------------------------------------------------
def micro_batch_rows(cfg: TrainConfig, world_size: int) -> int:
    """Rows per micro-batch on each rank: ``train.micro_batch_size`` is the most that fits in memory, so when a
    rank's share of the global batch is smaller (many GPUs), the share is the micro-batch (no accumulation)."""
    gbs, mbs = cfg.global_batch_size, cfg.micro_batch_size
    if gbs <= 0 or mbs <= 0:
        raise ConfigError(f"train.global_batch_size ({gbs}) and train.micro_batch_size ({mbs}) must be positive")
    if gbs % world_size:
        raise ConfigError(f"train.global_batch_size={gbs} must be a multiple of the {world_size} data-parallel "
                          "processes")
    share = gbs // world_size
    if share % min(mbs, share):
        raise ConfigError(
            f"each of the {world_size} process(es) takes {share} rows of train.global_batch_size={gbs}, which is "
            f"not a multiple of train.micro_batch_size={mbs}; change one of them")
    return min(mbs, share)


def grad_accum_steps(cfg: TrainConfig, world_size: int) -> int:
    """Micro-batches per rank per step; raises ConfigError unless the batch sizes fit together."""
    return cfg.global_batch_size // world_size // micro_batch_rows(cfg, world_size)


def check_run_dir(run_dir: str | Path) -> Path:
    """Create ``run_dir`` and prove it is writable, or raise ConfigError."""
    path = Path(run_dir).expanduser()
    probe = path / f".write_test_{os.getpid()}_{time.time_ns()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"run_dir={str(run_dir)!r} is not writable: {err.strerror or err}") from None
    return path


# --- preemption signals ----------------------------------------------------------------------------
# SIGTERM: preemption, `scancel`, torchrun's shutdown, sbatch --signal=TERM@...; SIGUSR1/SIGUSR2: the warnings
# schedulers send before a time limit (submitit, hence `hydra/launcher=slurm`, sends USR2 `signal_delay_s`
# before it; sbatch --signal=USR1@...). Each becomes a flag checked at step boundaries, on every rank at once
# (the flag is all-reduced): the run saves a checkpoint and exits 0, and the next job continues (resume=auto).
# SIGINT (Ctrl-C) likewise saves and stops (exit 130, runs/lifecycle.py); a second Ctrl-C stops at once, unsaved.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")
                     if hasattr(signal, name))


class StopSignal:
    """Turns the stop signals into a flag checked at step boundaries."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: do not wait for the step boundary
        self.received = signum

    def __enter__(self) -> StopSignal:
        for signum in STOP_SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread
                break
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


# --- the loop -------------------------------------------------------------------------------------
def split_micro_batches(batch: Batch, micro_batch_size: int) -> list[Batch]:
    rows = batch["input_ids"].shape[0]
    return [{k: v[i:i + micro_batch_size] for k, v in batch.items()} for i in range(0, rows, micro_batch_size)]


def config_dict(cfg: Any) -> dict[str, Any]:
    if is_dataclass(cfg):
        return asdict(cast("DataclassInstance", cfg))
    return dict(cfg) if isinstance(cfg, dict) else {}


def loss_divisor(valid_tokens: int, world_size: int) -> float:
    """``num_items_in_batch``: the global batch's valid tokens per rank, so that summing the ranks' gradients
    gives the global mean. A Python float, not a tensor: FSDP2's mixed precision casts floating-point tensor
    arguments to the parameter dtype, and bf16 would round 6250 to 6240 (0.16% off the loss and gradients)."""
    return max(valid_tokens, 1) / world_size


class Trainer:
    """Holds the loop's state; :func:`train` is the entry point."""

    def __init__(self, cfg: RunConfig, model: nn.Module, train_data: BatchIterator, *, env: DistEnv,
                 eval_data: Callable[[], Iterable[Batch]] | None = None, tokenizer: Any = None,
                 callbacks: Sequence[Callback] = ()):
        self.cfg, self.tcfg, self.env = cfg, cfg.train, env
        self.tcfg.validate()
        self.micro = micro_batch_rows(self.tcfg, env.world_size)
        self.accum = grad_accum_steps(self.tcfg, env.world_size)
        self.run_dir = check_run_dir(cfg.run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.resume_from = resolve_resume(cfg.resume, self.ckpt_root, env)  # verified; the newest intact
        self.train_data, self.eval_data = train_data, eval_data
        self.tokenizer, self.callbacks = tokenizer, list(callbacks)
        self.engine: Engine = parallelize(
            model, cfg.distributed, env, optimizer_fn=lambda m: build_optimizer(m, self.tcfg),
            precision=self.tcfg.precision, micro_batch_size=self.micro,
            grad_accum_steps=self.accum, grad_clip=self.tcfg.grad_clip,
            resume_world_size=read_meta(self.resume_from).get("world_size") if self.resume_from else None)
        self.state = TrainState()
        self.stats = StepStats(env.device)
        self._longest_nonfinite_run = 0
        self._stop_signal: int | None = None
        self._window = (time.perf_counter(), 0)  # (start, steps) of the tokens/s measurement
        self.last_diag: dict[str, Any] = {}
        self.last_saved_step = -1
        self.last_eval: dict[str, float] | None = None
        self.logger = MetricsLogger(self.run_dir, cfg.logger, config_dict(cfg), enabled=env.is_main)
        self._peak: float | None = None
        self._flops_per_token = 0.0

    # -- state --
    def restore(self) -> None:
        if self.resume_from is None:
            return
        try:
            self.state, data_state = load_checkpoint(self.engine, self.resume_from)
        except (OSError, EOFError, KeyError, ValueError, RuntimeError, pickle.UnpicklingError) as err:
            if isinstance(err, RunError | ConfigError):
                raise
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            raise RunError(f"checkpoint {self.resume_from} could not be loaded ({type(err).__name__}: {first}); "
                           "resume from an earlier one (resume=PATH) or start over (resume=none)") from None
        self.last_saved_step = self.state.step
        self.stats = StepStats(self.env.device, self.state.nonfinite_total, self.state.nonfinite_in_a_row)
        self.logger.truncate_after(self.state.step)
        if data_state is not None and hasattr(self.train_data, "load_state_dict"):
            self.train_data.load_state_dict(data_state)
        self.info(f"resumed from {self.resume_from} at step {self.state.step}")
        if self.env.is_main:  # before hours of work: will the next save fit in the scheduler's warning?
            warn_if_signal_delay_short(self.resume_from)

    def save(self) -> Path:
        self.read_stats()  # the checkpoint's metadata holds the non-finite counters
        data_state = self.train_data.state_dict() if hasattr(self.train_data, "state_dict") else None
        path = save_checkpoint(self.engine, self.ckpt_root, self.state, data_state=data_state,
                               tokenizer=self.tokenizer, keep_last=self.tcfg.keep_last,
                               run_config=flatten_config(self.cfg))
        self.last_saved_step = self.state.step
        self.info(f"saved checkpoint {path}")
        if self.env.is_main:
            warn_if_signal_delay_short(path)
        return path

    def info(self, msg: str) -> None:
        if self.env.is_main:
            log.info(msg)

    # -- one step --
    def stop_requested(self, stop: StopSignal) -> bool:
        return host_all_reduce([1.0 if stop.received is not None else 0.0], self.env)[0] > 0

    def forward_backward(self, batch: Batch) -> tuple[torch.Tensor, int, Batch]:
        """Forward and backward over the micro-batches; returns the global mean loss (a device tensor), the
        valid tokens in the global batch and the first micro-batch."""
        micro = split_micro_batches(batch, self.micro)
        # Counted from the host copy of the labels and summed on the CPU group: no wait for the device.
        local_valid = sum(int((m["labels"] != IGNORE_INDEX).sum()) for m in micro)
        valid = int(host_all_reduce([float(local_valid)], self.env)[0])
        items = loss_divisor(valid, self.env.world_size)
        loss_sum = torch.zeros((), device=self.env.device)
        for i, mb in enumerate(micro):
            mb = {k: v.to(self.env.device, non_blocking=True) for k, v in mb.items()}
            with self.engine.accumulate(last=i == len(micro) - 1), self.engine.autocast():
                # labels + shift_labels: transformers' models only compute a loss when labels are given,
                # and shift_labels tells them (and ours) that the labels are already aligned.
                out = self.engine.model(input_ids=mb["input_ids"], labels=mb["labels"],
                                        shift_labels=mb["labels"], num_items_in_batch=items,
                                        use_cache=False)
            self.engine.backward(out.loss)
            loss_sum += out.loss.detach().float()
        return all_reduce(loss_sum, self.env) / self.env.world_size, valid, micro[0]

    def step(self, batch: Batch) -> dict[str, Any]:
        """One optimizer step, without reading anything back from the device (see ``step_stats``)."""
        lr = lr_at(self.state.step, self.tcfg)
        loss, valid, first_micro = self.forward_backward(batch)
        # Before clipping, so per-layer grad norms are the raw ones under every engine
        # (DeepSpeed clips inside its own step).
        self.last_diag = self.diagnostics(first_micro)
        if self.last_diag:
            self.engine.reshard()
        grad_norm = self.engine.clip_grad_norm()
        finite = torch.isfinite(loss) if grad_norm is None else torch.isfinite(loss) & torch.isfinite(grad_norm)
        engine_norm = self.engine.optimizer_step(lr, ~finite)
        with torch.no_grad():
            for callback in self.callbacks:
                callback.after_optimizer_step(self.engine.module, self.state.step + 1)
        if engine_norm is not None:  # the engine checked the gradients itself (DeepSpeed): NaN = step dropped
            finite = finite & torch.isfinite(engine_norm.to(finite.device))
        self.stats.update(loss, engine_norm if engine_norm is not None else grad_norm, ~finite)
        self.state.step += 1
        self.state.tokens += int(batch["input_ids"].numel()) * self.env.world_size
        return {"lr": lr, "step": self.state.step, "tokens": self.state.tokens, "valid_tokens": valid,
                **self.last_diag}

    def read_stats(self) -> dict[str, Any]:
        """The device-side step statistics as metrics (a host sync); updates the counters in ``state``."""
        got = self.stats.read()
        new = got.nonfinite_total - self.state.nonfinite_total
        self.state.nonfinite_total, self.state.nonfinite_in_a_row = got.nonfinite_total, got.nonfinite_in_a_row
        if new:
            log.warning("%d non-finite step(s) skipped up to step %d (%d in a row now); parameters and optimizer "
                        "state were left as they were", new, self.state.step, got.nonfinite_in_a_row)
        self._longest_nonfinite_run = got.longest_nonfinite_run
        row: dict[str, Any] = {"loss": got.loss, "grad_norm": got.grad_norm,
                               "nonfinite_skipped": got.nonfinite_total}
        if got.skipped:
            row["skipped"] = True
        return row

    def diagnostics(self, batch: Batch) -> dict[str, Any]:
        """The callbacks' metrics before the optimizer step (the depth diagnostics on their steps)."""
        metrics: dict[str, Any] = {}
        if not self.callbacks:
            return metrics
        with self.engine.autocast():  # the training forward's numerics (FSDP2's bf16 blocks need autocast)
            for callback in self.callbacks:
                metrics.update(callback.before_optimizer_step(self.engine.module, self.state.step + 1, batch))
        return metrics

    def evaluate(self) -> dict[str, float] | None:
        if self.eval_data is None:
            return None
        with self.engine.autocast():
            result = evaluate_perplexity(self.engine.model, self.eval_data(), device=self.env.device,
                                         max_tokens=self.tcfg.eval_tokens or None)
        self.engine.train(True)
        self.last_eval = result
        self.logger.log({"step": self.state.step, **result})
        self.info(f"step {self.state.step}: eval loss {result['eval_loss']:.4f}, ppl {result['eval_ppl']:.2f}")
        return result

    def export_hf(self) -> Path | None:
        if not self.tcfg.export_hf:
            return None
        state = self.engine.full_state_dict()
        out = self.run_dir / "hf"
        if self.env.is_main:
            assert state is not None  # full_state_dict() returns the weights on the main rank
            model = _fresh_copy(self.engine.module, state)
            save_hf(model, out, self.tokenizer)
            self.info(f"exported the final model to {out}")
        barrier(self.env)
        return out

    # -- the loop --
    def throughput(self, row: dict[str, Any], steps: int, seconds: float, seq_len: int) -> None:
        tokens_per_s = steps * self.tcfg.global_batch_size * seq_len / max(seconds, 1e-9)
        if self._peak is None:
            self._peak = peak_flops(self.env.device, self.tcfg.precision, self.tcfg.cpu_peak_flops) or 0.0
            self._flops_per_token = model_flops_per_token(self.engine.module, seq_len)
        row.update(tokens_per_s=tokens_per_s, step_time_s=seconds / max(steps, 1),
                   mfu=mfu(self._flops_per_token, tokens_per_s, self.env.world_size, self._peak),
                   peak_mem_gb=peak_memory_gb(self.env.device))

    def fit(self) -> TrainResult:
        from tqdm.auto import tqdm

        self.restore()
        tcfg, stopped = self.tcfg, "max_steps"
        self.engine.train(True)
        interactive = sys.stderr.isatty()
        bar = tqdm(total=tcfg.max_steps, initial=self.state.step, disable=not self.env.is_main,
                   desc="train", unit="step", dynamic_ncols=True, mininterval=1.0 if interactive else 30.0)
        self._window = (time.perf_counter(), 0)
        try:
            with StopSignal() as stop:
                while self.state.step < tcfg.max_steps:
                    if self.stop_requested(stop):
                        stopped, self._stop_signal = "sigterm", stop.received
                        break
                    batch = next(self.train_data)
                    row = self.step(batch)
                    self._window = (self._window[0], self._window[1] + 1)
                    bar.update(1)
                    go_on = self.after_step(row, batch, bar)
                    for callback in self.callbacks:
                        callback.on_step_end(row, self.state.step)
                    if not go_on:
                        stopped = "nonfinite"
                        break
            bar.close()
            return self.finish(stopped)
        finally:
            bar.close()
            self.logger.close()

    def after_step(self, row: dict[str, Any], batch: Batch, bar: Any) -> bool:
        """Log, evaluate and checkpoint as the step number says; False = stop (too many non-finite steps).

        The device's step statistics are read only here, on logging, eval and checkpoint steps."""
        tcfg, step = self.tcfg, self.state.step
        log_now = step % tcfg.log_every == 0 or step == tcfg.max_steps or step == 1
        eval_now = bool(tcfg.eval_every) and step % tcfg.eval_every == 0
        save_now = bool(tcfg.ckpt_every) and step % tcfg.ckpt_every == 0
        if log_now or eval_now or save_now:
            row.update(self.read_stats())
            if self._longest_nonfinite_run >= tcfg.max_nonfinite_in_a_row:
                self.logger.log(row)
                return False
        if log_now:
            now = time.perf_counter()
            self.throughput(row, self._window[1], now - self._window[0], batch["input_ids"].shape[1])
            self._window = (now, 0)
            self.logger.log(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tokens_per_s']:.0f}",
                            refresh=False)
        elif self.last_diag:  # a diagnostics step between log steps: its own row
            self.logger.log({"step": step, **self.last_diag})
        if eval_now:
            self.evaluate()
        if save_now:
            self.save()
        if eval_now or save_now:
            self._window = (time.perf_counter(), self._window[1])  # keep eval/save time out of tokens/s
        return True

    def finish(self, stopped: str) -> TrainResult:
        ckpt, hf_dir = None, None
        if stopped == "nonfinite":
            log.error("stopping: %d non-finite steps in a row; the last good checkpoint is kept",
                      self._longest_nonfinite_run)
        elif self.last_saved_step != self.state.step:
            ckpt = self.save()
        if stopped == "max_steps":
            if self.last_eval is None or self.tcfg.eval_every == 0 or self.state.step % self.tcfg.eval_every:
                self.evaluate()
            hf_dir = self.export_hf()
        if ckpt is None and self.last_saved_step >= 0:
            ckpt = self.ckpt_root / f"step_{self.last_saved_step:07d}"
        return TrainResult(step=self.state.step, tokens=self.state.tokens, stopped=stopped, checkpoint=ckpt,
                           last_eval=self.last_eval, nonfinite_total=self.state.nonfinite_total, hf_dir=hf_dir,
                           stop_signal=self._stop_signal)


def _fresh_copy(module: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A plain CPU copy of ``module`` (a PreTrainedModel: same class and config) holding ``state``."""
    from torch.distributed.fsdp import FSDPModule

    cls: type[Any] = type(module)
    if isinstance(module, FSDPModule):  # fully_shard swapped in a subclass: build the plain class
        cls = next(c for c in cls.__mro__[1:] if not issubclass(c, FSDPModule))
    config: Any = module.config
    with torch.device("meta"):
        copy = cls(config)
    missing, unexpected = copy.load_state_dict(state, assign=True, strict=False)
    tied = set(getattr(copy, "all_tied_weights_keys", {}) or {}) if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:  # a weight left on the meta device would export garbage
        raise RunError(f"the final export does not match the model: missing {sorted(set(missing) - tied)[:5]}, "
                       f"unexpected {sorted(unexpected)[:5]}")
    if config.tie_word_embeddings:
        copy.tie_weights()
    return copy.eval()


def train(cfg: RunConfig, model: nn.Module, train_data: BatchIterator, *, env: DistEnv,
          eval_data: Callable[[], Iterable[Batch]] | None = None, tokenizer: Any = None,
          callbacks: Sequence[Callback] = (), diagnostics_fn: DiagnosticsFn | None = None) -> TrainResult:
    """Train ``model`` on ``train_data`` as ``cfg`` says; resumes, checkpoints, evaluates and exports.

    ``callbacks`` hook into every step (:class:`Callback`); ``diagnostics_fn`` is the same as a
    :class:`Diagnostics` callback every ``train.diag_every`` steps, run first.
    Raises ConfigError (before any step) for inconsistent batch sizes, an unwritable run_dir or a missing
    resume path. Returns how it stopped: ``max_steps``, ``sigterm`` (checkpoint saved) or ``nonfinite``.
    """
    if diagnostics_fn is not None:
        callbacks = [Diagnostics(diagnostics_fn, cfg.train.diag_every), *callbacks]
    trainer = Trainer(cfg, model, train_data, env=env, eval_data=eval_data, tokenizer=tokenizer,
                      callbacks=callbacks)
    return trainer.fit()
