"""Attention Residuals (residual=attnres | block_attnres) against a plain formulation written here from the
official PyTorch pseudocode (MoonshotAI/Attention-Residuals: V = stack(sources), K = RMSNorm(V), logits = w . K,
h = softmax over sources of the logits, applied to V; Block AttnRes keeps the completed blocks and the partial sum,
pushing the partial at each block boundary), in float64 with every parameter off its init; and through generate,
save/load, meta init, compile, activation checkpointing, the depth diagnostics and labels."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from cod_train.config import ConfigError, ModelConfig
from cod_train.model import CodLlamaForCausalLM, build_model, zoo
from tests.helpers.generate import assert_cached_generate_is_greedy
from tests.helpers.zoo import perturb
from tests.model.zoo_reference import attention, mlp, norm, params

SHAPE = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
SCHEMES = {"full": dict(residual="attnres"), "block2": dict(residual="block_attnres", attnres_blocks=2),
           "block4_lns": dict(residual="block_attnres", attnres_blocks=4, norm_type="lns")}


def make(**overrides) -> CodLlamaForCausalLM:
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**SHAPE, **overrides}), 96)


def perturb_attnres(model: CodLlamaForCausalLM, seed: int = 3) -> None:
    """Every weight off its init; the pseudo-queries (init 0) large enough that the weights are far from uniform."""
    perturb(model, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".query"):
                p.copy_(0.7 * torch.randn(p.shape, generator=g))
            elif name.endswith(".key_norm"):
                p.add_(0.3 * torch.randn(p.shape, generator=g))


# -- the plain formulation (float64, one sequence [T]) --

def depth_attention(sources, sd, prefix, eps, log=None):
    """The official block_attn_res: stack the sources, RMSNorm them as keys, softmax over the source axis."""
    V = torch.stack(sources)  # [S, T, d]
    K = V / torch.sqrt(V.pow(2).mean(-1, keepdim=True) + eps) * sd[prefix + ".key_norm"]
    weights = torch.einsum("d,std->st", sd[prefix + ".query"], K).softmax(0)
    if log is not None:
        log.append(weights.detach())
    return torch.einsum("st,std->td", weights, V)


def reference_logits(model, ids, sd=None, log=None, skip=()):
    """Full AttnRes: sources = [embedding, each sub-layer output]; Block AttnRes: sources = blocks + [partial],
    the partial pushed to the blocks before the first layer of each new block. `skip`: 0-based layers removed."""
    cfg = model.config
    sd = params(model) if sd is None else sd
    eps, L = cfg.rms_norm_eps, cfg.num_hidden_layers
    s = 1.0
    x = sd["model.embed_tokens.weight"][ids]
    block = cfg.residual == "block_attnres"
    blocks, partial, current = [x], None, 1
    for i in range(L):
        if i in skip:
            continue
        p = f"model.layers.{i}."
        s = 1.0 / (i + 1) ** 0.5 if cfg.norm_type == "lns" else 1.0
        if block:
            mine = i * cfg.attnres_blocks // L + 1
            if mine != current and partial is not None:
                blocks, partial = blocks + [partial], None
            current = mine
        for sub, fn in (("attn", lambda h, p=p, s=s: attention(s * norm(h, sd, p + "input_layernorm", cfg), sd,
                                                         p + "self_attn.", cfg)),
                        ("mlp", lambda h, p=p, s=s: mlp(s * norm(h, sd, p + "post_attention_layernorm", cfg), sd,
                                                   p + "mlp."))):
            sources = blocks + ([partial] if partial is not None else []) if block else blocks
            f = fn(depth_attention(sources, sd, p + f"attnres_{sub}", eps, log))
            if block:
                partial = f if partial is None else partial + f
            else:
                blocks = blocks + [f]
    final = blocks + ([partial] if partial is not None else []) if block else blocks
    h = depth_attention(final, sd, "model.attnres_out", eps, log)
    return norm(h, sd, "model.norm", cfg) @ sd["lm_head.weight"].T


@pytest.mark.parametrize("name", SCHEMES)
def test_logits_and_gradients_match_the_official_pseudocode(name):
    model = make(**SCHEMES[name])
    perturb_attnres(model)
    ids = torch.randint(0, 96, (9,))
    sd = params(model, requires_grad=True)
    want = reference_logits(model, ids, sd)
    got = model(input_ids=ids[None]).logits[0]
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    want.pow(2).mean().backward()
    got.double().pow(2).mean().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad.double(), sd[n].grad, rtol=1e-4, atol=1e-7, msg=n)


@pytest.mark.parametrize("name", ["full", "block2"])
def test_paper_init_gives_uniform_weights_over_the_sources(name):
    """Pseudo-queries 0: every reader averages its sources (full: layer 1's attention reads the embedding alone,
    the final norm reads the mean of the embedding and all 2L outputs)."""
    from cod_train.model.attn_res import record_attn_res_weights

    model = make(**SCHEMES[name])
    assert all(float(p.detach().abs().sum()) == 0 for n, p in model.named_parameters() if n.endswith(".query"))
    maps = record_attn_res_weights(model.model, {"input_ids": torch.randint(0, 96, (2, 7))}).maps()
    assert maps is not None
    for row in maps[0]:
        read = [v for v in row if v is not None]
        assert read == pytest.approx([1.0 / len(read)] * len(read), abs=1e-6)
    n_sources = [len([v for v in row if v is not None]) for row in maps[0]]
    assert n_sources == ([1, 2, 3, 4, 5, 6, 7, 8, 9] if name == "full" else [1, 2, 2, 2, 2, 3, 3, 3, 3])
    assert all(v == pytest.approx(0.0, abs=1e-6) for row in maps[1] for v in row if v is not None)  # no spread


def test_the_stream_keeps_references_not_copies():
    """Each sub-layer appends its output as is: the stream after layer l holds the same tensor objects as before
    plus two; nothing is stacked (the weighted sum is a running sum over the references)."""
    from cod_train.model.history import ResidualHistory

    model = make(residual="attnres")
    seen: list[ResidualHistory] = []
    for layer in model.model.layers:
        layer.register_forward_hook(lambda _m, _a, out: seen.append(out))
    model(input_ids=torch.randint(0, 96, (1, 5)))
    for before, after in zip(seen, seen[1:], strict=False):
        assert len(after.outputs) == len(before.outputs) + 2
        assert all(a is b for a, b in zip(before.outputs, after.outputs, strict=False))


@pytest.mark.parametrize("name", ["full", "block2"])
def test_generate_with_cache_equals_manual_greedy(name):
    model = make(**SCHEMES[name])
    perturb_attnres(model)
    model.eval()
    assert_cached_generate_is_greedy(model)


@pytest.mark.parametrize("name", ["full", "block4_lns"])
def test_save_load_round_trip_and_meta_init(name, tmp_path):
    model = make(**SCHEMES[name])
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    perturb_attnres(model)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is CodLlamaForCausalLM and loaded.config.attnres_blocks == model.config.attnres_blocks
    for (n1, a), (n2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(a, b), n1
    with torch.device("meta"):
        meta = build_model(ModelConfig(**{**SHAPE, **SCHEMES[name]}), 96)
    meta.to_empty(device="cpu")
    meta.reset_weights()
    for n, value in meta.state_dict().items():
        if value.ndim <= 1:  # the pseudo-queries 0, the key norms 1
            assert torch.equal(value, fresh[n]), n


@pytest.mark.parametrize("name", ["full", "block2"])
def test_blocks_compile_without_graph_breaks_one_graph_per_depth(name):
    """fullgraph=True: a graph break is an error. The stream grows, so each depth is its own graph (full: L; block:
    one per stream layout), within dynamo's recompile limit at this depth; `apply_compile` raises the limit to the
    depth for history-reading schemes (deeper models), checked here too. Same logits as eager."""
    from torch._dynamo.utils import counters

    from cod_train.engine.parallelize import apply_compile

    model = make(**SCHEMES[name])
    perturb_attnres(model)
    ids = torch.randint(0, 96, (2, 6))
    want = model(input_ids=ids).logits
    torch._dynamo.reset()
    counters.clear()
    for layer in model.model.layers:
        layer.compile(fullgraph=True, backend="eager")
    got = model(input_ids=ids).logits
    got.sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert counters["stats"]["unique_graphs"] == (4 if name == "full" else 4)
    limit = torch._dynamo.config.recompile_limit
    try:
        deep = build_model(ModelConfig(**{**SHAPE, "num_hidden_layers": limit + 3, **SCHEMES[name]}), 96)
        apply_compile(deep)
        assert torch._dynamo.config.recompile_limit >= limit + 3
    finally:
        torch._dynamo.config.recompile_limit = limit


def test_activation_checkpointing_keeps_loss_and_gradients():
    from cod_train.engine.parallelize import apply_activation_checkpointing

    ids = torch.randint(0, 96, (2, 8))
    runs = []
    for ac in (False, True):
        model = make(residual="block_attnres", attnres_blocks=2)
        perturb_attnres(model)
        if ac:
            apply_activation_checkpointing(model, "full")
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        runs.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=0, atol=0)
    for n, g in runs[0][1].items():
        torch.testing.assert_close(runs[1][1][n], g, rtol=1e-6, atol=1e-7, msg=n)


@pytest.mark.parametrize("overrides,needle", [
    (dict(residual="attnres", norm_type="post_ln"), "residual=attnres is defined on Pre-Norm blocks (the AttnRes "
     "paper): it combines with norm_type=pre_ln or lns, not with norm_type=post_ln"),
    (dict(residual="block_attnres", norm_type="sandwich_ln"), "combines with norm_type=pre_ln or lns"),
    (dict(attnres_blocks=2), "attnres_blocks=2 belongs to residual=block_attnres"),
    (dict(residual="block_attnres", attnres_blocks=0), "attnres_blocks must be a positive integer"),
    (dict(residual="block_attnres", attnres_blocks=8, num_hidden_layers=4), "attnres_blocks=8 exceeds "
     "num_hidden_layers=4: use at most 4 (one layer per block) or residual=attnres"),
])
def test_nonsense_combinations_are_refused_up_front(overrides, needle):
    with pytest.raises(ConfigError) as err:
        ModelConfig(**overrides).validate()
    assert needle in str(err.value)


def test_run_dir_and_cod_report_labels_name_the_scheme_and_its_blocks():
    from pathlib import Path

    from cod_train.report.runs import RunData

    assert zoo.scheme_name(dict(residual="attnres")) == "pre_ln+attnres"
    assert zoo.scheme_name(dict(residual="block_attnres", attnres_blocks=2, norm_type="lns")) == "lns+block_attnres2"
    for model, want in (({"norm_type": "pre_ln", "residual": "attnres"}, "pre_ln+attnres"),
                        ({"norm_type": "lns", "residual": "block_attnres", "attnres_blocks": 2}, "lns+block_attnres2")):
        assert RunData(path=Path("r"), label="r", config={"model": model}).variant == want


# -- the depth diagnostics --

@pytest.mark.parametrize("name", ["full", "block2"])
def test_removing_a_layer_cached_equals_plain_and_equals_the_reference_without_it(name):
    """Removing layer l = its outputs never enter the stream (Block AttnRes: its block's sum lacks them); the
    prefix-cached way (reruns layers l+1..L from the stream entering l) == pruned_layers + a full forward == the
    reference without layer l."""
    from cod_train.eval.depth_cache import capture_layer_calls, final_norm, run_layers
    from cod_train.eval.depth_hooks import close_stream, pruned_layers

    model = make(**SCHEMES[name])
    perturb_attnres(model)
    model.eval()
    ids = torch.randint(0, 96, (1, 9))
    rec = capture_layer_calls(model, {"input_ids": ids, "labels": ids})
    with torch.no_grad():
        for skip in range(SHAPE["num_hidden_layers"]):
            cached = model.lm_head(final_norm(model)(close_stream(model, run_layers(model, rec, rec.states[skip],
                                                                                     skip + 1))))
            with pruned_layers(model, [skip]):
                plain = model(input_ids=ids).logits
            torch.testing.assert_close(cached, plain, rtol=1e-5, atol=1e-6)
            want = reference_logits(model, ids[0], skip=(skip,))
            torch.testing.assert_close(plain[0].double(), want, rtol=1e-5, atol=1e-5)


def test_training_diag_row_and_cod_analyze_entry_carry_the_depth_weights(tmp_path):
    """The diag row's token mean / spread of each reader's weight per source over the real tokens (padding left
    out) equal the reference's; cod-analyze's entry holds the map and its figure is drawn (two models side by
    side), none for models without AttnRes."""
    from cod_train.eval.depth_io import add_scheme_outputs, model_info
    from cod_train.eval.depth_train import training_diagnostics
    from cod_train.report.plots import plot_depth_attention

    model = make(residual="block_attnres", attnres_blocks=2)
    perturb_attnres(model)
    ids = torch.randint(0, 96, (2, 9))
    labels = ids.clone()
    labels[1, 5:] = -100  # row 1: 6 real tokens
    row = training_diagnostics(model, {"input_ids": ids, "labels": labels})
    logs = []
    with torch.no_grad():
        for r, length in ((0, 9), (1, 6)):
            log: list = []
            reference_logits(model, ids[r, :length], log=log)
            logs.append(log)
    for k, sub in enumerate(["attn", "mlp"] * SHAPE["num_hidden_layers"]):
        weights = torch.cat([log[k] for log in logs], dim=1)  # [S, tokens]
        slots = [[0], [0, 1], [0, 1], [0, 1], [0, 1], [0, 1, 2], [0, 1, 2], [0, 1, 2]][k]  # block sums written
        assert weights.shape[0] == len(slots)
        for j, s in enumerate(slots):
            assert row[f"diag/{sub}_attnres.src.{s}.tokens"][k // 2] == pytest.approx(float(weights[j].mean()),
                                                                                      rel=1e-5)
            assert row[f"diag/{sub}_attnres.src.{s}.spread.tokens"][k // 2] == pytest.approx(
                float(weights[j].std(unbiased=False)), rel=1e-4, abs=1e-7)
        if len(slots) < 3:
            assert row[f"diag/{sub}_attnres.src.2.tokens"][k // 2] is None  # block 2 not read yet
    assert row["diag/attn_attnres.query_norm"][0] == pytest.approx(
        float((model.model.layers[0].attnres_attn.query * model.model.layers[0].attnres_attn.key_norm).norm()))
    info = model_info(model, "spec", "block")
    add_scheme_outputs(model, info, {"input_ids": ids[:1], "labels": labels[:1]})
    grid = info["attnres_weight_map"]
    assert len(grid) == 2 * SHAPE["num_hidden_layers"] + 1 and all(
        sum(v for v in r if v is not None) == pytest.approx(1.0) for r in grid)
    assert grid[-1] == pytest.approx(logs[0][-1].mean(1).tolist(), rel=1e-5)
    full = make(residual="attnres")
    other = model_info(full, "spec", "full")
    add_scheme_outputs(full, other, {"input_ids": ids[:1]})
    png = plot_depth_attention([info, other, model_info(make(), "spec", "plain")], tmp_path / "d.png")
    assert png is not None and png.stat().st_size > 10_000
    assert plot_depth_attention([model_info(make(), "spec", "plain")], tmp_path / "none.png") is None


def test_cod_analyze_runs_every_diagnostic_and_draws_the_depth_attention_figure(tmp_path):
    import json

    from cod_train.eval.depth_registry import DIAGNOSTICS
    from cod_train.runs.analyze import AnalyzeConfig, AnalyzeOptions, run
    from tests.helpers.analyze_runs import text_file, tiny_tokenizer

    dirs = []
    for name, axes in (("full", SCHEMES["full"]), ("block", SCHEMES["block2"])):
        model = make(**axes)
        perturb_attnres(model)
        model.save_pretrained(tmp_path / name)
        tiny_tokenizer(tmp_path).save_pretrained(tmp_path / name)
        dirs.append(str(tmp_path / name))
    opts = AnalyzeOptions(diagnostics=[d.name for d in DIAGNOSTICS], text_path=[str(text_file(tmp_path))],
                          eval_tokens=64, seq_len=16, progress=False)
    written = {p.name for p in run(AnalyzeConfig(checkpoint=dirs, run_dir=str(tmp_path / "out"), analyze=opts))}
    assert "attention_residuals.png" in written and "hyper_connections.png" not in written
    for diag in DIAGNOSTICS:
        assert f"{diag.file}.json" in written, diag.name
    full, block = json.loads((tmp_path / "out" / "analysis" / "layer_variance.json").read_text())["models"]
    assert len(full["attnres_weight_map"][-1]) == 2 * SHAPE["num_hidden_layers"] + 1
    assert len(block["attnres_weight_map"][-1]) == 3
    assert len(block["learned_scalars"]["attn_attnres.src.0.tokens"]) == SHAPE["num_hidden_layers"]


def test_block_attnres_resume_is_exact(tmp_path):
    """Stopped at step 2 and resumed: the same losses as 4 uninterrupted steps (the pseudo-queries, key norms and
    their optimizer state are in the checkpoint)."""
    from tests.helpers.engine_run import run
    from tests.helpers.run_dirs import losses

    scheme = ["model.residual=block_attnres", "model.attnres_blocks=2"]
    run(f"run_dir={tmp_path / 'full'}", "train.max_steps=4", "train.ckpt_every=2", *scheme)
    run(f"run_dir={tmp_path / 'cut'}", "train.max_steps=2", "train.ckpt_every=2", *scheme)
    run(f"run_dir={tmp_path / 'cut'}", "train.max_steps=4", "train.ckpt_every=2", *scheme)
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
