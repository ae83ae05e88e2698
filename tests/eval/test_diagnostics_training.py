"""The in-training hook: same numbers as the offline diagnostics, plain / DDP / FSDP2 (1 process, gloo)."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from torch import nn

from cod_train.eval.diagnostics import (
    LAYER_GRAD_NORM_KEY,
    LAYER_VAR_KEY,
    TrainingDiagnostics,
    layer_variance,
    per_layer_grad_norms,
    scalarize_diagnostics,
    training_diagnostics,
)
from tests.helpers.diagnostics import LAYERS, backward, make_batches, tiny_llama


def reference_grad_norms(model: nn.Module) -> list[float]:
    return [
        math.sqrt(sum(p.grad.double().square().sum().item() for p in layer.parameters()))
        for layer in model.model.layers
    ]


def test_training_diagnostics_plain_model() -> None:
    model = tiny_llama().train()
    batch = make_batches(n=1, rows=6)[0]
    backward(model, batch)
    row = training_diagnostics(model, batch, max_rows=2)
    depth_keys = {"diag/bi", "diag/lens_kl", "diag/lens_top1", "diag/settling_depth", "diag/attn_ratio",
                  "diag/attn_cos", "diag/mlp_ratio", "diag/mlp_cos"}  # fmt: skip
    assert set(row) == {LAYER_VAR_KEY, LAYER_GRAD_NORM_KEY} | depth_keys
    assert row[LAYER_GRAD_NORM_KEY] == pytest.approx(reference_grad_norms(model), rel=1e-5)
    small = {k: v[:2] for k, v in batch.items()}
    assert row[LAYER_VAR_KEY] == pytest.approx(layer_variance(model, [small])["layer_var"], rel=1e-4)
    assert all(p.grad is not None for p in model.parameters())  # grads untouched for the optimizer step


def test_capture_piggybacks_on_first_forward_only() -> None:
    model = tiny_llama().train()
    first, second = make_batches(n=2)
    diag = TrainingDiagnostics(model)
    with diag.capture(first):
        backward(model, first)
        backward(model, second)  # a second forward inside the block is ignored
    row = diag.collect()
    assert row[LAYER_VAR_KEY] == pytest.approx(layer_variance(model, [first])["layer_var"], rel=1e-4)
    assert row[LAYER_GRAD_NORM_KEY] == pytest.approx(reference_grad_norms(model), rel=1e-5)
    with diag.capture(first, enabled=False):
        backward(model, first)
    assert LAYER_VAR_KEY not in diag.collect()
    assert not model.model.layers[0]._forward_hooks  # nothing stays registered


def test_scalarize_for_wandb() -> None:
    flat = scalarize_diagnostics({"step": 3, LAYER_VAR_KEY: [1.0, 2.0], LAYER_GRAD_NORM_KEY: [0.5, 0.25]})
    assert flat == {
        "step": 3,
        "diag/layer_var/L01": 1.0,
        "diag/layer_var/L02": 2.0,
        "diag/layer_grad_norm/L01": 0.5,
        "diag/layer_grad_norm/L02": 0.25,
    }


@pytest.fixture(scope="module")
def process_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    if dist.is_initialized():
        yield
        return
    store = dist.FileStore(str(tmp_path_factory.mktemp("pg") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_wrapped(process_group: None) -> None:
    plain = tiny_llama().train()
    wrapped = nn.parallel.DistributedDataParallel(copy.deepcopy(plain))
    batch = make_batches(n=1)[0]
    backward(plain, batch)
    backward(wrapped, batch)
    row = training_diagnostics(wrapped, batch)
    assert row[LAYER_GRAD_NORM_KEY] == pytest.approx(reference_grad_norms(plain), rel=1e-5)
    assert len(row[LAYER_VAR_KEY]) == LAYERS


def test_fsdp2_dtensor_grads(process_group: None) -> None:
    from torch.distributed.fsdp import fully_shard

    plain = tiny_llama().train()
    sharded = copy.deepcopy(plain)
    for layer in sharded.model.layers:
        fully_shard(layer)
    fully_shard(sharded)
    batch = make_batches(n=1)[0]
    backward(plain, batch)
    out = sharded(input_ids=batch["input_ids"]).logits
    loss = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), batch["labels"].reshape(-1))
    loss.backward()
    assert hasattr(next(sharded.model.layers[0].parameters()).grad, "to_local")  # DTensor grads
    assert per_layer_grad_norms(sharded) == pytest.approx(reference_grad_norms(plain), rel=1e-4)
    row = training_diagnostics(sharded, batch)
    assert row[LAYER_VAR_KEY] == pytest.approx(training_diagnostics(plain, batch)[LAYER_VAR_KEY], rel=1e-4)


def test_deepspeed_params_join_the_gradient_gather(monkeypatch: pytest.MonkeyPatch) -> None:
    """ZeRO-1/2 parameters carry `_hp_mapping` (None on ranks owning no fragment): every rank must call
    safe_get_full_grad (a collective) for every such parameter, whatever its local `.grad`."""
    import sys
    import types

    model = tiny_llama()
    calls = []
    fake = types.ModuleType("deepspeed.utils")
    fake.safe_get_full_grad = lambda p: calls.append(p) or torch.ones_like(p)
    monkeypatch.setitem(sys.modules, "deepspeed", types.ModuleType("deepspeed"))
    monkeypatch.setitem(sys.modules, "deepspeed.utils", fake)
    params = list(model.model.layers.parameters())
    for p in params:
        p._hp_mapping = None  # this rank owns no fragment
    norms = per_layer_grad_norms(model)
    assert len(calls) == len(params)
    per_layer = [sum(p.numel() for p in layer.parameters()) for layer in model.model.layers]
    assert norms == pytest.approx([math.sqrt(n) for n in per_layer])


def test_in_training_depth_stats_equal_the_offline_analyses() -> None:
    from cod_train.eval.depth_analyses import block_influence, logit_lens, sublayer_contribution

    model = tiny_llama().train()
    batch = make_batches(n=1, rows=5)[0]
    batch["labels"][0, 6:] = -100  # a padded row: its padding is excluded in both
    backward(model, batch)
    row = training_diagnostics(model, batch, max_rows=3)
    small = [{k: v[:3] for k, v in batch.items()}]
    assert row["diag/bi"] == pytest.approx(block_influence(model, small, progress=False)["bi"], rel=1e-5)
    lens = logit_lens(model, small, progress=False)
    assert row["diag/lens_kl"] == pytest.approx(lens["kl"], rel=1e-4, abs=1e-9)
    assert row["diag/lens_top1"] == pytest.approx(lens["top1"])
    assert row["diag/settling_depth"] == pytest.approx(lens["settling_depth"])
    sub = sublayer_contribution(model, small, progress=False)
    for key in ("attn_ratio", "attn_cos", "mlp_ratio", "mlp_cos"):
        assert row[f"diag/{key}"] == pytest.approx(sub[key], rel=1e-5, abs=1e-9)
    assert not model.lm_head._forward_hooks and not model.model.layers[0]._forward_pre_hooks
