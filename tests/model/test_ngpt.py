"""nGPT (`norm_type=ngpt`, arXiv 2410.01131): the model equals a plain formulation written here from the paper
(logits, loss and every gradient, learned scales moved off their init), its weights start and stay on the unit
sphere, and the combinations it does not make sense with are refused in one line."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cod_train.model import zoo
from tests.helpers.cli import TINY, cod_pretrain, one_error_line
from tests.helpers.models import tiny_model

MHA = {"num_key_value_heads": 4}


def _unit(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return x / x.norm(dim=dim, keepdim=True)


def _rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE on [B, H, T, hd] as rotations of the pairs (i, i + hd/2) by t * theta^(-2i/hd)."""
    hd, t = x.shape[-1], torch.arange(x.shape[-2], dtype=torch.float64)
    angle = t[:, None] * theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)[None]
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    a, b = x[..., : hd // 2], x[..., hd // 2:]
    return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)


def reference_logits(model, ids: torch.Tensor, olmo_core: bool = False) -> torch.Tensor:
    """The paper's equations over the model's own parameter tensors (so autograd gives comparable gradients).
    `olmo_core`: OLMo-core's NormalizedAttention as we read it instead: q and k normalized over the whole projection
    width and scaled by s_q, s_k (here both = s_qk) before RoPE."""
    p, cfg = dict(model.named_parameters()), model.config
    d, heads, L = cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers
    hd, (B, T) = d // heads, ids.shape
    sqrt_d = math.sqrt(d)

    def alpha(w: dict, site: str) -> torch.Tensor:
        return (w[f"ngpt.alpha_{site}.scale"] * (0.05 * sqrt_d)).abs()  # init 0.05, scaling 1/sqrt(d)

    def heads_of(x: torch.Tensor) -> torch.Tensor:
        return x.view(B, T, heads, hd).transpose(1, 2)

    h = p["model.embed_tokens.weight"][ids]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for layer in range(L):
        w = {k[len(f"model.layers.{layer}."):]: v for k, v in p.items() if k.startswith(f"model.layers.{layer}.")}
        s_qk = (w["self_attn.qk_scale.s_qk.scale"] * sqrt_d).view(heads, 1, hd)
        theta = cfg.rope_parameters["rope_theta"]
        q, k = h @ w["self_attn.q_proj.weight"].T, h @ w["self_attn.k_proj.weight"].T
        if olmo_core:
            s_full = w["self_attn.qk_scale.s_qk.scale"] * sqrt_d
            q, k = _rope(heads_of(_unit(q) * s_full), theta), _rope(heads_of(_unit(k) * s_full), theta)
        else:
            q, k = _unit(_rope(heads_of(q), theta)) * s_qk, _unit(_rope(heads_of(k), theta)) * s_qk
        v = heads_of(h @ w["self_attn.v_proj.weight"].T)
        scores = (q @ k.transpose(-1, -2)) * math.sqrt(hd)  # sqrt(d_k), not 1/sqrt(d_k)
        att = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        h_a = att.transpose(1, 2).reshape(B, T, d) @ w["self_attn.o_proj.weight"].T
        h = _unit(h + alpha(w, "attn") * (_unit(h_a) - h))
        u = (h @ w["mlp.up_proj.weight"].T) * w["mlp.gate_up_scale.s_u.scale"]
        gate = (h @ w["mlp.gate_proj.weight"].T) * w["mlp.gate_up_scale.s_v.scale"] * sqrt_d
        h_m = (u * F.silu(gate)) @ w["mlp.down_proj.weight"].T
        h = _unit(h + alpha(w, "mlp") * (_unit(h_m) - h))
    return (h @ p["lm_head.weight"].T) * (p["lm_head.s_z.scale"] * sqrt_d)  # no final norm


def _off_init(model) -> None:
    """Every learned scale to a random value (a negative alpha too: the paper uses |alpha|), every matrix to
    random unit vectors."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.mul_(0.5 + torch.rand_like(param))
                if "alpha_mlp" in name:
                    param[0] = -param[0]
        for weight, dim in _unit_weights(model):
            weight.copy_(_unit(torch.randn_like(weight), dim))


def _unit_weights(model) -> list[tuple[torch.Tensor, int]]:
    """The paper's normalized matrices: along the embedding dimension d."""
    out = [(model.model.embed_tokens.weight, 1), (model.lm_head.weight, 1)]
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        out += [(w.weight, 1) for w in (a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj)]
        out += [(a.o_proj.weight, 0), (m.down_proj.weight, 0)]
    return out


