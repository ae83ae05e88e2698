"""DenseFormer (dilated) with value residuals end to end: cod-pretrain resumes bit-exactly, cod-analyze runs every
depth diagnostic on it (with the DenseFormer weight matrix in its JSON), cod-report labels it by its scheme."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cod_train.eval.depth_registry import DIAG_FILES, NAMES
from tests.helpers.cli import scheme_lifecycle

SCHEME = ["model.residual=denseformer", "model.denseformer_dilation=2", "model.value_residual=true",
          "train.eval_every=0", "train.ckpt_every=2", "train.keep_last=0", "train.diag_every=2"]
LABEL = "pre_ln+denseformer2x1+vres"
pytestmark = pytest.mark.slow



def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("denseformer")
    scheme_lifecycle(root, *SCHEME)
    return root


def test_resume_is_exact_and_the_weights_are_logged(runs: Path) -> None:
    def losses(name: str) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in _rows(runs / name) if "loss" in r}

    assert sorted(losses("straight")) == [1, 2, 3, 4] and losses("straight") == losses("resumed")
    diag = [r for r in _rows(runs / "straight") if "diag/denseformer_dwa.self" in r]
    layers = json.loads((runs / "straight" / "hf" / "config.json").read_text())["num_hidden_layers"]
    for key in ("diag/denseformer_dwa.self", "diag/self_attn.value_mix.lambda_first"):
        values = diag[-1][key]
        assert len(values) == layers and all(v is None or math.isfinite(v) for v in values), key
    assert diag[-1]["diag/denseformer_dwa.self"][0] != 1.0  # trained off the identity init


def test_every_diagnostic_runs(runs: Path) -> None:
    for name in (*NAMES, "depth_summary"):
        stem = DIAG_FILES.get(name, name)
        model = json.loads((runs / "straight" / "analysis" / f"{stem}.json").read_text())["models"][0]
        assert model["scheme"] == LABEL, name
        if name in DIAG_FILES:
            assert (runs / "straight" / "analysis" / f"{stem}.png").is_file(), name
    variance = json.loads((runs / "straight" / "analysis" / f"{DIAG_FILES['variance']}.json").read_text())
    weights = variance["models"][0]["denseformer_weights"]
    assert [row is None or len(row) == depth + 2 for depth, row in enumerate(weights)] == [True] * len(weights)


def test_cod_report_labels_the_scheme(runs: Path) -> None:
    rows = json.loads((runs / "report" / "report.json").read_text())["runs"]
    assert [r["run"] for r in rows] == [LABEL]
