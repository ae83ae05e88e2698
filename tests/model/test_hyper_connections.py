"""Hyper-Connections (residual=hc, static and dynamic) and mHC (residual=mhc) against the plain float64
formulation of tests/helpers/hc_reference.py (written from the papers: streams as a Python list, the HC matrix
entries indexed by hand, Sinkhorn-Knopp from exp()), with every connection weight moved off its init; HC at init
against the Pre-LN model; the mHC block and head against transformers' own DeepseekV4HyperConnection /
DeepseekV4HyperHead; generate, save/load, meta init, activation checkpointing, compile; refusals."""

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.models.deepseek_v4.configuration_deepseek_v4 import DeepseekV4Config
from transformers.models.deepseek_v4.modeling_deepseek_v4 import (
    DeepseekV4HyperConnection,
    DeepseekV4HyperHead,
)

from cod_train.config import ConfigError, ModelConfig
from cod_train.model import CodLlamaForCausalLM, build_model
from cod_train.model.hyper_connections import (
    hyper_connection_map,
    hyper_connection_stats,
    hyper_sublayer,
    sinkhorn,
)
from tests.helpers.generate import assert_cached_generate_is_greedy
from tests.helpers.hc_reference import EPS, hc_reference_logits, perturb_hc, plain_sinkhorn
from tests.helpers.zoo import SHAPE, make
from tests.model.zoo_reference import norm, params

SCHEMES = [
    ("pre_ln", dict(residual="hc")),
    ("lns", dict(residual="hc", hc_streams=2)),
    ("pre_ln", dict(residual="hc", hc_dynamic=True, hc_collapse="mean")),
    ("lns", dict(residual="hc", hc_dynamic=True, norm_fn="layernorm", hc_streams=3)),
    ("pre_ln", dict(residual="mhc")),
    ("lns", dict(residual="mhc", hc_streams=2, hc_collapse="sum", qk_norm="head")),
    ("pre_ln", dict(residual="mhc", hc_sinkhorn_iters=5, hc_collapse="mean", norm_fn="dyt")),
]
IDS = [f"{nt}-" + "-".join(f"{k}={v}" for k, v in ax.items()) for nt, ax in SCHEMES]


