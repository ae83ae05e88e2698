"""The depth zoo: every placement, QK-norm, norm function and residual scheme against the plain formulation in
zoo_reference.py (with learned scalars away from their init), against transformers' own Olmo2 / Qwen3 modules
where one exists, and through generate, save/load, meta-device init and torch.compile."""

import math

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from cod_train.config import ConfigError, ModelConfig
from cod_train.model import CodLlamaForCausalLM, build_model, zoo
from tests.helpers.generate import assert_cached_generate_is_greedy
from tests.helpers.zoo import SHAPE, kinds, make, perturb
from tests.model.zoo_reference import params, zoo_reference_logits


def check_against_reference(model: CodLlamaForCausalLM, norm_type: str) -> None:
    perturb(model)
    model.eval()
    ids = torch.randint(0, 96, (9,))
    want = zoo_reference_logits(model, ids, kinds(norm_type, model.config.num_hidden_layers,
                                                  model.config.mix_ln_ratio))
    torch.testing.assert_close(model(input_ids=ids[None]).logits[0].double(), want, rtol=1e-4, atol=1e-4)


def valid(norm_type: str, **axes) -> bool:
    try:
        ModelConfig(**SHAPE, norm_type=norm_type, **axes).validate()
    except ConfigError:
        return False
    return True


# every placement whose layers are norms around the standard sub-layers (nGPT's normalized update has its own
# reference: tests/model/test_ngpt.py)
NORM_TYPES = tuple(n for n in zoo.placement_names() if n != "ngpt")
NORM_FNS = zoo.NORM_FNS
# every residual but plain; hyper-connections (their n streams) are checked in test_hyper_connections.py
# and the schemes whose layers read the history of outputs (AttnRes: tests/model/test_attn_res.py)
RESIDUALS = tuple(r for r in zoo.residual_names()
                  if r not in ("plain", "hc", "mhc") and not zoo.residual(r).layer_reads_history)
ONE_AXIS = [(nt, axes) for nt in NORM_TYPES
            for axes in [{}, {"qk_norm": "head"}, {"qk_norm": "full"}]
            + [{"norm_fn": fn} for fn in NORM_FNS[1:]] + [{"residual": r} for r in RESIDUALS]
            if valid(nt, **axes)]

COMBOS = [  # the examples and each paper's own combination
    ("lns", {"residual": "gpas", "qk_norm": "head"}),
    ("mix_ln", {"norm_fn": "dyt"}),
    ("mix_ln", {"residual": "gpas", "norm_fn": "derf", "num_hidden_layers": 4, "mix_ln_ratio": 0.5}),
    ("deepnorm", {"residual": "gpas", "qk_norm": "full"}),
    ("sandwich_ln", {"residual": "gpas", "norm_fn": "layernorm", "norm_bias": True}),
    ("hybrid_ln_star", {"norm_fn": "derf", "residual": "layerscale", "qk_norm": "full", "norm_bias": True}),
    ("reordered_ln", {"qk_norm": "full", "residual": "rezero", "embed_norm": True}),
    ("peri_ln", {"embed_norm": False, "norm_fn": "dyt", "embed_scale": False}),
    ("pre_ln", {"norm_fn": "rmsnorm", "embed_scale": True, "residual": "depth_scaled", "depth_alpha": 0.5,
                "depth_base_layers": 2}),
]


@pytest.mark.parametrize("norm_type,axes", ONE_AXIS + COMBOS, ids=lambda v: v if isinstance(v, str) else
                         "-".join(f"{k}={x}" for k, x in v.items()) or "defaults")
def test_scheme_matches_the_plain_formulation(norm_type, axes):
    check_against_reference(make(norm_type=norm_type, **axes), norm_type)


