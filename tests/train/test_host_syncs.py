"""Between logging steps the loop reads nothing computed by the model back to the host.

On a GPU such a read (``.item()``, ``float()``, ``bool()``, ``.tolist()``) blocks the host until the device has
run everything queued so far. On CPU there is no queue, so the test counts the reads themselves: every read of
a floating-point or boolean tensor (model outputs, losses, norms, finiteness flags) is recorded with the step
and the phase it happened in. Reads of integer tensors (token counts from the host copy of the labels) and of
float64 ones (the host-side all-reduce of counts and flags) are not device values and are not counted.
"""

from __future__ import annotations

import pytest
import torch

from cod_train.train import loop
from tests.helpers.engine_run import run
from tests.helpers.run_dirs import metric_rows

DEVICE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.bool)
READS = ("item", "tolist", "__float__", "__bool__", "__int__")


@pytest.fixture
def reads(monkeypatch):
    """[(phase, step), ...] of every device-valued host read while the loop runs."""
    where: dict[str, object] = {"phase": "setup", "step": 0}
    seen: list[tuple[str, int]] = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            if self.dtype in DEVICE_DTYPES:
                seen.append((str(where["phase"]), int(where["step"])))  # type: ignore[call-overload]
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    for phase in ("step", "after_step"):
        original = getattr(loop.Trainer, phase)

        def tracked(self, *args, _original=original, _phase=phase, **kwargs):
            where["phase"], where["step"] = _phase, self.state.step + (1 if _phase == "step" else 0)
            try:
                return _original(self, *args, **kwargs)
            finally:
                where["phase"] = "loop"

        monkeypatch.setattr(loop.Trainer, phase, tracked)
    return seen


def test_no_host_read_between_logging_steps(tmp_path, reads):
    run(f"run_dir={tmp_path}", "train.max_steps=9", "train.log_every=4", "train.ckpt_every=0")
    in_step = [r for r in reads if r[0] == "step"]
    assert in_step == [], f"host reads inside the optimizer step: {in_step[:5]}"
    read_steps = sorted({step for phase, step in reads if phase == "after_step"})
    assert read_steps == [1, 4, 8, 9]  # step 1, every 4th, the last
    # one transfer per logging step (the stacked statistics)
    assert [sum(1 for r in reads if r == ("after_step", s)) for s in read_steps] == [1, 1, 1, 1]


def test_nonfinite_run_between_logging_steps_stops_at_the_next_read(tmp_path):
    """Three NaN steps (4-6) with logging every 8 steps: each is skipped on the device, and the run of three
    is found at the next read (step 8, also a checkpoint step) and stops before saving it."""
    from tests.helpers.engine_run import tiny_config  # noqa: F401  (documents where the overrides apply)

    result = run(f"run_dir={tmp_path}", "nan_steps=4,5,6", "train.max_steps=20", "train.log_every=8",
                 "train.ckpt_every=3", "train.max_nonfinite_in_a_row=3")
    assert result.stopped == "nonfinite" and result.step == 6
    rows = [r for r in metric_rows(tmp_path) if "loss" in r]
    assert rows[-1]["step"] == 6 and rows[-1]["nonfinite_skipped"] == 3 and rows[-1]["skipped"] is True