@pytest.mark.parametrize("norm_type,axes", SCHEMES, ids=IDS)
def test_scheme_matches_the_plain_formulation(norm_type, axes):
    model = make(norm_type=norm_type, **axes)
    perturb_hc(model)
    model.eval()
    ids = torch.randint(0, 96, (9,))
    want = hc_reference_logits(model, ids)
    torch.testing.assert_close(model(input_ids=ids[None]).logits[0].double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("axes", [dict(residual="hc", hc_dynamic=True), dict(residual="mhc", hc_streams=3)])
def test_gradients_match_the_plain_formulation(axes):
    """Through Sinkhorn-Knopp and the tanh terms into every connection parameter."""
    model = make(**axes)
    perturb_hc(model)
    ids = torch.randint(0, 96, (9,))
    sd = params(model, requires_grad=True)
    hc_reference_logits(model, ids, sd).pow(2).mean().backward()
    model(input_ids=ids[None]).logits.double().pow(2).mean().backward()
    # fp32 against float64, relative to the gradient's largest entry (a wrong term is off by O(1); fp32 rounding
    # of small gradients reaches ~3e-4 of their size, or ~1e-8 of the model's largest gradient)
    floor = 1e-6 * max(g.grad.abs().max().item() for g in sd.values())
    for name, p in model.named_parameters():
        want = sd[name].grad
        assert (p.grad.double() - want).abs().max() <= 1e-3 * want.abs().max() + floor, name


@pytest.mark.parametrize("axes", [dict(hc_collapse="mean"), dict(hc_collapse="mean", hc_dynamic=True),
                                  dict(hc_streams=3, norm_type="lns", hc_collapse="mean"),
                                  dict(rms_norm_eps=1e-30)])
def test_hc_at_init_gives_the_pre_ln_logits(axes):
    """The paper's Pre-Norm-equivalent init: every stream stays a copy, each sub-layer reads one of them. The sum
    collapse is n x the Pre-LN stream, which the final RMSNorm undoes up to its eps (hence eps ~ 0 there)."""
    hc = make(residual="hc", **axes)
    base = make(**{k: v for k, v in axes.items() if k in ("norm_type", "rms_norm_eps")})
    missing, unexpected = hc.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all("_hc." in k for k in missing)
    ids = torch.randint(0, 96, (2, 9))
    torch.testing.assert_close(hc(input_ids=ids).logits, base(input_ids=ids).logits, rtol=1e-5, atol=1e-6)


def test_sinkhorn_is_doubly_stochastic_and_converges_to_the_paper_s():
    """Columns are normalized last: they sum to 1 whatever the logits. Rows converge with the iterations: within
    1e-5 after the default 20 at logits of spread 0.5, after 50 at spread 1 (spread 2+ needs hundreds: see
    docs/design.md, mHC)."""
    g = torch.Generator().manual_seed(0)
    for n, scale, iters in ((2, 0.5, 20), (4, 0.5, 20), (8, 0.5, 20), (2, 1.0, 50), (4, 1.0, 50), (8, 1.0, 20)):
        z = scale * torch.randn(256, n, n, generator=g, dtype=torch.float64)
        m = sinkhorn(z.float(), iters)
        assert (m.sum(-1) - 1).abs().max() < 1e-5 and (m.sum(-2) - 1).abs().max() < 1e-5, (n, scale)
        assert (m > 0).all()
        torch.testing.assert_close(m.double(), plain_sinkhorn(z, iters), rtol=1e-5, atol=1e-6)
    wide = sinkhorn(3.0 * torch.randn(256, 4, 4, generator=g), 20)
    assert (wide.sum(-2) - 1).abs().max() < 1e-5  # columns still exact; rows are not (~5e-2)


def test_sinkhorn_gradient_is_the_autograd_gradient_of_the_plain_iteration():
    """sinkhorn's hand-written backward against autograd through the plain formulation, and gradcheck."""
    g = torch.Generator().manual_seed(1)
    for n, iters in ((2, 1), (4, 3), (4, 20)):
        z = torch.randn(5, n, n, generator=g, dtype=torch.float64, requires_grad=True)
        w = torch.randn(5, n, n, generator=g, dtype=torch.float64)
        got = torch.autograd.grad((sinkhorn(z, iters) * w).sum(), z)[0]
        want = torch.autograd.grad((plain_sinkhorn(z, iters) * w).sum(), z)[0]
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
        assert torch.autograd.gradcheck(lambda z, iters=iters: sinkhorn(z, iters), (z,))


def _v4_config(cfg) -> DeepseekV4Config:
    return DeepseekV4Config(hidden_size=cfg.hidden_size, hc_mult=cfg.hc_streams, hc_sinkhorn_iters=cfg.hc_sinkhorn_iters,
                            hc_eps=EPS, rms_norm_eps=cfg.rms_norm_eps)


def test_mhc_block_and_head_equal_transformers_deepseek_v4():
    model = make(residual="mhc")
    perturb_hc(model)
    ours, head = model.model.layers[1].mlp_hc, model.model.hc_head
    v4 = DeepseekV4HyperConnection(_v4_config(model.config))
    v4_head = DeepseekV4HyperHead(_v4_config(model.config))
    v4.load_state_dict({"fn": ours.fn, "base": ours.base, "scale": ours.scale})
    v4_head.load_state_dict({k: v for k, v in head.state_dict().items()})
    streams = torch.randn(2, 5, 4, 32)
    post, comb, collapsed = v4(streams)
    mlp = model.model.layers[1].mlp
    with torch.no_grad():
        got = hyper_sublayer(ours, streams, mlp)
        # DeepseekV4DecoderLayer.forward's update: post * F(collapsed) + comb^T @ streams
        want = post.unsqueeze(-1) * mlp(collapsed).unsqueeze(-2) + torch.matmul(comb.transpose(-1, -2), streams)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        pre, our_post, res = ours(streams)
        torch.testing.assert_close((res, our_post), (comb, post))
        torch.testing.assert_close(head(streams), v4_head(streams))


STAT_SCHEMES = [dict(residual="hc", hc_streams=3), dict(residual="hc", hc_dynamic=True),
                dict(residual="mhc", hc_streams=3, hc_sinkhorn_iters=7)]


def _static_by_hand(sd, p, cfg):
    """The input-independent part of (A_m, B, A_r): HC's static parameters; mHC's mappings of a zero projection."""
    n = cfg.hc_streams
    if cfg.residual == "hc":
        a = sd[p + "static_alpha"]
        return a[:, 0], sd[p + "static_beta"], a[:, 1:]
    b = sd[p + "base"]
    return (torch.sigmoid(b[:n]) + EPS, 2 * torch.sigmoid(b[n:2 * n]),
            plain_sinkhorn(b[2 * n:].view(n, n), cfg.hc_sinkhorn_iters))


@pytest.mark.parametrize("axes", STAT_SCHEMES, ids=["hc3", "dhc", "mhc3"])
def test_connection_stats_match_the_plain_formulation(axes):
    """Per layer: read weights pre_j, write weights post_j, ||res - I||_F; static part by hand from the parameters,
    token means from the plain forward's weights (input-dependent schemes)."""
    model = make(**axes)
    perturb_hc(model)
    cfg, sd, n, L = model.config, params(model), model.config.hc_streams, model.config.num_hidden_layers
    ids = torch.randint(0, 96, (9,))
    log = []
    hc_reference_logits(model, ids, log=log)
    got = hyper_connection_stats(model, {"input_ids": ids[None]})
    want = {}
    for k in range(2 * L):
        sub, p = ("attn", "mlp")[k % 2], f"model.layers.{k // 2}.{('attn', 'mlp')[k % 2]}_hc."
        per_token = log[k][:3]
        for suffix, (pre, post, res) in (("", _static_by_hand(sd, p, cfg)),
                                         (".tokens", tuple(w.mean(0) for w in per_token))):
            for j in range(n):
                want.setdefault(f"{sub}_hc.read.{j}{suffix}", []).append(float(pre[j]))
                want.setdefault(f"{sub}_hc.write.{j}{suffix}", []).append(float(post[j]))
            if suffix:
                dist = torch.stack([torch.sqrt(((r - torch.eye(n)) ** 2).sum()) for r in per_token[2]]).mean()
            else:
                dist = torch.sqrt(((res - torch.eye(n)) ** 2).sum())
            want.setdefault(f"{sub}_hc.res_dist{suffix}", []).append(float(dist))
    if not (cfg.residual == "mhc" or cfg.hc_dynamic):
        want = {k: v for k, v in want.items() if not k.endswith(".tokens")}  # static HC: nothing input-dependent
    assert got.keys() == want.keys()
    for key, values in want.items():
        assert got[key] == pytest.approx(values, rel=1e-4, abs=1e-5), key
    assert any(abs(v - 1.0) > 0.05 for k, v in got.items() if ".write." in k for v in v)  # off their init


@pytest.mark.parametrize("axes,seq", [(dict(residual="hc", hc_streams=3), 6), (dict(residual="hc", hc_dynamic=True), 1),
                                      (dict(residual="mhc", hc_streams=3), 1)], ids=["hc3", "dhc", "mhc3"])
def test_connection_map_gives_each_input_as_a_sum_of_the_earlier_outputs(axes, seq):
    """The unfolded map M: the plain forward's input of sub-layer k is sum_s M[k, s] f_s (f_0 the embedding, f_s
    sub-layer s's output), the collapsed stream likewise. Exact for static weights, and for input-dependent ones on
    a one-token batch (the token means are then that token's weights)."""
    model = make(**axes)
    perturb_hc(model)
    model.eval()
    ids = torch.randint(0, 96, (seq,))
    log = []
    hc_reference_logits(model, ids, log=log)
    M = torch.tensor(hyper_connection_map(model, {"input_ids": ids[None]}), dtype=torch.float64)
    sources = [params(model)["model.embed_tokens.weight"][ids]] + [entry[4] for entry in log[:-1]]
    readers = [entry[3] for entry in log[:-1]] + [log[-1][1]]
    assert M.shape == (len(readers), len(sources))
    for k, want in enumerate(readers):
        got = sum(M[k, s] * sources[s] for s in range(len(sources)))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=f"reader {k}")
    assert (M.triu(1) == 0).all() and (M - torch.ones_like(M).tril()).abs().max() > 0.1  # causal, not Pre-LN


