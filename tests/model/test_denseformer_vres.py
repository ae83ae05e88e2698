"""DenseFormer (residual=denseformer, its k x p dilated variant) and value residual learning (value_residual, with
every placement) against a plain float64 formulation written here from the papers (block outputs in a dict by
depth, the averages' sources listed by hand; v_1 kept from the first attention that runs), every learned weight
off its init, logits and gradients; layer removal (prefix-cached == plain == the formulation without that layer);
generate with the KV cache == manual greedy; per-block compile without graph breaks; activation checkpointing;
save / load / meta init; learned scalars and cod-analyze's entry; labels; refusals."""

import math

import pytest
import torch

from cod_train.config import ConfigError, ModelConfig
from cod_train.model import CodLlamaForCausalLM, build_model, zoo
from tests.helpers.generate import assert_cached_generate_is_greedy
from tests.helpers.zoo import kinds, perturb
from tests.model import zoo_reference
from tests.model.reference import rope
from tests.model.zoo_reference import norm, params, qkv

SHAPE = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


def make(**overrides) -> CodLlamaForCausalLM:
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**SHAPE, **overrides}), 96)


def value_residual_attention(first: dict):
    """zoo_reference's attention with ResFormer's values: the first attention that runs keeps its v as v_1, every
    later one attends with lambda_self * v + lambda_first * v_1."""

    def attention(x, sd, p, cfg):
        T, H, KV = x.shape[0], cfg.num_attention_heads, cfg.num_key_value_heads
        hd, theta = cfg.hidden_size // H, cfg.rope_parameters["rope_theta"]
        q, k, v = rope(qkv(x, sd, p, cfg, "q", H), theta), rope(qkv(x, sd, p, cfg, "k", KV), theta), \
            qkv(x, sd, p, cfg, "v", KV)
        if "v" not in first:
            first["v"] = v
        else:
            v = sd[p + "value_mix.lambda_self"] * v + sd[p + "value_mix.lambda_first"] * first["v"]
        causal = torch.full((T, T), float("-inf"), dtype=x.dtype).triu(1)
        heads = [torch.softmax(q[:, h] @ k[:, h // (H // KV)].T / math.sqrt(hd) + causal, -1) @ v[:, h // (H // KV)]
                 for h in range(H)]
        return torch.cat(heads, dim=-1) @ sd[p + "o_proj.weight"].T

    return attention


def reference_logits(model, ids, monkeypatch, sd=None, skip=None, states=None):
    """The plain formulation for one sequence: B_0 = embedding, B_i = layer i on X_{i-1} (zoo_reference's
    equations of its placement), X_i = sum over the sources j of alpha_ij B_j after every p-th layer (else B_i).
    `skip`: a 0-based layer left out (X passes it unchanged, B absent from every later average); `states` receives
    X entering each layer and the final X."""
    cfg = model.config
    sd = params(model) if sd is None else sd
    if cfg.value_residual:
        monkeypatch.setattr(zoo_reference, "attention", value_residual_attention({}))
    x = sd["model.embed_tokens.weight"][ids]
    outputs, L = {0: x}, cfg.num_hidden_layers
    dense = cfg.residual == "denseformer"
    k, p = cfg.denseformer_dilation, cfg.denseformer_period
    for idx, kind in enumerate(kinds(cfg.norm_type, L, cfg.mix_ln_ratio)):
        if states is not None:
            states.append(x)
        if idx == skip:
            continue
        depth = idx + 1
        y = zoo_reference.layer(x, sd, idx, kind, cfg)
        outputs[depth] = y
        if dense and depth % p == 0:
            w = sd[f"model.layers.{idx}.denseformer_dwa.weight"]
            sources = [j for j in range(depth + 1) if (depth - j) % k == 0]
            x = sum(w[n] * outputs[j] for n, j in enumerate(sources) if j in outputs)
        else:
            x = y
    if states is not None:
        states.append(x)
    return norm(x, sd, "model.norm", cfg) @ sd["lm_head.weight"].T


CASES = [
    dict(residual="denseformer"),
    dict(residual="denseformer", norm_type="lns", denseformer_dilation=2, denseformer_period=2, num_hidden_layers=5),
    dict(residual="denseformer", denseformer_dilation=3, value_residual=True, norm_fn="layernorm"),
    dict(value_residual=True),
    dict(value_residual=True, norm_type="post_ln", qk_norm="head"),
    dict(value_residual=True, norm_type="sandwich_ln"),
    dict(value_residual=True, norm_type="hybrid_ln_star", residual="gpas"),
    dict(value_residual=True, norm_type="mix_ln", mix_ln_ratio=0.5, residual="layerscale"),
    dict(value_residual=True, norm_type="deepnorm", num_key_value_heads=4),
]
IDS = ["-".join(f"{k}={v}" for k, v in case.items()) for case in CASES]


def test_value_residual_is_offered_with_every_placement():
    tested = {case.get("norm_type", "pre_ln") for case in CASES if case.get("value_residual")}
    for placement in zoo.placement_names():
        ModelConfig(**{**SHAPE, "num_key_value_heads": 4}, norm_type=placement, value_residual=True).validate()
    assert {"pre_ln", "post_ln", "sandwich_ln", "hybrid_ln_star", "mix_ln", "deepnorm"} <= tested


@pytest.mark.parametrize("axes", CASES, ids=IDS)
def test_logits_and_gradients_match_the_plain_formulation(axes, monkeypatch):
    model = make(**axes)
    perturb(model)
    ids = torch.randint(0, 96, (9,))
    sd = params(model, requires_grad=True)
    want = reference_logits(model, ids, monkeypatch, sd)
    got = model(input_ids=ids[None]).logits[0].double()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    want.pow(2).mean().backward()
    got.pow(2).mean().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad.double(), sd[name].grad, rtol=1e-4, atol=1e-7, msg=name)


def test_at_init_denseformer_is_the_plain_model_and_its_weights_are_the_identity():
    for axes in (dict(), dict(denseformer_dilation=2, denseformer_period=3)):
        model, plain = make(residual="denseformer", **axes), make()
        ids = torch.randint(0, 96, (2, 9))
        assert torch.equal(model(input_ids=ids).logits, plain(input_ids=ids).logits)
    # 4 layers, k = 2, p = 3: one average, after layer 3, over depths 1 and 3 (1 on its own output)
    dwa = [(n, p.tolist()) for n, p in model.named_parameters() if "dwa" in n]
    assert dwa == [("model.layers.2.denseformer_dwa.weight", [0.0, 1.0])]
    lambdas = {n: p.item() for n, p in make(value_residual=True).named_parameters() if "value_mix" in n}
    assert sorted(lambdas) == [f"model.layers.{i}.self_attn.value_mix.lambda_{w}" for i in (1, 2, 3)
                               for w in ("first", "self")]
    assert set(lambdas.values()) == {0.5}  # ResFormer's lambda_1 = lambda_2 = 0.5


@pytest.mark.parametrize("axes", [dict(residual="denseformer", denseformer_dilation=2),
                                  dict(value_residual=True, norm_type="post_ln"),
                                  dict(value_residual=True, residual="denseformer", norm_type="lns")])
def test_layer_removal_cached_and_plain_match_the_formulation_without_that_layer(axes, monkeypatch):
    """Removing layer l: the stream it would have read passes on, its output is in no later average; with value
    residuals, removing the first layer makes the next one the source of v_1 (the cached sweep replays from the
    state the removed layer saw)."""
    from cod_train.eval.depth_analyses import removal_analyses
    from cod_train.eval.diagnostics import layer_pruning

    model = make(**axes)
    perturb(model)
    model.eval()
    L, ids = model.config.num_hidden_layers, torch.randint(0, 96, (1, 9))
    batch = {"input_ids": ids, "labels": torch.cat([ids[:, 1:], torch.full((1, 1), -100)], dim=1)}
    sd = params(model)

    def plain(skip=None):
        states = []
        logp = torch.log_softmax(reference_logits(model, ids[0], monkeypatch, sd, skip=skip, states=states), -1)
        return states, logp

    full, full_logp = plain()
    cached = layer_pruning(model, [batch], progress=False)
    by_rerun = layer_pruning(model, [batch], method="plain", progress=False)
    effect = removal_analyses(model, [batch], layers=None, skip_effect=True, progress=False)["skip_effect"]
    for skip in range(L):
        cut, cut_logp = plain(skip)
        loss = -cut_logp[:-1].gather(-1, ids[0, 1:, None]).mean()
        assert cached["loss"][skip] == pytest.approx(loss.item(), rel=1e-5), skip
        assert by_rerun["loss"][skip] == pytest.approx(loss.item(), rel=1e-5), skip
        for j in range(skip + 1, L):
            rel = ((cut[j + 1] - full[j + 1]).norm(dim=-1) / full[j + 1].norm(dim=-1)).mean()
            assert effect["change"][skip][j] == pytest.approx(rel.item(), rel=1e-4), (skip, j)


ZOO = [dict(residual="denseformer", denseformer_period=2), dict(value_residual=True),
       dict(value_residual=True, residual="denseformer", denseformer_dilation=2, norm_type="lns"),
       dict(value_residual=True, residual="hc", hc_streams=2)]  # beside another scheme's own stream object


@pytest.mark.parametrize("axes", ZOO)
def test_generate_with_cache_equals_manual_greedy(axes):
    """A cached step mixes the new tokens' values with their own first-layer values (the cache holds mixed ones)."""
    model = make(**axes)
    perturb(model)
    model.eval()
    assert_cached_generate_is_greedy(model)


@pytest.mark.parametrize("axes", ZOO)
def test_blocks_compile_without_graph_breaks_and_checkpointing_keeps_gradients(axes):
    from cod_train.model.value_residual import FirstLayerValues

    torch._dynamo.reset()
    model = make(**axes)
    perturb(model)
    ids = torch.randint(0, 96, (2, 9))
    x = model.model.open_stream(model.model.embed_tokens(ids))
    rope = (torch.ones(1, 9, 8), torch.zeros(1, 9, 8))
    values = FirstLayerValues() if model.config.value_residual else None
    for layer in model.model.layers:
        x = torch.compile(layer, fullgraph=True, backend="eager")(x, rope, None, None, values)  # no graph break
    model.model.close_stream(x).sum().backward()
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    want = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    model.train()
    model.gradient_checkpointing_enable()
    model(input_ids=ids, labels=ids).loss.backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[k], msg=k)


