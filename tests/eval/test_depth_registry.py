"""The depth diagnostics as one registry: one capture forward per batch for all of them, the in-training row equal
to cod-analyze's entries, both equal to a plain reference from ``output_hidden_states``, and every list of names
(CLI default, JSON files, figures, report sections, metrics keys) read from the registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cod_train.eval import depth_capture
from cod_train.eval.depth_hooks import close_stream
from cod_train.eval.depth_registry import DIAG_FILES, DIAGNOSTICS, IN_TRAINING, NAMES
from cod_train.eval.depth_train import training_diagnostics
from cod_train.eval.diagnostics import run_diagnostics
from tests.helpers.diagnostics import backward, make_batches, tiny_llama

CAPTURED = [d.name for d in DIAGNOSTICS if d.source == "capture"]


def plain_states(model: nn.Module, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """h_0..h_L from ``output_hidden_states=True``, the final norm swapped out so that the last one is h_L itself
    (transformers gives the normed state there)."""
    norm = model.model.norm
    model.model.norm = nn.Identity()
    try:
        with torch.no_grad():
            hidden = model(input_ids=batch["input_ids"], output_hidden_states=True).hidden_states
    finally:
        model.model.norm = norm
    return [h.double() for h in hidden]


def reference(model: nn.Module, batch: dict[str, torch.Tensor], real: torch.Tensor) -> dict[str, list[float]]:
    """Block Influence, layer variance and logit lens by their definitions (docs/depth.md), over ``real`` tokens."""
    states = plain_states(model, batch)
    n_layers = len(states) - 1
    bi = [float((1 - nn.functional.cosine_similarity(states[i - 1], states[i], dim=-1))[real].mean())
          for i in range(1, n_layers + 1)]  # fmt: skip
    var = [float(h[real].var(unbiased=False)) for h in states[1:]]
    with torch.no_grad():
        logp = [torch.log_softmax(model.lm_head(model.model.norm(h.float())).double(), -1) for h in states]
    final = logp[-1]
    kl = [float((final.exp() * (final - lp)).sum(-1)[real].mean()) for lp in logp]
    top1 = [float((final.argmax(-1) == lp.argmax(-1))[real].double().mean()) for lp in logp]
    settle = next(i for i in range(n_layers + 1) if all(t >= 0.5 for t in top1[i:]))
    return {"diag/bi": bi, "diag/layer_var": var, "diag/lens_kl": kl, "diag/lens_top1": top1,
            "diag/settling_depth": settle / n_layers}  # fmt: skip


def test_one_capture_forward_per_batch_for_every_capture_diagnostic(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_llama()
    batches = make_batches(n=3)
    calls, layer_forwards = [], []
    original = depth_capture.capture_batch
    monkeypatch.setattr(depth_capture, "capture_batch", lambda *a: calls.append(1) or original(*a))
    hook = model.model.layers[0].register_forward_pre_hook(lambda *_: layer_forwards.append(1))
    together = run_diagnostics(model, batches, which=CAPTURED, progress=False)
    hook.remove()
    assert (len(calls), len(layer_forwards)) == (3, 3)  # not 3 per diagnostic
    assert set(together) == set(CAPTURED)
    for name in CAPTURED:  # sharing the forward changes no number
        alone = run_diagnostics(model, batches, which=[name], progress=False)[name]
        assert together[name] == alone


def test_training_row_equals_cod_analyze_and_the_plain_reference() -> None:
    model = tiny_llama().train()
    batch = make_batches(n=1, rows=5)[0]
    batch["labels"][1, 7:] = -100  # a padded row: its padding is excluded everywhere
    backward(model, batch)
    row = training_diagnostics(model, batch, max_rows=3)
    small = {k: v[:3] for k, v in batch.items()}
    analyzed = run_diagnostics(model.eval(), [small], which=[d.name for d in IN_TRAINING], progress=False)
    for diag in IN_TRAINING:
        if diag.source == "gradients":  # training reads the step's .grad (5 rows), cod-analyze backwards its own
            continue
        for key, field in diag.metrics:
            assert row[key] == pytest.approx(analyzed[diag.name][field], rel=1e-9, abs=1e-12), key
    real = torch.arange(12)[None, :] <= torch.tensor([11, 7, 11])[:, None]
    for key, values in reference(model, small, real).items():
        assert row[key] == pytest.approx(values, rel=1e-4, abs=1e-7), key


def test_close_stream_is_the_only_way_eval_reads_the_streams() -> None:
    """A backbone's ``close_stream`` makes the streams one (here: doubling them); transformers' Llama has none."""
    model = tiny_llama()
    x = torch.randn(2, 3, 32)
    assert torch.equal(close_stream(model, x), x)
    batch = make_batches(n=1)
    plain = run_diagnostics(model, batch, which=["variance", "block_influence"], progress=False)
    model.model.close_stream = lambda stream: 2 * stream
    doubled = run_diagnostics(model, batch, which=["variance", "block_influence"], progress=False)
    assert torch.equal(close_stream(model, x), 2 * x)
    assert doubled["variance"]["layer_var"] == pytest.approx([4 * v for v in plain["variance"]["layer_var"]])
    assert doubled["block_influence"]["bi"] == pytest.approx(plain["block_influence"]["bi"])  # cos: scale-free


def test_every_list_of_diagnostics_is_the_registry() -> None:
    from cod_train.report import plots
    from cod_train.report.render import ANALYSIS_SECTIONS
    from cod_train.report.runs import ANALYSIS_FILES
    from cod_train.runs.analyze import AnalyzeOptions

    files = [d.file for d in DIAGNOSTICS]
    assert AnalyzeOptions().diagnostics == list(NAMES)
    assert list(DIAG_FILES.values()) == files == list(ANALYSIS_FILES) == [s[0] for s in ANALYSIS_SECTIONS]
    assert list(plots.PLOTTERS) == files and all(callable(f) for f in plots.PLOTTERS.values())
    model = tiny_llama().train()
    batch = make_batches(n=1)[0]
    backward(model, batch)
    row = training_diagnostics(model, batch)
    assert {key for d in IN_TRAINING for key, _ in d.metrics} == set(row)  # a plain Llama: no learned scalars
    assert all(math.isfinite(v) for key in row for v in (row[key] if isinstance(row[key], list) else [row[key]]))