def test_every_value_of_every_axis_is_covered():
    covered = {(k, v) for _, axes in ONE_AXIS for k, v in axes.items()} | {("norm_type", nt) for nt, _ in ONE_AXIS}
    want = ({("norm_type", t) for t in NORM_TYPES} | {("norm_fn", f) for f in NORM_FNS[1:]}
            | {("residual", r) for r in RESIDUALS} | {("qk_norm", "head"), ("qk_norm", "full")})
    assert want <= covered


@pytest.mark.parametrize("norm_type,residual", [("pre_ln", "gpas"), ("post_ln", "gpas"), ("hybrid_ln", "gpas"),
                                                ("lns", "rezero"), ("reordered_ln", "layerscale")])
def test_gradients_match_the_plain_formulation(norm_type, residual):
    """GPAS's stop-gradient in particular: the forward alone cannot tell z - s*z from z - s*stopgrad(z)."""
    model = make(norm_type=norm_type, residual=residual, norm_fn="dyt", qk_norm="head")
    perturb(model)
    ids = torch.randint(0, 96, (9,))
    sd = params(model, requires_grad=True)
    zoo_reference_logits(model, ids, kinds(norm_type, 3), sd).pow(2).mean().backward()
    model(input_ids=ids[None]).logits.double().pow(2).mean().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad.double(), sd[name].grad, rtol=1e-4, atol=1e-7, msg=name)


def test_gpas_gate_is_one_per_layer_shared_by_both_sublayers_and_scales_by_one_minus_silu():
    """The GPAS authors' code applies one gate per layer after both residual adds: with Attn and MLP branches
    switched off (zero output projections), layer output = (1 - SiLU(g))^2 x."""
    model = make(residual="gpas", num_hidden_layers=1)
    assert [n for n, _ in model.named_parameters() if "gpas" in n] == ["model.layers.0.gpas_gate.weight"]
    layer = model.model.layers[0]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        layer.gpas_gate.weight.fill_(0.7)
    x = torch.randn(1, 5, 32)
    rope = (torch.ones(1, 5, 8), torch.zeros(1, 5, 8))
    s = 0.7 / (1 + math.exp(-0.7))
    torch.testing.assert_close(layer(x, rope), (1 - s) ** 2 * x)


def test_dyt_and_derf_follow_the_papers_formulas_and_the_authors_defaults():
    model = make(norm_fn="dyt", norm_bias=True)
    n = model.model.layers[0].input_layernorm
    assert n.alpha.item() == pytest.approx(0.8) and model.model.layers[0].post_attention_layernorm.alpha.item() == \
        pytest.approx(0.2) and model.model.norm.alpha.item() == pytest.approx(0.2)  # DyT LLaMA-7B alpha0 values
    assert model.model.embed_scale.weight.item() == pytest.approx(math.sqrt(32))
    x = torch.randn(4, 32) * 3
    with torch.no_grad():
        n.alpha.fill_(0.37), n.weight.uniform_(0.5, 1.5), n.bias.uniform_(-1, 1)
    torch.testing.assert_close(n(x), n.weight * torch.tanh(0.37 * x) + n.bias)
    d = make(norm_fn="derf").model.norm
    assert d.bias is None and d.shift.item() == 0.0
    with torch.no_grad():
        d.alpha.fill_(0.6), d.shift.fill_(0.1)
    torch.testing.assert_close(d(x), d.weight * torch.erf(0.6 * x + 0.1))
    assert not hasattr(make(norm_fn="dyt", embed_scale=False).model, "embed_scale")


def _twin_config(model, config_cls, **extra):
    c = model.config
    keys = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "vocab_size", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings"]
    return config_cls(**{k: getattr(c, k) for k in keys}, rope_parameters=c.rope_parameters, **extra)


