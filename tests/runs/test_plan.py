"""cod-plan against what it plans: the static memory against a count by hand, the peak and the collective bytes
against real gloo runs (tests/runs/plan_driver.py), bad input as one error line."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import one_error_line, run_command
from tests.helpers.plan import PRESETS, SMALL_RUN, plan_config
from tests.helpers.processes import run_checked, torchrun

DRIVER = str(Path(__file__).with_name("plan_driver.py"))


def cpu_plan(model: str, engine: str, world: int):
    """cod-plan's step of the run the driver measures (on the CPU, so no GPU loss-chunk choice)."""
    from cod_train.runs.plan import plan_micro_batch, planned_vocab

    cfg = plan_config(model, engine)
    return plan_micro_batch(cfg, world, cfg.train.micro_batch_size, planned_vocab(cfg))


def hand_count(model: str, engine: str, world: int) -> tuple[int, int, int]:
    """(parameter, gradient, optimizer-state) bytes per rank: fp32 weights; FSDP2 keeps ceil(rows / world) rows of
    each weight per rank (dim 0, padded); fused AdamW two moments per weight and a 4-byte step per tensor."""
    import torch

    from cod_train.model import build_model
    from cod_train.runs.plan import planned_vocab

    cfg = plan_config(model, engine)
    with torch.device("meta"):
        params = list(build_model(cfg.model, planned_vocab(cfg)).parameters())
    rows = (lambda p: math.ceil(p.shape[0] / world)) if engine == "fsdp" else (lambda p: p.shape[0])
    weights = sum(4 * rows(p) * (p.numel() // p.shape[0]) for p in params)
    return weights, weights, 2 * weights + 4 * len(params)


@pytest.mark.parametrize("model,engine,world", [("tiny", "single", 1), ("tiny", "fsdp", 2), ("60m", "ddp", 2),
                                                ("60m", "fsdp", 2)])
def test_static_memory_is_the_count_by_hand(model, engine, world):
    memory = cpu_plan(model, engine, world).memory
    assert (memory.params, memory.grads, memory.optimizer) == hand_count(model, engine, world)


def measured(engines: list[str], world: int) -> dict[str, dict]:
    specs = [f"{m}:{e}" for m in PRESETS for e in engines]
    out = torchrun(DRIVER, *specs, nproc=world, timeout=600).stdout if world > 1 else \
        run_checked([sys.executable, DRIVER, *specs], timeout=600).stdout
    rows = [json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("MEASURED ")]
    return {row["spec"]: row for row in rows}


def assert_plan_matches(got: dict, model: str, engine: str, world: int) -> None:
    plan = cpu_plan(model, engine, world)
    assert abs(plan.memory.peak - got["peak"]) <= 0.15 * got["peak"], (model, engine, plan.memory, got)
    for kind in ("all_gather", "reduce_scatter", "all_reduce"):
        assert plan.comm.payload[kind] == got.get(kind, 0), (model, engine, kind, plan.comm, got)


@pytest.mark.slow
def test_plan_within_15_percent_of_one_process():
    runs = measured(["single"], 1)
    for model in PRESETS:
        assert_plan_matches(runs[f"{model}:single"], model, "single", 1)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_plan_within_15_percent_of_two_gloo_processes(engine):
    runs = measured([engine], 2)
    for model in PRESETS:
        assert_plan_matches(runs[f"{model}:{engine}"], model, engine, 2)


def cod_plan_stderr(capsys, *args: str) -> tuple[int, str]:
    from cod_train.cli import plan

    capsys.readouterr()
    code = run_command(plan.main, "cod-plan", *args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args,words", [
    (["distributed=ddp", "plan.world_size=3"], "multiple of the 3"),
    (["plan.gpu=v100"], "unknown plan.gpu 'v100'"),
    (["plan.gpu=custom"], "plan.gpu_memory_gb"),
    (["distributed=single", "plan.world_size=2"], "runs one process"),
    (["distributed=fsdp", "plan.world_size=4", "distributed.hsdp_replicas=3"], "hsdp_replicas=3"),
])
def test_bad_input_is_one_error_line(capsys, tmp_path, args, words):
    code, err = cod_plan_stderr(capsys, f"run_dir={tmp_path}", *args)
    assert code == 2 and words in one_error_line(err)


def test_cod_plan_prints_the_table_and_writes_plan_json(capsys, tmp_path):
    from cod_train.cli import plan

    code = run_command(plan.main, "cod-plan", f"run_dir={tmp_path}", "distributed=fsdp", "plan.world_size=2",
                       "plan.gpu=custom", "plan.gpu_memory_gb=1", "plan.peak_tflops=100", "plan.mfu=0.5",
                       "plan.reserve_gb=0", "train.max_steps=10", *SMALL_RUN)
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert code == 0 and saved["fits"] and saved["verdict"] in out and "fits: peak" in out
    # time: FLOPs per step from the model's own count, at 100 TFLOP/s x 2 GPUs x 50 %
    assert saved["step_seconds"] == pytest.approx(saved["flops_per_step"] / (2 * 100e12 * 0.5))
    # the rank's share is 4 rows: every divisor fits in 1 GiB at this size
    assert saved["largest_micro_batch"] == 4
    assert saved["memory_bytes"]["peak"] <= 2**30


def test_does_not_fit_names_the_shortfall(capsys, tmp_path):
    from cod_train.cli import plan

    code = run_command(plan.main, "cod-plan", f"run_dir={tmp_path}", "plan.gpu=custom", "plan.gpu_memory_gb=0.05",
                       "plan.peak_tflops=100", "plan.reserve_gb=0", "plan.search=false", *SMALL_RUN)
    saved = json.loads((tmp_path / "plan.json").read_text())
    short = saved["memory_bytes"]["peak"] / 2**30 - 0.05
    assert code == 0 and not saved["fits"]
    assert f"does not fit, by {short:.1f} GiB" in capsys.readouterr().out


def test_pretrain_check_is_skipped_without_a_gpu(monkeypatch):
    """On the CPU the check must not plan: cod_train.runs.plan is not even imported."""
    import torch

    from cod_train.runs.pretrain import check_memory_first

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delitem(sys.modules, "cod_train.runs.plan", raising=False)
    check_memory_first(plan_config("tiny", "single"))
    assert "cod_train.runs.plan" not in sys.modules


@pytest.mark.parametrize("check,gib,warns", [(True, 0.05, True), (True, 64, False), (False, 0.05, False)])
def test_pretrain_check_on_a_gpu_warns_with_the_plans_numbers(monkeypatch, caplog, check, gib, warns):
    """A GPU of ``gib`` GiB (faked: properties only): the tiny run's planned peak (~0.1 GiB) does not fit in
    0.05 GiB, fits in 64; plan.check=false plans nothing."""
    import types

    import torch

    from cod_train.runs.pretrain import check_memory_first

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: types.SimpleNamespace(total_memory=int(gib * 2**30)))
    cfg = plan_config("tiny", "single", f"plan.check={str(check).lower()}", "plan.reserve_gb=0")
    with caplog.at_level("WARNING", logger="cod_train"):
        check_memory_first(cfg)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if not warns:
        assert warnings == []
        return
    assert len(warnings) == 1 and "does not fit, by" in warnings[0] and "plan.check=false" in warnings[0]
    from cod_train.runs.plan import make_plan

    peak = make_plan(cfg, 1, search=False).step.memory.peak / 2**30
    usable = int(gib * 2**30) / 2**30
    assert f"peak {peak:.1f} GiB per GPU of {usable:.1f} GiB usable" in warnings[0]


@pytest.mark.parametrize("limit,want", [(35, 32), (100, 64), (10.5, 4), (10.0, 0)])
def test_largest_micro_batch_search_walks_past_the_line(monkeypatch, limit, want):
    """A peak that grows faster than linearly (10 + m^2 / 50 GiB): the line through m=4 and m=64 says 16 is the
    largest under 35 GiB, the search still finds 32 (30.5 GiB); 64 fits 100 GiB; only 4 fits 10.5; nothing fits 10."""
    import types

    from cod_train.runs import plan

    def fake_plan(cfg, world, m, vocab):
        return types.SimpleNamespace(micro_batch=m, memory=types.SimpleNamespace(peak=(10 + m * m / 50) * 2**30))

    monkeypatch.setattr(plan, "plan_micro_batch", fake_plan)
    cfg = plan_config("tiny", "fsdp", "train.global_batch_size=512")
    best, peak = plan.largest_fitting(cfg, 8, 8192, fake_plan(cfg, 8, 4, 8192), limit)
    assert best == want and (peak is None if want == 0 else peak == (10 + want * want / 50) * 2**30)
