"""cod-pretrain / cod-export end to end (tiny model on the bundled sample) and their error handling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from cod_train.cli import export
from tests.helpers.cli import TINY, cod_pretrain
from tests.helpers.processes import REPO, subprocess_env
from tests.helpers.run_dirs import metric_rows


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train.global_batch_size=10", "train.micro_batch_size=4"], "multiple of train.micro_batch_size"),
        (["resume=/nonexistent/step_0000001"], "no such file"),
        (["+train.no_such_key=1"], "no_such_key"),
        (["train.lr=fast"], "train.lr"),
    ],
)
def test_bad_config_exits_2_with_one_line(monkeypatch, capsys, tmp_path, args, message):
    assert cod_pretrain(f"run_dir={tmp_path / 'run'}", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err


def test_unwritable_run_dir_exits_2(monkeypatch, capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    assert cod_pretrain(f"run_dir={tmp_path / 'file' / 'run'}") == 2
    assert "not writable" in capsys.readouterr().err


def _wait_for_step(run_dir, step: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        path = run_dir / "metrics.jsonl"
        if path.exists() and any(json.loads(line).get("step", 0) >= step for line in path.read_text().splitlines()
                                 if line.endswith("}")):
            return
        time.sleep(0.1)
    raise AssertionError(f"no step {step} logged (exit code {proc.poll()})")


@pytest.mark.slow
def test_sigterm_resume_and_export(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    args = [f"run_dir={run_dir}", *TINY, "train.ckpt_every=0"]
    proc = subprocess.Popen([sys.executable, "-m", "cod_train.cli.pretrain", *args, "train.max_steps=100000"],
                            cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    _wait_for_step(run_dir, 2, proc)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "stopped: sigterm" in out
    stopped_at = max(r["step"] for r in metric_rows(run_dir) if "loss" in r)
    assert (run_dir / "checkpoints" / f"step_{stopped_at:07d}" / "meta.json").exists()
    assert (run_dir / "config.yaml").exists()

    # resume=auto (the default) finishes the run: final eval, checkpoint, HF export with tokenizer
    assert cod_pretrain(*args, f"train.max_steps={stopped_at + 2}") == 0
    out = capsys.readouterr().out
    assert "final eval" in out and "perplexity" in out
    steps = [r["step"] for r in metric_rows(run_dir) if "loss" in r]
    assert steps[-2:] == [stopped_at + 1, stopped_at + 2]
    assert any("eval_ppl" in r for r in metric_rows(run_dir))
    hf = run_dir / "hf"
    assert (hf / "config.json").exists() and (hf / "tokenizer.json").exists()

    monkeypatch.setattr(sys, "argv", ["cod-export", f"checkpoint={run_dir}", f"out={tmp_path / 'exp'}"])
    export.main()
    exported, final = load_file(str(tmp_path / "exp" / "model.safetensors")), load_file(str(hf / "model.safetensors"))
    assert set(exported) == set(final) and all(torch.equal(exported[k], final[k]) for k in final)
    assert (tmp_path / "exp" / "tokenizer.json").exists()


def test_deepspeed_launcher_local_rank_is_consumed(monkeypatch):
    from cod_train.runs.app import prepare_argv

    monkeypatch.setenv("LOCAL_RANK", "")  # records the original state, so teardown undoes prepare_argv's export
    monkeypatch.delenv("LOCAL_RANK")
    argv = prepare_argv(["cod-pretrain", "--local_rank=3", "train.lr=1e-3", "hydra.run.dir=x"])
    assert "--local_rank=3" not in argv and "train.lr=1e-3" in argv
    assert "hydra.run.dir=x" in argv and "hydra.run.dir=." not in argv
    assert os.environ["LOCAL_RANK"] == "3"
    argv = prepare_argv(["cod-pretrain", "-m", "train.lr=1e-3,2e-3"])
    assert argv[:2] == ["cod-pretrain", "-m"] and argv[-1] == "train.lr=1e-3,2e-3"


def test_ctrl_c_saves_a_checkpoint_and_exits_130(monkeypatch, capsys, tmp_path):
    """Ctrl-C during training saves like SIGTERM, then exits 130 (so that `cod-pretrain && cod-sft` stops there),
    without a KeyboardInterrupt traceback. (A real Ctrl-C to a process group: tests/cli/test_sweep.py.)"""
    def ctrl_c_in_step_1(model, step, batch):
        if step == 1:
            signal.raise_signal(signal.SIGINT)
        return {}

    monkeypatch.setattr("cod_train.runs.pretrain.diagnostics_for", lambda cfg: ctrl_c_in_step_1)
    run_dir = tmp_path / "run"
    assert cod_pretrain(f"run_dir={run_dir}", *TINY, "train.diag_every=1", "train.ckpt_every=0",
                 "train.eval_every=0", "train.max_steps=5") == 130
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert [r["step"] for r in metric_rows(run_dir) if "loss" in r] == [1]
    assert (run_dir / "checkpoints" / "step_0000001" / "meta.json").is_file()
    assert "stopped: sigint at step 1" in out


def test_ctrl_c_outside_the_training_loop_is_one_line_and_exit_130(monkeypatch, capsys, tmp_path):
    """Ctrl-C while the data or the model is being prepared (nothing to save yet): no traceback."""
    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr("cod_train.runs.pretrain.pretrain", interrupted)
    assert cod_pretrain(f"run_dir={tmp_path / 'run'}") == 130
    assert capsys.readouterr().err.splitlines() == [
        "interrupted (Ctrl-C): stopped at once; what was already written (checkpoints, results) is kept"]
