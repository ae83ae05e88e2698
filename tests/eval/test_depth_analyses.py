"""Block Influence, logit lens, sub-layer contribution, skip effect and the prefix-cached pruning, each against
a plain hand computation (layers applied one by one, no hooks), and ours (pre_ln) against transformers'
Llama / Mistral / Qwen2 with the same weights."""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from torch import nn

from cod_train.eval.depth_analyses import (
    block_influence,
    logit_lens,
    removal_analyses,
    sublayer_contribution,
)
from cod_train.eval.depth_progress import ratio_spread
from cod_train.eval.depth_summary import settling_layer
from cod_train.eval.diagnostics import layer_pruning, run_diagnostics
from tests.helpers.diagnostics import (
    LAYERS,
    NORM_TYPES,
    VOCAB,
    large_weights,
    make_batches,
    tiny_cod,
    tiny_config,
    tiny_llama,
)
from tests.helpers.hand import hand_layers


def attn_by_hand(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A Llama layer's attention output on x (its residual-stream contribution under pre-norm)."""
    pos = torch.arange(x.shape[1])[None]
    emb = model.model.rotary_emb(x, position_ids=pos)
    mask = torch.full((x.shape[1], x.shape[1]), float("-inf")).triu(1)[None, None]
    return layer.self_attn(layer.input_layernorm(x), attention_mask=mask, position_embeddings=emb)[0]


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def test_block_influence_by_hand() -> None:
    model, batches = tiny_llama(), make_batches()
    got = block_influence(model, batches, progress=False)
    with torch.no_grad():
        per_batch = []
        for batch in batches:
            s = hand_layers(model, batch["input_ids"])
            per_batch.append([(1 - cos(s[i - 1], s[i])).mean().item() for i in range(1, LAYERS + 1)])
    expected = torch.tensor(per_batch).mean(0)  # equal-size batches: token mean = mean of batch means
    assert got["bi"] == pytest.approx(expected.tolist(), rel=1e-6)
    assert got["bi_std"] == pytest.approx(torch.tensor(per_batch).std(0).tolist(), rel=1e-5)
    assert all(lo <= m <= hi for lo, m, hi in zip(got["bi_lo"], got["bi"], got["bi_hi"], strict=True))


def test_logit_lens_by_hand() -> None:
    model, batch = tiny_llama(), make_batches(n=1)[0]
    batch["labels"][0, 6:] = -100  # row 0 ends at token 6: tokens 7.. are padding (excluded)
    got = logit_lens(model, [batch], progress=False)
    with torch.no_grad():
        s = hand_layers(model, batch["input_ids"])
        logp = [torch.log_softmax(model.lm_head(model.model.norm(h)), -1) for h in s]
    real = torch.ones(3, 12, dtype=torch.bool)
    real[0, 7:] = False
    final = logp[-1]
    for layer in (0, 1, LAYERS - 1, LAYERS):
        kl = (final.exp() * (final - logp[layer])).sum(-1)[real].mean().item()
        top1 = (final.argmax(-1) == logp[layer].argmax(-1))[real].double().mean().item()
        ce = nn.functional.nll_loss(
            logp[layer].reshape(-1, VOCAB), batch["labels"].reshape(-1), ignore_index=-100
        )
        assert got["kl"][layer] == pytest.approx(kl, rel=1e-5, abs=1e-9)
        assert got["top1"][layer] == pytest.approx(top1)
        assert got["lens_loss"][layer] == pytest.approx(ce.item(), rel=1e-5)
    assert got["kl"][LAYERS] == pytest.approx(0.0, abs=1e-9) and got["top1"][LAYERS] == 1.0
    assert got["kl"][0] > 0.01


def test_settling_layer() -> None:
    assert settling_layer([0.1, 0.6, 0.2, 0.7, 0.9, 1.0]) == 3  # agrees from layer 3 on (layer 2 dips)
    assert settling_layer([0.9, 0.9, 0.9, 1.0]) == 1
    assert settling_layer([0.0, 0.0, 0.4, 1.0]) == 3


def test_sublayer_contribution_by_hand() -> None:
    model, batches = tiny_llama(), make_batches(n=1)
    got = sublayer_contribution(model, batches, progress=False)
    with torch.no_grad():
        s = hand_layers(model, batches[0]["input_ids"])
        for idx, layer in enumerate(model.model.layers):
            x = s[idx]
            attn = attn_by_hand(model, layer, x)
            h = x + attn
            mlp = layer.mlp(layer.post_attention_layernorm(h))
            expect = {
                "attn_ratio": (attn.double().norm(dim=-1) / x.double().norm(dim=-1)).mean(),
                "attn_cos": cos(attn, x).mean(),
                "mlp_ratio": (mlp.double().norm(dim=-1) / h.double().norm(dim=-1)).mean(),
                "mlp_cos": cos(mlp, h).mean(),
                "layer_cos": cos(s[idx + 1] - x, x).mean(),
            }
            for key, value in expect.items():
                assert got[key][idx] == pytest.approx(value.item(), rel=1e-4, abs=1e-6), (key, idx)


@pytest.mark.parametrize("skip", [0, 2, LAYERS - 1])
def test_skip_effect_by_hand(skip: int) -> None:
    model, batches = tiny_llama(), make_batches(n=1)
    got = removal_analyses(model, batches, layers=[skip], skip_effect=True, progress=False)["skip_effect"]
    assert got["layers"] == [skip + 1]
    with torch.no_grad():
        full = hand_layers(model, batches[0]["input_ids"])
        cut = hand_layers(model, batches[0]["input_ids"], skip=skip)
        for j in range(LAYERS):
            if j <= skip:
                assert got["change"][0][j] is None
            else:
                rel = (
                    (cut[j + 1] - full[j + 1]).double().norm(dim=-1) / full[j + 1].double().norm(dim=-1)
                ).mean()
                assert got["change"][0][j] == pytest.approx(rel.item(), rel=1e-5)
        p = torch.log_softmax(model.lm_head(model.model.norm(full[-1])), -1)
        q = torch.log_softmax(model.lm_head(model.model.norm(cut[-1])), -1)
        kl = (p.exp() * (p - q)).sum(-1).mean()
    assert got["final_kl"][0] == pytest.approx(kl.item(), rel=1e-5)


def assert_same_pruning(model: nn.Module, batches: list, layers: list[int] | None = None) -> dict:
    cached = layer_pruning(model, batches, layers=layers, progress=False)
    plain = layer_pruning(model, batches, layers=layers, method="plain", progress=False)
    assert cached["layers"] == plain["layers"]
    assert cached["base_ppl"] == pytest.approx(plain["base_ppl"], rel=1e-5)
    assert cached["ppl"] == pytest.approx(plain["ppl"], rel=1e-5)
    assert max(abs(p / plain["base_ppl"] - 1) for p in plain["ppl"]) > 1e-3  # removal changes something
    return cached


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_cached_pruning_equals_plain_ours(norm_type: str) -> None:
    assert_same_pruning(tiny_cod(norm_type, layers=5), make_batches())


def test_cached_pruning_equals_plain_with_padding_and_subset() -> None:
    model = tiny_llama(layers=5)
    batches = make_batches(n=3)
    batches[1]["attention_mask"] = torch.ones_like(batches[1]["input_ids"])
    batches[1]["attention_mask"][0, 8:] = 0
    batches[1]["labels"][0, 7:] = -100
    got = assert_same_pruning(model, batches, layers=[3, 1])
    assert got["layers"] == [2, 4]
    assert all(lo <= m <= hi for lo, m, hi in zip(got["delta_ppl_pct_lo"], got["delta_ppl_pct"],
                                                    got["delta_ppl_pct_hi"], strict=True))  # fmt: skip


def test_cached_pruning_equals_plain_qwen2_sliding_window() -> None:
    cfg = transformers.Qwen2Config(
        **_shape(4), use_sliding_window=True, sliding_window=4, max_window_layers=2
    )
    torch.manual_seed(0)
    assert_same_pruning(large_weights(transformers.Qwen2ForCausalLM(cfg)), make_batches())


def test_layers_out_of_range_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"layers \[5\] out of range: the model has layers 1..4"):
        layer_pruning(tiny_llama(), make_batches(n=1), layers=[4])


