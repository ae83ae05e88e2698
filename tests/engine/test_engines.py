"""DDP, FSDP2 and DeepSpeed ZeRO-1/2/3 with 2 processes (gloo, CPU) against the single-process run.

Each engine: same loss as ``single`` at every step (fp32, relative diff < 1e-4), checkpoints written,
resumed on ONE process from step 3 (another world size) with the same later losses, exported to HF.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cod_train.engine.checkpoint import list_checkpoints, read_meta
from cod_train.engine.export import export_checkpoint
from tests.helpers.engine_run import run
from tests.helpers.processes import REPO, TORCHRUN, free_port, subprocess_env, torchrun
from tests.helpers.run_dirs import losses

DRIVER = str(Path(__file__).with_name("tiny.py"))
RTOL = 1e-4
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict[int, float], dict[str, torch.Tensor]]:
    """The single-process run: per-step losses and its exported weights."""
    out = tmp_path_factory.mktemp("single")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(f"run_dir={out}", "train.export_hf=true")
    finally:
        torch.set_num_threads(threads)
    return losses(out), load_file(str(out / "hf" / "model.safetensors"))


def assert_same_losses(got: dict[int, float], want: dict[int, float], steps) -> None:
    for step in steps:
        assert abs(got[step] - want[step]) <= RTOL * abs(want[step]), (step, got[step], want[step])


def assert_export_matches(ckpt: Path, out: Path, want: dict[str, torch.Tensor]) -> None:
    export_checkpoint(ckpt, out)
    got = load_file(str(out / "model.safetensors"))
    assert set(got) == set(want)
    for key, tensor in want.items():
        torch.testing.assert_close(got[key].float(), tensor.float(), rtol=1e-3, atol=1e-4)


def nonfinite_reference(tmp: Path) -> dict[int, float]:
    """Single-process losses with a NaN loss injected at step 2 (skipped)."""
    run(f"run_dir={tmp / 'single-nan'}", "nan_steps=2")
    return losses(tmp / "single-nan")


def check_engine_runs(tmp: Path, specs: dict[str, str], reference, nan_spec: str) -> None:
    """Train each spec with 2 processes, resume each from step 3 on 1 process, export each; ``nan_spec``
    (trained in the same launch) must skip a NaN step exactly as ``single`` does."""
    want_losses, want_weights = reference
    runs = [f"run_dir={tmp / name} {spec}" for name, spec in specs.items()]
    torchrun(DRIVER, *runs, f"run_dir={tmp / 'nan'} {nan_spec} nan_steps=2", nproc=2)
    got_nan, want_nan = losses(tmp / "nan"), nonfinite_reference(tmp)
    assert isinstance(got_nan[2], str) and got_nan[2].lower() == "nan"  # logged, skipped
    assert_same_losses(got_nan, want_nan, [1, 3, 4, 5, 6])
    for name in specs:
        assert_same_losses(losses(tmp / name), want_losses, range(1, 7))
        ckpts = list_checkpoints(tmp / name / "checkpoints")
        assert [p.name for p in ckpts] == ["step_0000003", "step_0000006"]
        assert read_meta(ckpts[-1])["world_size"] == 2
    resume = [f"run_dir={tmp / name}-r1 {spec} resume={tmp / name}/checkpoints/step_0000003"
              for name, spec in specs.items()]
    torchrun(DRIVER, *resume, nproc=1)
    for name in specs:
        assert sorted(losses(tmp / f"{name}-r1")) == [4, 5, 6]
        assert_same_losses(losses(tmp / f"{name}-r1"), want_losses, range(4, 7))
        assert_export_matches(tmp / name / "checkpoints" / "step_0000006", tmp / f"{name}-hf", want_weights)


def test_ddp_and_fsdp(tmp_path, reference):
    check_engine_runs(tmp_path, {"ddp": "distributed.engine=ddp", "fsdp": "distributed.engine=fsdp"}, reference,
                      nan_spec="distributed.engine=fsdp")


def test_deepspeed_zero_1_2_3_and_offload(tmp_path, reference):
    specs = {f"zero{s}": f"distributed.engine=deepspeed distributed.zero_stage={s}" for s in (1, 2, 3)}
    specs["zero2-offload"] = "distributed.engine=deepspeed distributed.zero_stage=2 distributed.offload_optimizer=true"
    check_engine_runs(tmp_path, specs, reference, nan_spec="distributed.engine=deepspeed distributed.zero_stage=3")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_two_node_launch_and_sigterm_on_one_rank(tmp_path, reference):
    """Two torchrun invocations (--nnodes 2, node_rank 0/1) rendezvous on localhost and train with DDP; a
    SIGTERM to one worker (as srun delivers it) stops BOTH ranks at the same step with a checkpoint, exit 0."""
    run_dir = tmp_path / "run"
    port = free_port()
    spec = f"run_dir={run_dir} distributed.engine=ddp train.max_steps=1000 train.ckpt_every=0"
    cmds = [[*TORCHRUN, "--nnodes=2", "--nproc_per_node=1", f"--node_rank={rank}", "--master_addr=127.0.0.1",
             f"--master_port={port}", DRIVER, spec] for rank in (0, 1)]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(TINY_STEP_SLEEP="0.3"), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for cmd in cmds]
    deadline = time.time() + 240
    while time.time() < deadline and all(p.poll() is None for p in procs) and len(losses_or_empty(run_dir)) < 3:
        time.sleep(0.1)
    workers = _children(procs[1].pid)
    assert workers, "node 1 has no worker process"
    os.kill(workers[0], signal.SIGTERM)
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert all("RESULT sigterm" in out for out in outputs)
    got = losses(run_dir)
    stopped = max(got)
    assert 3 <= stopped < 1000
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == [f"step_{stopped:07d}"]
    assert_same_losses(got, reference[0], range(1, min(stopped, 6) + 1))


def losses_or_empty(run_dir: Path) -> dict[int, float]:
    try:
        return losses(run_dir)
    except (OSError, ValueError):
        return {}


def test_fsdp2_bf16_mixed_gets_the_exact_loss_divisor():
    """A root casting floating-point tensor arguments to bf16 would turn 6250 into 6240: under bf16-mixed FSDP2's
    root keeps fp32 (autocast computes in bf16), and the loop passes a Python float anyway."""
    out = torchrun(str(Path(__file__).with_name("fsdp_divisor.py")), nproc=1).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("SEEN"))
    assert line == "SEEN [6250.0, 6250.0] ['Tensor', 'float']"


GRAD_SYNC = str(Path(__file__).with_name("grad_sync.py"))


def collective_counts(stdout: str) -> dict[str, dict]:
    """The ``COUNTS`` lines of ``grad_sync.py``, by run name."""
    import json

    rows = [json.loads(ln[7:]) for ln in stdout.splitlines() if ln.startswith("COUNTS ")]
    return {row.pop("run"): row for row in rows}


def assert_same_weights(a: Path, b: Path) -> None:
    got, want = load_file(str(a / "hf" / "model.safetensors")), load_file(str(b / "hf" / "model.safetensors"))
    assert set(got) == set(want)
    for key, tensor in want.items():
        torch.testing.assert_close(got[key], tensor, rtol=1e-4, atol=1e-5, msg=key)


def test_fsdp_reduce_scatters_once_per_step_under_accumulation(tmp_path, reference):
    """4 micro-batches per step: with gradient-sync skipping (default) one reduce-scatter per FSDP unit per
    step (not one per micro-batch), and the same losses and weights as without skipping and as 1 micro-batch."""
    base = "distributed.engine=fsdp train.export_hf=true train.ckpt_every=0"
    specs = {"skip": "train.micro_batch_size=1",  # global 8 / 2 ranks = 4 rows per rank: 4 micro-batches
             "nosync": "train.micro_batch_size=1 distributed.fsdp_skip_grad_sync=false",
             "one": "train.micro_batch_size=4"}
    out = torchrun(GRAD_SYNC, *(f"run_dir={tmp_path / n} {base} {s}" for n, s in specs.items()), nproc=2).stdout
    counts = collective_counts(out)
    units = counts["skip"]["units"]
    assert units == 3  # 2 decoder blocks + the root
    assert counts["skip"]["reduce_scatter"] == [units] * 6
    assert counts["nosync"]["reduce_scatter"] == [4 * units] * 6
    assert counts["one"]["reduce_scatter"] == [units] * 6
    # parameters: each block all-gathers in forward and again in backward (resharded after forward); the root
    # (embedding, final norm, lm_head) once, kept unsharded from its forward into the backward
    assert counts["one"]["all_gather"] == [2 * 2 + 1] * 6
    assert counts["skip"]["all_gather"] == [4 * (2 * 2 + 1)] * 6
    for name in specs:
        assert_same_losses(losses(tmp_path / name), reference[0], range(1, 7))
    assert_same_weights(tmp_path / "skip", tmp_path / "nosync")
    assert_same_weights(tmp_path / "skip", tmp_path / "one")
    assert_export_matches(tmp_path / "skip" / "checkpoints" / "step_0000006", tmp_path / "skip-hf", reference[1])


def test_hsdp_trains_checkpoints_and_resumes(tmp_path, reference):
    """hsdp_replicas=2 on 2 processes (a (2, 1) mesh: replicated, gradients all-reduced once per step): the
    single-process losses; its DCP checkpoint resumes as HSDP on 2 processes and as plain FSDP on 1."""
    hsdp = "distributed.engine=fsdp distributed.hsdp_replicas=2 train.micro_batch_size=1"
    step3 = tmp_path / "hsdp" / "checkpoints" / "step_0000003"
    out = torchrun(GRAD_SYNC, f"run_dir={tmp_path / 'hsdp'} {hsdp}",
                   f"run_dir={tmp_path / 'hsdp-r2'} {hsdp} resume={step3}", nproc=2).stdout
    counts = collective_counts(out)
    assert counts["hsdp"]["hsdp_all_reduce"] == [counts["hsdp"]["units"]] * 6  # once per unit per step
    assert [p.name for p in list_checkpoints(tmp_path / "hsdp" / "checkpoints")] == ["step_0000003", "step_0000006"]
    assert_same_losses(losses(tmp_path / "hsdp"), reference[0], range(1, 7))
    torchrun(DRIVER, f"run_dir={tmp_path / 'fsdp-r1'} distributed.engine=fsdp resume={step3}", nproc=1)
    for resumed in ("hsdp-r2", "fsdp-r1"):
        assert sorted(losses(tmp_path / resumed)) == [4, 5, 6]
        assert_same_losses(losses(tmp_path / resumed), reference[0], range(4, 7))
    assert_export_matches(tmp_path / "hsdp" / "checkpoints" / "step_0000006", tmp_path / "hsdp-hf", reference[1])


def test_a_full_disk_on_one_rank_stops_every_rank_without_a_partial_checkpoint(tmp_path):
    """Rank 1 of 2 (DDP) cannot write its part of the step-6 checkpoint: both ranks agree and stop with the
    same error instead of hanging in the next collective; step 3 stays the latest, nothing half-written."""
    run_dir = tmp_path / "run"
    cmd = [*TORCHRUN, "--standalone", "--nproc_per_node=2", DRIVER,
           f"run_dir={run_dir} distributed.engine=ddp train.max_steps=8 train.ckpt_every=3 train.keep_last=0"]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(TINY_ENOSPC="1:step_0000006"), capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode != 0
    assert proc.stderr.count("could not write checkpoint") >= 2  # raised on both ranks
    assert "No space left on device" in proc.stderr and "step_0000003" in proc.stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_0000003"]


def test_fsdp_diagnostics_do_not_change_training(tmp_path):
    """The in-training diagnostics run a forward between backward and the optimizer step. Under FSDP2 a unit
    that is not resharded after forward (the root always; every unit with reshard_after_forward=false) would
    keep that forward's gathered weights past the step and compute the next step with the old ones: the losses
    with diagnostics every 2 steps must equal those without, exactly."""
    zoo = str(Path(__file__).with_name("zoo_driver.py"))
    base = "distributed.engine=fsdp train.ckpt_every=0"
    runs = {"off": "train.diag_every=0", "on": "train.diag_every=2",
            "on-noreshard": "train.diag_every=2 distributed.reshard_after_forward=false"}
    torchrun(zoo, *(f"run_dir={tmp_path / name} {base} {spec}" for name, spec in runs.items()), nproc=2)
    want = losses(tmp_path / "off")
    for name in ("on", "on-noreshard"):
        assert losses(tmp_path / name) == want, name
