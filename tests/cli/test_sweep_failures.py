"""A training command's failure is recorded in its run directory (failed.json); in a local -m sweep it does not stop
the later jobs. run_job is called as Hydra's launcher calls the command's function, without training."""

from __future__ import annotations

import json
import signal
import sys

import pytest
from omegaconf import OmegaConf

from cod_train.core.errors import ConfigError, RunError
from cod_train.runs import app


class Cfg:  # the schema: to_typed only needs a dataclass-free target here
    pass


@pytest.fixture
def job(tmp_path, monkeypatch):
    """A job's raw config and the switch making it one of a local sweep's jobs (job 3 of tmp_path/sweep)."""
    monkeypatch.setattr(app, "to_typed", lambda raw, schema: raw)
    monkeypatch.setattr(app, "FAILED_JOBS", [])
    raw = OmegaConf.create({"run_dir": str(tmp_path / "3_norm-lns"), "seed": 7})

    def in_sweep(on: bool) -> None:
        monkeypatch.setattr(app, "local_sweep_job", lambda: (str(tmp_path), 3) if on else None)

    return raw, in_sweep


def _raises(err: BaseException):
    def fn(cfg):
        raise err

    return fn


def _marker(raw) -> dict:
    return json.loads((app.Path(raw.run_dir) / "failed.json").read_text())


def test_a_failed_sweep_job_is_recorded_and_the_sweep_goes_on(job, capsys):
    raw, in_sweep = job
    in_sweep(True)
    assert app.run_job(_raises(RunError("the data ran out")), raw, Cfg, "pretrain") == 0  # the next job starts
    marker = _marker(raw)
    assert (marker["exit_code"], marker["error"], marker["job"], marker["command"]) == (1, "the data ran out", 3,
                                                                                       "pretrain")  # fmt: skip
    assert marker["config"] == {"run_dir": raw.run_dir, "seed": 7}  # cod-report labels the run from it
    assert app.FAILED_JOBS == [f"{raw.run_dir} (exit 1)"]
    assert "error: the data ran out" in capsys.readouterr().err


def test_a_configuration_error_and_a_crash_in_a_sweep_are_recorded(job):
    raw, in_sweep = job
    in_sweep(True)
    assert app.run_job(_raises(ConfigError("train.lr must be > 0")), raw, Cfg, "pretrain") == 0
    assert (_marker(raw)["exit_code"], _marker(raw)["error"]) == (2, "train.lr must be > 0")
    assert app.run_job(_raises(RuntimeError("CUDA out of memory")), raw, Cfg, "pretrain") == 0
    assert (_marker(raw)["exit_code"], _marker(raw)["error"]) == (1, "RuntimeError: CUDA out of memory")
    assert app.run_job(lambda cfg: 3, raw, Cfg, "pretrain") == 0  # non-finite losses: exit code 3
    assert _marker(raw)["exit_code"] == 3 and len(app.FAILED_JOBS) == 3


def test_a_signal_still_stops_the_sweep_and_is_no_failure(job):
    raw, in_sweep = job
    in_sweep(True)
    code = 128 + signal.SIGTERM
    assert app.run_job(lambda cfg: code, raw, Cfg, "pretrain") == code  # main() exits with it: no later job
    assert not (app.Path(raw.run_dir) / "failed.json").exists() and app.FAILED_JOBS == []


def test_single_runs(job):
    raw, in_sweep = job
    in_sweep(False)
    assert app.run_job(_raises(ConfigError("bad")), raw, Cfg, "pretrain") == 2  # nothing ran: nothing written
    assert not (app.Path(raw.run_dir) / "failed.json").exists()
    assert app.run_job(_raises(RunError("disk full")), raw, Cfg, "pretrain") == 1
    assert _marker(raw)["error"] == "disk full"
    assert app.run_job(lambda cfg: 0, raw, Cfg, "pretrain") == 0  # a later successful run clears the marker
    assert not (app.Path(raw.run_dir) / "failed.json").exists()
    with pytest.raises(RuntimeError):  # outside a sweep, a crash keeps its traceback
        app.run_job(_raises(RuntimeError("boom")), raw, Cfg, "pretrain")
    assert _marker(raw)["error"] == "RuntimeError: boom"
    assert app.run_job(_raises(RunError("x")), raw, Cfg, "eval") == 1  # not a training command: no marker
    assert _marker(raw)["error"] == "RuntimeError: boom"


@pytest.mark.slow
def test_a_sweep_with_a_failing_job_runs_the_others_and_the_report_lists_it(tmp_path):
    """cod-pretrain -m train.lr=-1,0.002: job 0 is refused (lr must be > 0), job 1 trains; exit 1 names job 0;
    cod-report on the sweep lists job 0 as failed."""
    import subprocess

    from tests.helpers.cli import TINY
    from tests.helpers.processes import REPO, subprocess_env

    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "cod_train.cli.pretrain", "-m", "train.lr=-1,0.002", *TINY,
                           "train.max_steps=2", "train.eval_every=0", "train.ckpt_every=0", "train.export_hf=false",
                           f"hydra.sweep.dir={sweep}"], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    job0, job1 = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert json.loads((job0 / "failed.json").read_text())["exit_code"] == 2
    assert not (job1 / "failed.json").exists() and (job1 / "metrics.jsonl").is_file()
    assert f"error: 1 job(s) of the sweep failed (each run directory holds failed.json): {job0} (exit 2)" in proc.stderr
    report = subprocess.run([sys.executable, "-m", "cod_train.cli.report", f"runs=[{sweep}]", f"out={tmp_path / 'r'}"],
                            cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    assert "(failed: pre_ln lr=-1)" in report.stdout
    assert "- **pre_ln lr=-1**: **failed (pretrain, exit 2)**: train.lr must be" in (tmp_path / "r" / "report.md").read_text()