def _shape(layers: int) -> dict:
    cfg = tiny_config(layers)
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings")  # fmt: skip
    return {k: getattr(cfg, k) for k in keys}


def _hf_twin(ours: nn.Module, family: str) -> nn.Module:
    """transformers' model of ``family`` holding our pre_ln model's weights (Qwen2: zero q/k/v biases)."""
    shape = _shape(LAYERS)
    cls, cfg_cls = {
        "llama": (transformers.LlamaForCausalLM, transformers.LlamaConfig),
        "mistral": (transformers.MistralForCausalLM, transformers.MistralConfig),
        "qwen2": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config),
    }[family]
    twin = cls(cfg_cls(**shape, tie_word_embeddings=False)).eval()
    state = twin.state_dict()
    for key, value in ours.state_dict().items():
        assert state[key].shape == value.shape, key
        state[key] = value
    for key in state:
        if key.endswith("_proj.bias"):
            state[key] = torch.zeros_like(state[key])
    twin.load_state_dict(state)
    return twin


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_hf_models_give_our_numbers(family: str) -> None:
    ours = tiny_cod("pre_ln", layers=LAYERS)
    twin = _hf_twin(ours, family)
    batches = make_batches(n=2)
    which = ("block_influence", "logit_lens", "sublayer", "pruning", "skip_effect")
    a = run_diagnostics(ours, batches, which=which, progress=False)
    b = run_diagnostics(twin, batches, which=which, progress=False)
    for name, key in [("block_influence", "bi"), ("logit_lens", "kl"), ("logit_lens", "top1"),
                      ("sublayer", "attn_ratio"), ("sublayer", "mlp_cos"), ("pruning", "ppl"),
                      ("skip_effect", "final_kl")]:  # fmt: skip
        assert a[name][key] == pytest.approx(b[name][key], rel=1e-4, abs=1e-6), (name, key)
    flat = [v for row in a["skip_effect"]["change"] for v in row if v is not None]
    twin_flat = [v for row in b["skip_effect"]["change"] for v in row if v is not None]
    assert flat == pytest.approx(twin_flat, rel=1e-4)