@pytest.mark.parametrize("fused", [False, True])
def test_logits_loss_and_gradients_equal_the_papers_equations(fused):
    model = tiny_model(norm_type="ngpt", fused_loss=fused, **MHA).train()
    _off_init(model)
    ids = torch.randint(0, 96, (2, 11), generator=torch.Generator().manual_seed(1))
    out = model(ids, labels=ids)
    want_logits = reference_logits(model, ids)
    want = F.cross_entropy(want_logits[:, :-1].reshape(-1, want_logits.shape[-1]), ids[:, 1:].reshape(-1))
    if not fused:
        torch.testing.assert_close(out.logits, want_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-6)
    params = [p for _, p in model.named_parameters()]
    got_grads = torch.autograd.grad(out.loss, params)
    want_grads = torch.autograd.grad(want, params)
    for (name, _), got, ref in zip(model.named_parameters(), got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6, msg=name)
        assert ref.abs().max() > 0, name  # every parameter is used


def test_olmo_core_reading_differs_only_by_its_qk_normalization_and_scale_placement():
    """OLMo-core's block (lerp with |alpha|, the same inits and scalings, sqrt(head_dim) softmax scale, SwiGLU with
    sqrt(d) on the gate, s_z) equals ours where its two differences vanish: one head (full width = per head) and an
    s_qk equal on each RoPE pair (i, i + hd/2) (a scale before RoPE = after); with several heads it differs."""
    for heads, same in ((1, True), (4, False)):
        model = tiny_model(norm_type="ngpt", num_attention_heads=heads, num_key_value_heads=heads).eval()
        _off_init(model)
        with torch.no_grad():
            for layer in model.model.layers:
                s = layer.self_attn.qk_scale.s_qk.scale.view(heads, 2, -1)
                s[:, 1] = s[:, 0]
        ids = torch.randint(0, 96, (2, 11), generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            got, olmo = model(ids).logits, reference_logits(model, ids, olmo_core=True)
        assert torch.allclose(got, olmo, rtol=1e-5, atol=1e-5) == same, heads


def test_init_puts_every_matrix_on_the_sphere_and_every_scale_at_the_papers_init():
    model = tiny_model(norm_type="ngpt", **MHA)
    for weight, dim in _unit_weights(model):
        torch.testing.assert_close(weight.norm(dim=dim), torch.ones(weight.shape[1 - dim]))
    d = model.config.hidden_size
    params = dict(model.named_parameters())
    want = {"qk_scale.s_qk.scale": d ** -0.5, "s_u.scale": 1.0, "s_v.scale": 1.0, "alpha_attn.scale": d ** -0.5,
            "alpha_mlp.scale": d ** -0.5, "lm_head.s_z.scale": d ** -0.5}
    for suffix, value in want.items():
        found = [p for n, p in params.items() if n.endswith(suffix)]
        assert found and all(torch.allclose(p, torch.full_like(p, value)) for p in found), suffix
    assert not any("norm" in n for n in params)  # no norm layers, no final norm
    assert type(model.model.norm).__name__ == "Identity"


def test_the_renormalizing_callback_puts_moved_weights_back_on_the_sphere():
    model = tiny_model(norm_type="ngpt", **MHA)
    with torch.no_grad():
        for weight, _ in _unit_weights(model):
            weight.mul_(1.7).add_(0.01)
    (callback,) = zoo.placement("ngpt").callbacks(model.config)
    with torch.no_grad():
        callback.after_optimizer_step(model, 1)
    for weight, dim in _unit_weights(model):
        torch.testing.assert_close(weight.norm(dim=dim), torch.ones(weight.shape[1 - dim]))


@pytest.mark.parametrize("axes, named", [
    ({"residual": "gpas"}, "residual=gpas"),
    ({"norm_fn": "dyt"}, "norm_fn=dyt"),
    ({"qk_norm": "head"}, "qk_norm=head"),
    ({"embed_norm": True}, "embed_norm=True"),
    ({"scaled_init": True}, "scaled_init=True"),
    ({"num_key_value_heads": 2}, "num_key_value_heads=2"),
])
def test_combinations_without_meaning_are_refused_with_what_combines(axes, named):
    kwargs = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=96, max_position_embeddings=64)
    problems = zoo.model_problems(**{**kwargs, "norm_type": "ngpt", **axes})
    assert len(problems) == 1 and named in problems[0] and "it combines with residual=plain" in problems[0]


@pytest.mark.parametrize("args, named", [
    (["train.weight_decay=0.1", "train.warmup_steps=0"], "train.weight_decay=0"),
    (["train.warmup_steps=5"], "train.warmup_steps=0"),
    (["train.warmup_steps=0", "distributed=deepspeed"], "distributed.engine=single, ddp or fsdp"),
])
def test_cod_pretrain_refuses_decay_warmup_and_deepspeed_in_one_line(args, named, tmp_path, capsys):
    code = cod_pretrain(*TINY, "model.norm_type=ngpt", *args, f"run_dir={tmp_path / 'run'}")
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and named in line and "norm_type=ngpt" in line
    assert not (tmp_path / "run").exists()


def test_scheme_name_and_label():
    assert zoo.scheme_name({"norm_type": "ngpt"}) == "ngpt"
