"""The training loop in one process: metrics, checkpoints, faults, bad input."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from cod_train.config import ConfigError
from cod_train.engine.checkpoint import latest_checkpoint, list_checkpoints, read_meta
from cod_train.engine.distributed import DistEnv
from cod_train.engine.export import export_checkpoint
from cod_train.train import train
from tests.helpers.batches import NaNInjector, SyntheticBatches, eval_batches
from tests.helpers.engine_run import build_tiny_model, run, tiny_config
from tests.helpers.run_dirs import losses, metric_rows


def test_metrics_checkpoints_and_export(tmp_path):
    result = run(f"run_dir={tmp_path}", "train.max_steps=6", "train.keep_last=1", "train.export_hf=true",
                 "train.eval_every=3")
    assert result.stopped == "max_steps" and result.step == 6
    rows = metric_rows(tmp_path)
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    for key in ("lr", "grad_norm", "tokens", "tokens_per_s", "mfu", "peak_mem_gb"):
        assert all(r[key] is not None for r in train_rows), key
    assert all(0 < r["mfu"] <= 1 for r in train_rows)
    assert train_rows[-1]["tokens"] == 6 * 8 * 32
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert evals[-1]["eval_ppl"] == pytest.approx(math.exp(evals[-1]["eval_loss"]))
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_0000006"]  # keep_last=1
    meta = read_meta(latest_checkpoint(tmp_path / "checkpoints"))
    assert meta["step"] == 6 and meta["tokens"] == 6 * 8 * 32 and meta["format"] == "torch"
    meta_file = latest_checkpoint(tmp_path / "checkpoints") / "meta.json"
    assert meta_file.stat().st_mode & 0o777 == 0o644  # written by core.io.atomic_write_json
    hf = load_file(str(tmp_path / "hf" / "model.safetensors"))
    ckpt = load_file(str(tmp_path / "checkpoints" / "step_0000006" / "model.safetensors"))
    assert all(torch.equal(hf[k], ckpt[k]) for k in ckpt)
    # an HF directory re-exported in another dtype
    export_checkpoint(tmp_path / "hf", tmp_path / "hf16", dtype=torch.bfloat16)
    assert {t.dtype for t in load_file(str(tmp_path / "hf16" / "model.safetensors")).values()} == {torch.bfloat16}


def test_loss_is_world_and_micro_batch_invariant(tmp_path):
    a = run(f"run_dir={tmp_path / 'a'}", "train.max_steps=3", "train.micro_batch_size=8")
    b = run(f"run_dir={tmp_path / 'b'}", "train.max_steps=3", "train.micro_batch_size=1")
    assert a.step == b.step == 3
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert all(abs(la[s] - lb[s]) / la[s] < 1e-5 for s in la)


def test_resume_continues_exactly(tmp_path):
    full = tmp_path / "full"
    run(f"run_dir={full}", "train.max_steps=6")
    part = tmp_path / "part"
    run(f"run_dir={part}", "train.max_steps=6", "train.ckpt_every=3")
    # restart from step 3 of the second run into a new run directory
    resumed = tmp_path / "resumed"
    run(f"run_dir={resumed}", "train.max_steps=6", f"resume={part}/checkpoints/step_0000003")
    assert min(losses(resumed)) and sorted(losses(resumed)) == [4, 5, 6]
    assert all(losses(resumed)[s] == losses(full)[s] for s in (4, 5, 6))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["train.global_batch_size=10", "train.micro_batch_size=4"], "multiple of train.micro_batch_size"),
        (["resume=/nonexistent/ckpt"], "no such file"),
        (["train.precision=fp8"], "train.precision"),
    ],
)
def test_bad_input_fails_before_training(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        run(f"run_dir={tmp_path / 'r'}", *overrides)
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_unwritable_run_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="not writable"):
        run(f"run_dir={blocker / 'run'}")


def _train_with_nans(tmp_path, nan_steps, *overrides):
    cfg = tiny_config(f"run_dir={tmp_path}", *overrides)
    model = build_tiny_model(cfg)
    NaNInjector(model, nan_steps, micro_per_step=cfg.train.global_batch_size // cfg.train.micro_batch_size)
    data = SyntheticBatches(global_batch_size=cfg.train.global_batch_size, dp_rank=0, dp_world=1, seed=cfg.seed)
    return train(cfg, model, data, env=DistEnv(), eval_data=lambda: eval_batches(0, 1)), model


def test_nonfinite_step_is_skipped_and_counted(tmp_path):
    result, model = _train_with_nans(tmp_path, {2}, "train.max_steps=3")
    assert result.stopped == "max_steps" and result.nonfinite_total == 1
    rows = [r for r in metric_rows(tmp_path) if "loss" in r]
    assert rows[1]["skipped"] is True and rows[2]["nonfinite_skipped"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nonfinite_in_a_row_stops_and_keeps_last_good_checkpoint(tmp_path):
    result, _ = _train_with_nans(tmp_path, {4, 5, 6}, "train.max_steps=10", "train.ckpt_every=3",
                                 "train.max_nonfinite_in_a_row=3")
    assert result.stopped == "nonfinite" and result.step == 6
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_0000003"]
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2])
def test_sigterm_saves_and_stops(tmp_path, signum):
    """SIGTERM (preemption) and SIGUSR1/2 (a scheduler's time-limit warning; submitit sends USR2) save and stop."""
    previous = signal.getsignal(signum)

    def send_sigterm(model, step, batch):
        if step == 2:
            os.kill(os.getpid(), signum)
        return {"diag/probe": float(step)}

    result = run(f"run_dir={tmp_path}", "train.max_steps=50", "train.ckpt_every=0", "train.diag_every=1",
                 "train.log_every=5", diagnostics_fn=send_sigterm)
    assert result.stopped == "sigterm" and result.step == 2
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_0000002"
    assert [r["diag/probe"] for r in metric_rows(tmp_path) if "diag/probe" in r] == [1.0, 2.0]
    assert signal.getsignal(signum) == previous  # restored


def test_a_launchers_signal_handler_runs_once_after_the_checkpoint(tmp_path):
    """submitit's SIGUSR2 handler requeues the job: the loop takes the signal over while it trains (save first),
    then ``pass_on_stop_signal`` hands it to that handler, exactly once, once the checkpoint exists."""
    from cod_train.runs.lifecycle import pass_on_stop_signal

    calls: list[tuple[int, bool]] = []
    checkpoints = tmp_path / "checkpoints"

    def launcher_handler(signum, frame):
        calls.append((signum, latest_checkpoint(checkpoints) is not None))

    def send_usr2(model, step, batch):
        if step == 2:
            os.kill(os.getpid(), signal.SIGUSR2)
        return {}

    previous = signal.signal(signal.SIGUSR2, launcher_handler)
    try:
        result = run(f"run_dir={tmp_path}", "train.max_steps=50", "train.ckpt_every=0", "train.diag_every=1",
                     diagnostics_fn=send_usr2)
        assert result.stopped == "sigterm" and result.stop_signal == signal.SIGUSR2 and calls == []
        pass_on_stop_signal(result.stop_signal)
        assert calls == [(signal.SIGUSR2, True)]
    finally:
        signal.signal(signal.SIGUSR2, previous)