def test_olmo2_sublayers_by_hand() -> None:
    """Olmo2's reordered norm: h = x + N(attn(x)), y = h + N(mlp(h)); the stream between them is h."""
    torch.manual_seed(0)
    model = large_weights(transformers.Olmo2ForCausalLM(transformers.Olmo2Config(**_shape(3))))
    batches = make_batches(n=1)
    got = run_diagnostics(model, batches, which=("sublayer", "pruning", "block_influence"), progress=False)
    assert len(got["pruning"]["ppl"]) == 3 and len(got["block_influence"]["bi"]) == 3
    with torch.no_grad():
        s = hand_layers(model, batches[0]["input_ids"])
        for idx, layer in enumerate(model.model.layers):
            pos = torch.arange(12)[None]
            emb = model.model.rotary_emb(s[idx], position_ids=pos)
            mask = torch.full((12, 12), float("-inf")).triu(1)[None, None]
            attn = layer.self_attn(s[idx], attention_mask=mask, position_embeddings=emb)[0]
            h = s[idx] + layer.post_attention_layernorm(attn)
            mlp = layer.post_feedforward_layernorm(layer.mlp(h))
            assert torch.allclose(h + mlp, s[idx + 1], atol=1e-5)
            assert got["sublayer"]["mlp_cos"][idx] == pytest.approx(
                cos(mlp, h).mean().item(), rel=1e-4, abs=1e-6
            )
            ratio = (h - s[idx]).double().norm(dim=-1) / s[idx].double().norm(dim=-1)
            assert got["sublayer"]["attn_ratio"][idx] == pytest.approx(ratio.mean().item(), rel=1e-4)


def test_ratio_spread_by_hand() -> None:
    num = torch.tensor([[1.0, 4.0], [3.0, 2.0], [2.0, 6.0]])
    den = torch.tensor([[2.0, 2.0], [2.0, 2.0], [4.0, 4.0]])
    got = ratio_spread(num, den)
    assert got["mean"] == pytest.approx([6 / 8, 12 / 8])
    per = num / den
    assert got["std"] == pytest.approx(per.std(0).tolist())
    assert all(lo <= m <= hi for lo, m, hi in zip(got["lo"], got["mean"], got["hi"], strict=True))
    assert got["lo"][0] >= per[:, 0].min().item() - 1e-12 and got["hi"][0] <= per[:, 0].max().item() + 1e-12
    pct = ratio_spread(num, den, fn=lambda x: 100 * torch.expm1(x))
    assert pct["mean"][0] == pytest.approx(100 * math.expm1(0.75))


def test_downstream_metric_on_a_layers_subset() -> None:
    model, seen = tiny_llama(), []

    def metric(m: nn.Module) -> float:
        seen.append([layer.self_attn.layer_idx for layer in m.model.layers])
        return float(len(m.model.layers))

    curve = layer_pruning(model, make_batches(n=1), metric_fn=metric, layers=[3, 1], progress=False)
    assert seen == [[0, 1, 2, 3], [0, 2, 3], [0, 1, 2]]  # the full model, then without layer 2, then layer 4
    assert curve["layers"] == [2, 4] and curve["delta_metric"] == [-1.0, -1.0] and len(curve["ppl"]) == 2