ZOO = [("pre_ln", dict(residual="hc", hc_dynamic=True)), ("lns", dict(residual="mhc", hc_streams=2))]


@pytest.mark.parametrize("norm_type,axes", ZOO)
def test_generate_with_cache_equals_manual_greedy(norm_type, axes):
    model = make(norm_type=norm_type, **axes)
    perturb_hc(model)
    model.eval()
    assert_cached_generate_is_greedy(model)


@pytest.mark.parametrize("norm_type,axes", ZOO)
def test_save_load_round_trip_and_meta_init(norm_type, axes, tmp_path):
    model = make(norm_type=norm_type, **axes)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    perturb_hc(model)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is CodLlamaForCausalLM and loaded.config.hc_streams == model.config.hc_streams
    for (n1, a), (n2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(a, b), n1
    with torch.device("meta"):
        meta = build_model(ModelConfig(**{**SHAPE, "norm_type": norm_type, **axes}), 96)
    meta.to_empty(device="cpu")
    meta.reset_weights()
    for name, value in meta.state_dict().items():
        if "static_" in name or "dynamic_" in name or value.ndim <= 1:  # deterministic inits, HC's one-hots included
            assert torch.equal(value, fresh[name]), name
    fn = meta.model.layers[0].attn_hc
    if hasattr(fn, "fn"):  # mHC's projection: normal(0, initializer_range), not left empty
        assert abs(fn.fn.std().item() - 0.02) < 0.003


@pytest.mark.parametrize("norm_type,axes", ZOO)
def test_block_compiles_without_graph_breaks_and_checkpointing_keeps_gradients(norm_type, axes):
    torch._dynamo.reset()
    model = make(norm_type=norm_type, **axes)
    perturb_hc(model)
    n = model.config.hc_streams
    x = torch.randn(2, 6, n, 32, requires_grad=True)
    rope = (torch.ones(1, 6, 8), torch.zeros(1, 6, 8))
    for layer in model.model.layers:
        compiled = torch.compile(layer, fullgraph=True, backend="eager")  # fullgraph: a graph break is an error
        compiled(x, rope).sum().backward()
    ids = torch.randint(0, 96, (2, 9))
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    want = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    model.train()
    model.gradient_checkpointing_enable()
    model(input_ids=ids, labels=ids).loss.backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[k], msg=k)


