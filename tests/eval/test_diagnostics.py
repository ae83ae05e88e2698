"""Depth diagnostics against hand-computable cases, on tiny HF Llama / Mistral / Qwen2 models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM

from cod_train.eval.depth_hooks import last_token_index, pruned_layers, valid_token_mask
from cod_train.eval.diagnostics import (
    angular_distances,
    evaluate_loss,
    layer_grad_norms,
    layer_pruning,
    layer_variance,
    run_diagnostics,
)
from tests.helpers.diagnostics import LAYERS, VOCAB, identity_layers, make_batches, tiny_config, tiny_llama
from tests.helpers.hand import hand_layers


def test_identity_layers_have_zero_distance_and_zero_pruning_cost() -> None:
    model = identity_layers(tiny_llama())
    batches = make_batches()
    ang = angular_distances(model, batches)
    for start, row in enumerate(ang["distance"]):
        for span, value in enumerate(row, start=1):
            if start + span <= LAYERS:
                assert value == pytest.approx(0.0, abs=1e-6)
            else:
                assert value is None
    prune = layer_pruning(model, batches)
    assert prune["delta_ppl"] == pytest.approx([0.0] * LAYERS, abs=1e-9)
    var = layer_variance(model, batches)
    assert var["layer_var"] == pytest.approx([var["embed_var"]] * LAYERS, rel=1e-9)


def test_variance_of_known_hidden_state() -> None:
    model = identity_layers(tiny_llama())
    with torch.no_grad():  # embedding row v = v * ones: every element of token v's state is v
        model.model.embed_tokens.weight.copy_(
            torch.arange(VOCAB, dtype=torch.float32)[:, None].expand(-1, 32)
        )
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    labels = torch.tensor([[2, 3, 4, -100], [6, -100, -100, -100]])  # row 2: tokens 5, 6 then padding
    var = layer_variance(model, [{"input_ids": ids, "labels": labels}])
    expected = torch.tensor([1.0, 2, 3, 4, 5, 6]).var(unbiased=False).item()  # padding excluded
    assert var["layer_var"] == pytest.approx([expected] * LAYERS)
    assert var["layer_std"] == pytest.approx([math.sqrt(expected)] * LAYERS)


def test_variance_matches_hidden_states_by_hand() -> None:
    model = tiny_llama()
    batch = make_batches(n=1)[0]
    with torch.no_grad():
        states = hand_layers(model, batch["input_ids"])
    var = layer_variance(model, [batch])
    expected = [s.double().var(unbiased=False).item() for s in states[1:]]
    assert var["layer_var"] == pytest.approx(expected, rel=1e-5)
    assert len(set(round(v, 6) for v in expected)) == LAYERS  # non-trivial: layers change the variance


def test_angular_distance_matches_hand_computation() -> None:
    model = tiny_llama()
    batch = make_batches(n=1)[0]
    batch["labels"][0, 7:] = -100  # row 0 ends at token 7 (labels up to 6, token 7 is its last target)
    with torch.no_grad():
        states = hand_layers(model, batch["input_ids"])
    last = [7, 11, 11]
    got = angular_distances(model, [batch])["distance"]
    for start, span in [(0, 1), (1, 2), (0, LAYERS), (LAYERS - 1, 1)]:
        dists = []
        for row, pos in enumerate(last):
            a, b = states[start][row, pos].double(), states[start + span][row, pos].double()
            cos = torch.dot(a, b) / (a.norm() * b.norm())
            dists.append(math.acos(max(-1.0, min(1.0, cos.item()))) / math.pi)
        assert got[start][span - 1] == pytest.approx(sum(dists) / len(dists), abs=1e-6)


def test_last_token_and_mask_from_labels() -> None:
    labels = torch.tensor([[5, 6, -100, -100], [-100, 7, 8, -100], [-100, -100, -100, -100]])
    batch = {"input_ids": torch.zeros_like(labels), "labels": labels}
    assert last_token_index(batch).tolist() == [2, 3, 3]
    assert valid_token_mask(batch)[0].tolist() == [True, True, True, False]
    batch["attention_mask"] = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    assert last_token_index(batch).tolist() == [0, 3, 1]


def renumbered_state(model: nn.Module, drop: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if parts[:2] == ["model", "layers"]:
            idx = int(parts[2])
            if idx == drop:
                continue
            parts[2] = str(idx - (idx > drop))
        out[".".join(parts)] = value
    return out


@pytest.mark.parametrize("drop", [0, 2, LAYERS - 1])
def test_pruning_equals_fresh_shallower_model(drop: int) -> None:
    model = tiny_llama()
    batches = make_batches()
    fresh = LlamaForCausalLM(tiny_config(LAYERS - 1)).eval()
    fresh.load_state_dict(renumbered_state(model, drop))
    with pruned_layers(model, [drop]):
        pruned_loss = evaluate_loss(model, batches)
        ids = batches[0]["input_ids"]
        with torch.no_grad():
            assert torch.allclose(model(input_ids=ids).logits, fresh(input_ids=ids).logits, atol=1e-5)
    assert pruned_loss == pytest.approx(evaluate_loss(fresh, batches), rel=1e-6)
    assert len(model.model.layers) == LAYERS  # restored
    curve = layer_pruning(model, batches)
    assert curve["loss"][drop] == pytest.approx(pruned_loss, rel=1e-6)
    assert curve["base_loss"] == pytest.approx(evaluate_loss(model, batches))


def test_pruning_with_downstream_metric_callable() -> None:
    model = tiny_llama()
    seen = []

    def metric(m: nn.Module) -> float:
        seen.append(len(m.model.layers))
        return float(len(m.model.layers))

    curve = layer_pruning(model, make_batches(n=1), metric_fn=metric)
    assert seen == [LAYERS] + [LAYERS - 1] * LAYERS
    assert curve["delta_metric"] == [-1.0] * LAYERS


def test_loss_matches_hf_loss() -> None:
    model = tiny_llama()
    batch = make_batches(n=1)[0]
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
    ref = nn.functional.cross_entropy(
        logits.reshape(-1, VOCAB), batch["labels"].reshape(-1), ignore_index=-100
    )
    assert evaluate_loss(model, [batch]) == pytest.approx(ref.item(), rel=1e-5)


def test_grad_norms_equal_autograd_recomputation() -> None:
    model = tiny_llama()
    batches = make_batches(n=2)
    got = layer_grad_norms(model, batches)
    ids = torch.cat([b["input_ids"] for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    logits = model(input_ids=ids).logits
    loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100)
    expected = []
    for layer in model.model.layers:
        grads = torch.autograd.grad(loss, list(layer.parameters()), retain_graph=True)
        expected.append(math.sqrt(sum(g.double().square().sum().item() for g in grads)))
    assert got["layer_grad_norm"] == pytest.approx(expected, rel=1e-4)
    assert got["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_other_llama_layouts(family: str) -> None:
    import transformers

    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    if family == "mistral":
        model = transformers.MistralForCausalLM(transformers.MistralConfig(**common))
    else:
        cfg = transformers.Qwen2Config(
            **common, use_sliding_window=True, sliding_window=4, max_window_layers=1
        )
        model = transformers.Qwen2ForCausalLM(cfg)
    model.eval()
    batches = make_batches(n=1)
    out = run_diagnostics(model, batches)
    assert len(out["variance"]["layer_var"]) == 3
    assert len(out["pruning"]["ppl"]) == 3
    assert len(out["grad_norms"]["layer_grad_norm"]) == 3
    if family == "qwen2":  # per-layer config lists follow the kept layers, then come back
        types = list(model.config.layer_types)
        with pruned_layers(model, [0]):
            assert list(model.config.layer_types) == types[1:]
        assert list(model.config.layer_types) == types
