"""The loop's callbacks (train.loop.Callback), driven through cod-pretrain: a callback that renormalizes a
weight after every optimizer step, and on_step_end seeing each step's row once, also across a resume."""

from __future__ import annotations

import pytest
import torch

from cod_train.train.loop import Callback
from tests.helpers.cli import TINY, cod_pretrain
from tests.helpers.run_dirs import metric_rows

RUN = [*TINY, "train.eval_every=0", "train.ckpt_every=0", "train.export_hf=false", "train.eval_tokens=0"]


class UnitRows(Callback):
    """Scales every row of lm_head.weight to unit L2 norm after each optimizer step (an nGPT-style scheme)."""

    def __init__(self) -> None:
        self.model: torch.nn.Module | None = None
        self.grad_enabled: list[bool] = []

    def after_optimizer_step(self, model, step):
        self.model = model
        self.grad_enabled.append(torch.is_grad_enabled())
        weight = model.lm_head.weight
        weight.div_(weight.norm(dim=1, keepdim=True))


class Rows(Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def on_step_end(self, row, step):
        self.seen.append((step, row["step"]))


def _pretrain_with(monkeypatch, callbacks, *args: str) -> int:
    monkeypatch.setattr("cod_train.runs.pretrain.callbacks_for", lambda cfg: callbacks)
    return cod_pretrain(*RUN, *args)


@pytest.mark.slow
def test_a_renormalizing_callback_runs_after_each_step_on_the_plain_model(monkeypatch, tmp_path):
    plain, unit = tmp_path / "plain", tmp_path / "unit"
    assert _pretrain_with(monkeypatch, [], f"run_dir={plain}", "train.max_steps=3") == 0
    callback = UnitRows()
    assert _pretrain_with(monkeypatch, [callback], f"run_dir={unit}", "train.max_steps=3") == 0

    assert callback.grad_enabled == [False, False, False]  # once per step, under no_grad
    norms = callback.model.lm_head.weight.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    losses = {name: [r["loss"] for r in metric_rows(d) if "loss" in r] for name, d in (("plain", plain), ("unit", unit))}
    assert losses["plain"][0] == pytest.approx(losses["unit"][0], rel=1e-6)  # step 1: before any update
    assert all(abs(a - b) > 1e-4 for a, b in zip(losses["plain"][1:], losses["unit"][1:], strict=True))


@pytest.mark.slow
def test_on_step_end_sees_every_step_once_across_a_resume(monkeypatch, tmp_path):
    first, second = Rows(), Rows()
    run_dir = f"run_dir={tmp_path / 'run'}"
    assert _pretrain_with(monkeypatch, [first], run_dir, "train.max_steps=3") == 0
    assert _pretrain_with(monkeypatch, [second], run_dir, "train.max_steps=5") == 0  # resume=auto: from step 3
    assert first.seen == [(1, 1), (2, 2), (3, 3)]
    assert second.seen == [(4, 4), (5, 5)]