@pytest.mark.parametrize("overrides,needle", [
    (dict(residual="hc", norm_type="post_ln"), "residual=hc is defined on Pre-Norm blocks (the HC / mHC papers): "
     "it combines with norm_type=pre_ln or lns, not with norm_type=post_ln"),
    (dict(residual="mhc", norm_type="peri_ln"), "residual=mhc is defined on Pre-Norm blocks"),
    (dict(residual="mhc", norm_type="mix_ln"), "not with norm_type=mix_ln"),
    (dict(residual="mhc", hc_dynamic=True), "hc_dynamic=true (input-dependent HC weights) belongs to residual=hc"),
    (dict(hc_collapse="mean"), "hc_collapse=mean belongs to residual=hc or mhc"),
    (dict(residual="hc", hc_collapse="max"), "unknown hc_collapse 'max'; valid: sum, mean, head"),
    (dict(residual="hc", hc_streams=0), "hc_streams must be a positive integer"),
    (dict(residual="mhc", hc_sinkhorn_iters=0), "hc_sinkhorn_iters must be a positive integer"),
])
def test_unsupported_combinations_are_refused_up_front(overrides, needle):
    with pytest.raises(ConfigError) as err:
        ModelConfig(**overrides).validate()
    assert needle in str(err.value)


def test_training_diag_row_and_cod_analyze_entry_carry_the_connection_weights(tmp_path):
    """The in-training diag row: the static part and the token means over the diag forward's real tokens (the
    plain forward row by row, padding left out); cod-analyze's model entry and its figure."""
    from cod_train.eval.depth_io import add_scheme_outputs, model_info
    from cod_train.eval.depth_train import training_diagnostics
    from cod_train.report.plots import plot_hyper_connections

    model = make(residual="mhc", hc_streams=2)
    perturb_hc(model)
    ids = torch.randint(0, 96, (2, 9))
    labels = ids.clone()
    labels[1, 5:] = -100  # row 1: 6 real tokens (the 6th is the target of the 5th's label), then padding
    row = training_diagnostics(model, {"input_ids": ids, "labels": labels})
    sd, cfg = params(model), model.config
    logs = []
    for r, length in ((0, 9), (1, 6)):
        log = []
        hc_reference_logits(model, ids[r, :length], log=log)
        logs.append(log)
    for k, sub in enumerate(["attn", "mlp"] * cfg.num_hidden_layers):
        pre = torch.cat([log[k][0] for log in logs]).mean(0)
        assert row[f"diag/{sub}_hc.read.1.tokens"][k // 2] == pytest.approx(float(pre[1]), rel=1e-4)
        static = _static_by_hand(sd, f"model.layers.{k // 2}.{sub}_hc.", cfg)
        assert row[f"diag/{sub}_hc.write.0"][k // 2] == pytest.approx(float(static[1][0]), rel=1e-5)
    info = model_info(model, "spec", "mhc")
    add_scheme_outputs(model, info, {"input_ids": ids[:1], "labels": labels[:1]})
    assert info["learned_scalars"]["mlp_hc.res_dist.tokens"] == pytest.approx(
        [float(torch.stack([torch.linalg.matrix_norm(r - torch.eye(2)) for r in logs[0][2 * i + 1][2]]).mean())
         for i in range(cfg.num_hidden_layers)], rel=1e-4)
    assert len(info["hc_connection_map"]) == 2 * cfg.num_hidden_layers + 1
    plain = {**model_info(make(), "spec", "plain"), "hc_connection_map": []}
    png = plot_hyper_connections([info, plain], tmp_path / "hc.png")
    assert png is not None and png.stat().st_size > 10_000
    assert plot_hyper_connections([plain], tmp_path / "none.png") is None


def test_cod_analyze_draws_the_connection_figure_for_hyper_connection_models_only(tmp_path):
    import json

    from cod_train.runs.analyze import AnalyzeConfig, AnalyzeOptions, run
    from tests.helpers.analyze_runs import text_file, tiny_tokenizer

    dirs = []
    for name, axes in (("mhc", dict(residual="mhc", hc_streams=2)), ("plain", {})):
        torch.manual_seed(0)
        model = build_model(ModelConfig(**{**SHAPE, **axes}), 32)
        model.save_pretrained(tmp_path / name)
        tiny_tokenizer(tmp_path).save_pretrained(tmp_path / name)
        dirs.append(str(tmp_path / name))
    opts = AnalyzeOptions(diagnostics=["variance"], text_path=[str(text_file(tmp_path))], eval_tokens=64, seq_len=16,
                          progress=False)
    written = run(AnalyzeConfig(checkpoint=dirs, run_dir=str(tmp_path / "out"), analyze=opts))
    assert sorted(p.name for p in written) == ["hyper_connections.png", "layer_variance.json", "layer_variance.png"]
    mhc, plain = json.loads((tmp_path / "out" / "analysis" / "layer_variance.json").read_text())["models"]
    assert len(mhc["hc_connection_map"]) == 2 * SHAPE["num_hidden_layers"] + 1 and "hc_connection_map" not in plain
    assert len(mhc["learned_scalars"]["attn_hc.read.1.tokens"]) == SHAPE["num_hidden_layers"]


DEPTH_ZOO = [dict(residual="hc", hc_streams=3), dict(residual="hc", hc_dynamic=True, hc_collapse="mean"),
             dict(residual="mhc", hc_streams=2)]


@pytest.mark.parametrize("axes", DEPTH_ZOO, ids=["hc3", "dhc-mean", "mhc2"])
def test_depth_analyses_on_the_streams_match_the_plain_formulation(axes):
    """Pruning (prefix-cached and plain), the skip effect and the logit lens of a hyper-connection model: each
    state is the collapsed stream (what the final norm would see there); removing layer l lets the n streams pass
    it unchanged. Against the plain formulation run without that layer."""
    from cod_train.eval.depth_analyses import logit_lens, removal_analyses
    from cod_train.eval.diagnostics import layer_pruning

    model = make(**axes)
    perturb_hc(model)
    model.eval()
    L = model.config.num_hidden_layers
    ids = torch.randint(0, 96, (1, 9))
    labels = torch.cat([ids[:, 1:], torch.full((1, 1), -100)], dim=1)
    batch = {"input_ids": ids, "labels": labels}
    sd = params(model)

    def plain(skip=None):
        states = []
        logp = torch.log_softmax(hc_reference_logits(model, ids[0], sd, skip=skip, states=states), -1)
        return states, logp

    full, full_logp = plain()
    got = removal_analyses(model, [batch], layers=None, skip_effect=True, progress=False)
    cached = layer_pruning(model, [batch], progress=False)
    plain_pruning = layer_pruning(model, [batch], method="plain", progress=False)
    base = -full_logp[:-1].gather(-1, ids[0, 1:, None]).mean()
    assert cached["base_loss"] == pytest.approx(base.item(), rel=1e-5)
    for skip in range(L):
        cut, cut_logp = plain(skip)
        loss = -cut_logp[:-1].gather(-1, ids[0, 1:, None]).mean()
        assert cached["loss"][skip] == pytest.approx(loss.item(), rel=1e-5), skip
        assert plain_pruning["loss"][skip] == pytest.approx(loss.item(), rel=1e-5), skip
        kl = (full_logp.exp() * (full_logp - cut_logp)).sum(-1).mean()
        assert got["skip_effect"]["final_kl"][skip] == pytest.approx(kl.item(), rel=1e-3), skip  # fp32 KL ~1e-3
        for j in range(L):
            change = got["skip_effect"]["change"][skip][j]
            if j <= skip:
                assert change is None
            else:
                rel = ((cut[j + 1] - full[j + 1]).norm(dim=-1) / full[j + 1].norm(dim=-1)).mean()
                assert change == pytest.approx(rel.item(), rel=1e-4), (skip, j)
    lens = logit_lens(model, [batch], progress=False)
    for layer, state in enumerate(full):
        logp = torch.log_softmax(norm(state, sd, "model.norm", model.config) @ sd["lm_head.weight"].T, -1)
        kl = (full_logp.exp() * (full_logp - logp)).sum(-1).mean()
        assert lens["kl"][layer] == pytest.approx(kl.item(), rel=1e-3, abs=1e-7), layer
        top1 = (full_logp.argmax(-1) == logp.argmax(-1)).double().mean()
        assert lens["top1"][layer] == pytest.approx(top1.item()), layer


@pytest.mark.parametrize("axes", [dict(residual="hc"), dict(residual="hc", hc_dynamic=True, norm_fn="derf"),
                                  dict(residual="mhc"), dict(residual="mhc", hc_collapse="sum", hc_streams=3)],
                         ids=["hc", "dhc-derf", "mhc", "mhc3-sum"])
def test_flops_and_parameters_by_hand_and_by_torch_s_flop_counter(axes):
    """Per-token multiply-adds counted by hand (n = streams, d = width, 2L sub-layers): read n d, mix n^2 d, write
    n d, weights (DHC n d (n+1) + n d, mHC n d (n+2) n), collapse (head: n d n + n d; sum / mean: n d). The model's
    forward under torch's FlopCounterMode, minus pre_ln's, gives 2 x the same count less what the counter skips:
    elementwise products (the write post_i F, the sum collapse). DHC's W_a and w_b are one matrix product."""
    from torch.utils.flop_counter import FlopCounterMode

    from cod_train.model import flops_per_token, total_params
    from cod_train.model.flops import extra_macs_per_token

    model, base = make(**axes), make(**{k: v for k, v in axes.items() if k == "norm_fn"})
    cfg, d, L, T = model.config, SHAPE["hidden_size"], SHAPE["num_hidden_layers"], 8
    n = cfg.hc_streams
    weights = {"mhc": n * d * (n + 2) * n, "hc": (n * d * (n + 1) + n * d) if cfg.hc_dynamic else 0}[cfg.residual]
    head = n * d * n + n * d if cfg.residual_scheme.collapse(cfg) == "head" else n * d
    macs = 2 * L * (n * d + n * n * d + n * d + weights) + head
    assert extra_macs_per_token(cfg) == macs
    assert flops_per_token(cfg, T) - flops_per_token(base.config, T) == 6 * macs
    ids = torch.randint(0, 96, (1, T))
    counted = []
    for m in (model, base):
        with FlopCounterMode(display=False) as counter:
            m(input_ids=ids)
        counted.append(counter.get_total_flops())
    skipped = 2 * L * n * d + (n * d if cfg.residual_scheme.collapse(cfg) != "head" else 0)
    assert counted[0] - counted[1] == 2 * T * (macs - skipped)
    assert total_params(cfg) == sum(p.numel() for p in model.parameters())