@pytest.mark.parametrize("axes", ZOO)
def test_save_load_round_trip_and_meta_init(axes, tmp_path):
    from transformers import AutoModelForCausalLM

    model = make(**axes)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    perturb(model)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    for (n1, a), (n2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(a, b), n1
    with torch.device("meta"):
        meta = build_model(ModelConfig(**{**SHAPE, **axes}), 96)
    meta.to_empty(device="cpu")
    meta.reset_weights()
    for name, value in meta.state_dict().items():
        if "dwa" in name or "value_mix" in name:
            assert torch.equal(value, fresh[name]), name


def test_learned_scalars_and_cod_analyze_entry():
    from cod_train.eval.depth_io import add_scheme_outputs, model_info
    from cod_train.eval.depth_scalars import learned_scalars

    model = make(residual="denseformer", denseformer_dilation=2, denseformer_period=2, value_residual=True)
    perturb(model)
    w = {i: model.model.layers[i].denseformer_dwa.weight.tolist() for i in (1, 3)}  # depths 2 and 4
    got = learned_scalars(model)
    assert got["denseformer_dwa.self"] == [None, pytest.approx(w[1][-1]), None, pytest.approx(w[3][-1])]
    assert got["denseformer_dwa.embed"] == [None, pytest.approx(w[1][0]), None, pytest.approx(w[3][0])]
    lam = [None] + [model.model.layers[i].self_attn.value_mix.lambda_first.item() for i in (1, 2, 3)]
    assert got["self_attn.value_mix.lambda_first"] == [None if v is None else pytest.approx(v) for v in lam]
    info = model_info(model, "spec", "df")
    ids = torch.randint(0, 96, (1, 9))
    add_scheme_outputs(model, info, {"input_ids": ids, "labels": ids})
    assert info["scheme"] == "pre_ln+denseformer2x2+vres"
    assert info["denseformer_weights"] == [
        None, [pytest.approx(w[1][0]), None, pytest.approx(w[1][1])], None,
        [pytest.approx(w[3][0]), None, pytest.approx(w[3][1]), None, pytest.approx(w[3][2])]]


def test_labels_macs_and_parameter_counts():
    from cod_train.model import flops_per_token, total_params

    assert zoo.scheme_name(dict(residual="denseformer")) == "pre_ln+denseformer"
    assert zoo.scheme_name(dict(norm_type="lns", residual="denseformer", denseformer_dilation=4,
                                denseformer_period=5)) == "lns+denseformer4x5"
    assert zoo.scheme_name(dict(norm_type="post_ln", value_residual=True)) == "post_ln+vres"
    from cod_train.engine.model_card import _scheme_sentence, scheme_axes

    card = _scheme_sentence(scheme_axes(make(residual="denseformer", denseformer_dilation=2,
                                             value_residual=True).config, "pre_ln"))
    assert card.startswith("scheme `pre_ln+denseformer2x1+vres`") and "2x1-DenseFormer" in card
    assert "value residuals (ResFormer" in card
    for axes in (dict(residual="denseformer", denseformer_dilation=2, num_hidden_layers=5), dict(value_residual=True)):
        model, base = make(**axes), make(num_hidden_layers=axes.get("num_hidden_layers", 4))
        assert total_params(model.config) == sum(p.numel() for p in model.parameters())
    # k = 2 over 5 layers: the averages read 1, 2, 2, 3, 3 depths (depth i: i//2 + 1 sources), d = 32 each
    assert flops_per_token(model.config, 8) - flops_per_token(base.config, 8) == 0  # vres: elementwise only
    dense = make(residual="denseformer", denseformer_dilation=2, num_hidden_layers=5).config
    plain = make(num_hidden_layers=5).config
    assert flops_per_token(dense, 8) - flops_per_token(plain, 8) == 6 * (1 + 2 + 2 + 3 + 3) * 32


@pytest.mark.parametrize("overrides,needle", [
    (dict(residual="denseformer", norm_type="post_ln"),
     "residual=denseformer is defined on Pre-LN blocks (the paper's; each sub-layer reads the stream through its "
     "own norm): it combines with norm_type=pre_ln or lns, not with norm_type=post_ln"),
    (dict(denseformer_dilation=2), "denseformer_dilation=2 belongs to residual=denseformer"),
    (dict(residual="hc", denseformer_period=3), "denseformer_period=3 belongs to residual=denseformer"),
    (dict(residual="denseformer", denseformer_period=0), "denseformer_period must be a positive integer"),
    (dict(residual="denseformer", denseformer_dilation=-1), "denseformer_dilation must be a positive integer"),
])
def test_nonsense_combinations_are_refused_up_front(overrides, needle):
    with pytest.raises(ConfigError) as err:
        ModelConfig(**overrides).validate()
    assert needle in str(err.value)


def test_cli_refusal_is_one_error_line(tmp_path, capsys):
    from tests.helpers.cli import cod_pretrain_stderr, one_error_line

    code, err = cod_pretrain_stderr(capsys, f"run_dir={tmp_path / 'run'}", "model.residual=denseformer",
                                    "model.norm_type=sandwich_ln", "model.value_residual=true")
    assert code == 2
    assert "residual=denseformer is defined on Pre-LN blocks" in one_error_line(err)
    assert not (tmp_path / "run").exists()