def test_reordered_ln_with_full_qk_norm_equals_transformers_olmo2():
    """OLMo 2 = reordered norm + QK-norm over the full q / k width; only the two output norms are named apart."""
    model = make(norm_type="reordered_ln", qk_norm="full")
    perturb(model)
    ref = Olmo2ForCausalLM(_twin_config(model, Olmo2Config, attention_bias=False)).eval()
    renamed = {k.replace("post_attn_out_norm", "post_attention_layernorm")
               .replace("post_mlp_out_norm", "post_feedforward_layernorm"): v for k, v in model.state_dict().items()}
    ref.load_state_dict(renamed, strict=True)
    ids = torch.randint(0, 96, (2, 11))
    torch.testing.assert_close(model.eval()(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_pre_ln_with_head_qk_norm_equals_transformers_qwen3_with_the_same_names():
    model = make(qk_norm="head")
    perturb(model)
    ref = Qwen3ForCausalLM(_twin_config(model, Qwen3Config, head_dim=8, attention_bias=False)).eval()
    ref.load_state_dict(model.state_dict(), strict=True)  # q_norm / k_norm: Qwen3's own names and shapes
    ids = torch.randint(0, 96, (2, 11))
    torch.testing.assert_close(model.eval()(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_pre_ln_with_every_axis_at_its_default_is_still_llama():
    model = make()
    ref = LlamaForCausalLM(_twin_config(model, LlamaConfig))
    ref.load_state_dict(model.state_dict(), strict=True)
    ids = torch.randint(0, 96, (2, 11))
    torch.testing.assert_close(model.eval()(input_ids=ids).logits, ref.eval()(input_ids=ids).logits,
                               rtol=1e-6, atol=1e-6)


LLAMA_LAYER_NAMES = {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                     "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
                     "input_layernorm.weight", "post_attention_layernorm.weight"}
NEW_LAYER_PREFIXES = ("post_attn_out_norm.", "post_mlp_out_norm.", "self_attn.q_norm.", "self_attn.k_norm.",
                      "self_attn.v_norm.", "attn_gain.", "mlp_gain.", "gpas_gate.", "input_layernorm.",
                      "post_attention_layernorm.")


@pytest.mark.parametrize("norm_type,axes", COMBOS)
def test_llama_names_keep_their_meaning_and_new_parameters_get_new_names(norm_type, axes):
    model = make(norm_type=norm_type, **axes)
    for name, p in model.named_parameters():
        if name.startswith("model.layers."):
            local = name.split(".", 3)[3]
            assert local in LLAMA_LAYER_NAMES or local.startswith(NEW_LAYER_PREFIXES), name
            if local in LLAMA_LAYER_NAMES and "norm" in local:
                assert p.shape == (32,), name  # a Llama norm weight is always the per-channel gain
    assert not list(model.named_buffers())


ZOO = [("reordered_ln", {"qk_norm": "full"}), ("hybrid_ln", {}), ("hybrid_ln_star", {"norm_fn": "derf"}),
       ("lns", {"residual": "gpas", "qk_norm": "head"}), ("mix_ln", {"norm_fn": "dyt", "residual": "layerscale"}),
       ("deepnorm", {"residual": "rezero", "norm_fn": "layernorm"}), ("pre_ln", {"residual": "depth_scaled"}),
       ("peri_ln", {"embed_norm": False, "residual": "gpas"})]


@pytest.mark.parametrize("norm_type,axes", ZOO)
def test_generate_with_cache_equals_manual_greedy(norm_type, axes):
    model = make(norm_type=norm_type, **axes)
    perturb(model)
    model.eval()
    assert_cached_generate_is_greedy(model)


@pytest.mark.parametrize("norm_type,axes", ZOO)
def test_save_load_round_trip_and_meta_init(norm_type, axes, tmp_path):
    model = make(norm_type=norm_type, **axes)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    perturb(model)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is CodLlamaForCausalLM
    for (n1, a), (n2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(a, b), n1
    # meta device -> to_empty -> reset_weights: every deterministic init (norms, alphas, gains, gates) restored
    with torch.device("meta"):
        meta = build_model(ModelConfig(**{**SHAPE, "norm_type": norm_type, **axes}), 96)
    meta.to_empty(device="cpu")
    meta.reset_weights()
    for name, value in meta.state_dict().items():
        if value.ndim <= 1:
            assert torch.equal(value, fresh[name]), name


@pytest.mark.parametrize("norm_type,axes", ZOO)
def test_block_compiles_without_graph_breaks(norm_type, axes):
    torch._dynamo.reset()
    model = make(norm_type=norm_type, **axes)
    x = torch.randn(2, 6, 32, requires_grad=True)
    rope = (torch.ones(1, 6, 8), torch.zeros(1, 6, 8))
    for layer in model.model.layers:
        compiled = torch.compile(layer, fullgraph=True, backend="eager")  # fullgraph: a graph break is an error
        compiled(x, rope).sum().backward()


@pytest.mark.parametrize("overrides,needle", [
    (dict(norm_type="hybrid_ln", qk_norm="none"), "qk_norm=none does not combine with it; use qk_norm=head"),
    (dict(norm_type="deepnorm", residual="depth_scaled"), "depth_scaled combines with every other placement: "
     "pre_ln, post_ln, mix_ln, lns, sandwich_ln"),
    (dict(norm_bias=True), "norm_bias=true needs a norm function with a bias: norm_fn=layernorm, dyt or derf"),
    (dict(depth_hparams=True), "belongs to residual=depth_scaled"),
    (dict(residual="depth_scaled", depth_hparams=True, scaled_init=True), "scaled_init=true does not combine"),
    (dict(norm_fn="batchnorm"), "unknown norm_fn 'batchnorm'; valid: rmsnorm, layernorm, dyt, derf"),
    (dict(residual="highway"), "unknown residual 'highway'; valid: plain, layerscale, rezero, depth_scaled, gpas"),
    (dict(qk_norm="both"), "unknown qk_norm 'both'; valid: none, head, full"),
    (dict(depth_alpha=-1.0), "depth_alpha must be >= 0"),
    (dict(norm_fn="dyt", norm_alpha_attn=0.0), "norm_alpha_attn must be > 0"),
])
def test_combinations_that_make_no_sense_are_refused_up_front(overrides, needle):
    with pytest.raises(ConfigError) as err:
        ModelConfig(**overrides).validate()
    assert needle in str(err.value)


def test_hybrid_ln_defaults_to_per_head_qkv_norms():
    model = make(norm_type="hybrid_ln")
    attn = model.model.layers[0].self_attn
    assert attn.q_norm.weight.shape == attn.k_norm.weight.shape == attn.v_norm.weight.shape == (8,)
    assert not hasattr(model.model.layers[0], "input_layernorm")  # HybridNorm: no pre-norm before attention
    star = make(norm_type="hybrid_ln_star").model.layers
    assert hasattr(star[0], "input_layernorm") and not hasattr(star[1], "input_layernorm")


@pytest.mark.parametrize("norm_type,axes", ONE_AXIS[::3] + COMBOS)
def test_parameter_count_without_building_is_exact(norm_type, axes):
    from cod_train.model import total_params

    model = make(norm_type=norm_type, **axes)
    assert total_params(model.config) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("norm_type,axes", ZOO)
def test_activation_checkpointing_keeps_loss_and_gradients(norm_type, axes):
    """Full activation checkpointing as the engines apply it: the recomputed forward (GPAS's stop-gradient
    included) gives the same loss and gradients."""
    from cod_train.engine.parallelize import apply_activation_checkpointing

    ids = torch.randint(0, 96, (2, 10))
    grads = []
    for ac in (False, True):
        model = make(norm_type=norm_type, **axes)
        perturb(model)
        if ac:
            apply_activation_checkpointing(model, "full")
        calls: list[int] = []
        # a pre-hook: the recompute stops inside the MLP once its last saved tensor is rebuilt
        model.model.layers[0].mlp.register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        assert len(calls) == (2 if ac else 1)  # checkpointed: the block's forward runs again in the backward
        grads.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=0, atol=0)
    for name, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], g, rtol=1e-6, atol=1e-7, msg=name)
