"""The scheme registry's acceptance test: a placement and a residual scheme defined only in tests/helpers/toy_schemes.py
(registered through COD_TRAIN_PLUGINS, no edit to cod_train) pretrain, resume exactly, analyze with every diagnostic,
export as remote code that a Python without cod_train loads (same logits), and are labelled in cod-report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cod_train.eval.depth_registry import DIAG_FILES, NAMES
from cod_train.model import zoo
from tests.export.conftest import load_isolated, rel_diff
from tests.helpers.cli import scheme_lifecycle

PLUGIN = "tests.helpers.toy_schemes"
SCHEME = ["model.norm_type=toy_parallel", "model.residual=toy_gate", "train.eval_every=0", "train.ckpt_every=2",
          "train.keep_last=0", "train.diag_every=2", "model.initializer_range=0.2"]



def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plugin")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COD_TRAIN_PLUGINS", PLUGIN)
        scheme_lifecycle(root, *SCHEME, export_format="remote_code")
    yield root
    zoo.PLACEMENTS.pop("toy_parallel", None)  # the other tests of this process see cod_train's schemes only
    zoo.RESIDUALS.pop("toy_gate", None)
    zoo._loaded.discard(PLUGIN)


@pytest.mark.slow
def test_a_scheme_from_outside_cod_train_trains_and_resumes_exactly(runs: Path) -> None:
    config = json.loads((runs / "straight" / "hf" / "config.json").read_text())
    assert (config["norm_type"], config["residual"]) == ("toy_parallel", "toy_gate")
    straight, resumed = _losses(runs / "straight"), _losses(runs / "resumed")
    assert sorted(straight) == [1, 2, 3, 4] and straight == resumed  # bit-exact through the resume at step 2
    diag = [json.loads(line) for line in (runs / "straight" / "metrics.jsonl").read_text().splitlines()]
    logged = [r["diag/toy_gate"] for r in diag if "diag/toy_gate" in r]  # the plugin's learned scalar, per layer
    assert logged and all(len(v) == 2 and all(math.isfinite(x) for x in v) for v in logged)
    assert any(abs(x) > 0 for x in logged[-1])  # trained off its init (0)


@pytest.mark.slow
def test_every_diagnostic_runs_on_the_plugin_scheme(runs: Path) -> None:
    for name in (*NAMES, "depth_summary"):
        stem = DIAG_FILES.get(name, name)
        model = json.loads((runs / "straight" / "analysis" / f"{stem}.json").read_text())["models"][0]
        assert model["scheme"] == "toy_parallel+toy_gate" and model["num_layers"] == 2, name
        if name in DIAG_FILES:
            assert (runs / "straight" / "analysis" / f"{stem}.png").is_file(), name
    variance = json.loads((runs / "straight" / "analysis" / f"{DIAG_FILES['variance']}.json").read_text())
    assert len(variance["models"][0]["learned_scalars"]["toy_gate"]) == 2
    figure = runs / "straight" / "analysis" / "toy_gates.png"  # the plugin's own figure (`Residual.figures`)
    assert figure.read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_the_remote_code_export_loads_without_cod_train(runs: Path, tmp_path: Path) -> None:
    ids = torch.tensor([[5, 17, 3, 44, 9, 81, 23, 60], [70, 1, 33, 8, 52, 19, 4, 90]])
    source = (runs / "export" / "modeling_cod_llama.py").read_text()
    assert "class ToyGateResidual" in source and "class ToyParallel" in source
    result = load_isolated([{"dir": str(runs / "export"), "ids": ids, "new": 4}], tmp_path)["jobs"][0]
    assert "error" not in result, result.get("error")
    from transformers import AutoModelForCausalLM

    from cod_train.model import register

    register()
    mine = AutoModelForCausalLM.from_pretrained(runs / "export", dtype=torch.float32).eval()
    with torch.no_grad():
        want = mine(input_ids=ids).logits
    assert rel_diff(result["logits"], want) <= 1e-6


@pytest.mark.slow
def test_cod_report_labels_the_plugin_scheme(runs: Path) -> None:
    rows = json.loads((runs / "report" / "report.json").read_text())["runs"]
    assert [r["run"] for r in rows] == ["toy_parallel+toy_gate"]
