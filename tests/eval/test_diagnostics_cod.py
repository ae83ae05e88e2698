"""Depth diagnostics on our own model (`cod_llama`), every placement."""

from __future__ import annotations

import pytest
import torch

from cod_train.eval.depth_hooks import pruned_layers, run_backbone
from cod_train.eval.diagnostics import angular_distances, layer_pruning, run_diagnostics
from tests.helpers.diagnostics import NORM_TYPES, identity_layers, make_batches, tiny_cod

cod_model = pytest.importorskip("cod_train.model")


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_every_placement_runs(norm_type: str) -> None:
    # pruning and angular distance only need the layer list (covered above / in test_diagnostics.py)
    out = run_diagnostics(tiny_cod(norm_type), make_batches(n=1, rows=2), which=("variance", "grad_norms"))
    assert len(out["variance"]["layer_var"]) == 4
    assert all(v > 0 for v in out["grad_norms"]["layer_grad_norm"])


def test_identity_layers_ours() -> None:
    model = identity_layers(tiny_cod("pre_ln"))
    batches = make_batches()
    assert layer_pruning(model, batches)["delta_ppl"] == pytest.approx([0.0] * 4, abs=1e-9)
    dist = angular_distances(model, batches)["distance"]
    assert all(v == pytest.approx(0.0, abs=1e-6) for row in dist for v in row if v is not None)


def test_lns_pruning_keeps_each_layers_own_depth() -> None:
    model = tiny_cod("lns")
    batch = make_batches(n=1)[0]
    with torch.no_grad(), pruned_layers(model, [1]):
        assert [layer.depth for layer in model.model.layers] == [1, 3, 4]
        pruned = run_backbone(model, batch)
        # by hand: the kept layers, each with its original 1/sqrt(depth)
        inner = model.model
        x = inner.embed_tokens(batch["input_ids"])
        rope = cod_model.modeling.rope_cos_sin(model.config, torch.arange(x.shape[1])[None], x.dtype)
        for layer in inner.layers:
            x = layer(x, rope)
        assert torch.allclose(pruned, inner.norm(x), atol=1e-5)
    assert [layer.lns_scale for layer in model.model.layers] == pytest.approx([1, 2**-0.5, 3**-0.5, 0.5])
