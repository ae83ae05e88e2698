"""train.optimizer=muon: torch's Muon step against a Newton-Schulz and momentum written here, which parameters
go to Muon and which to AdamW, the learning-rate matching and scales, config errors, and exact resume."""

from __future__ import annotations

import math

import pytest
import torch

from cod_train.config import ConfigError, PretrainConfig, TrainConfig
from cod_train.engine.engines import set_lr
from cod_train.train.muon import MuonWithAdamW
from cod_train.train.optim import build_optimizer
from tests.helpers.cli import cod_pretrain_stderr, one_error_line, tiny_args
from tests.helpers.engine_run import build_tiny_model, run, tiny_config
from tests.helpers.run_dirs import losses

A, B, C = 3.4445, -4.7750, 2.0315  # the quintic's coefficients (Keller Jordan's, torch's defaults)


def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """X <- a X + (b X X^T + c (X X^T)^2) X on the wide orientation, from X = G / ||G||_F; in float64."""
    x = g.double()
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / x.norm()
    for _ in range(steps):
        gram = x @ x.T
        x = A * x + (B * gram + C * gram @ gram) @ x
    return x.T if tall else x


def muon_reference(w0: torch.Tensor, grads: list[torch.Tensor], lr: float, wd: float, mu: float) -> torch.Tensor:
    """Nesterov Muon as torch writes it: buf <- mu buf + (1 - mu) g, step on NS((1 - mu) g + mu buf), decoupled
    decay lr x wd, step size lr x 0.2 sqrt(max(A, B)) (match_rms_adamw)."""
    w, buf = w0.double(), torch.zeros_like(w0, dtype=torch.float64)
    for g in grads:
        buf = mu * buf + (1 - mu) * g.double()
        update = newton_schulz((1 - mu) * g.double() + mu * buf)
        w = w * (1 - lr * wd) - lr * 0.2 * math.sqrt(max(w.shape)) * update
    return w


def test_newton_schulz_is_near_orthogonal_and_torch_muon_equals_the_reference():
    torch.manual_seed(0)
    ortho = newton_schulz(torch.randn(24, 40))
    singular = torch.linalg.svdvals(ortho)
    assert singular.min() > 0.5 and singular.max() < 1.3  # US'V^T with S' ~ 1 (the quintic does not converge)
    for shape in [(24, 40), (40, 24)]:  # wide and tall
        w0 = torch.randn(shape)
        grads = [torch.randn(shape) for _ in range(3)]
        param = torch.nn.Parameter(w0.clone())
        opt = MuonWithAdamW([{"params": [param], "muon": True, "weight_decay": 0.1}],
                            muon={"lr": 0.01, "momentum": 0.9, "adjust_lr_fn": "match_rms_adamw"}, adamw={})
        for g in grads:
            param.grad = g.clone()
            opt.step()
        want = muon_reference(w0, grads, lr=0.01, wd=0.1, mu=0.9)
        step = (want - w0.double()).abs().max()
        # torch orthogonalizes in bf16: the steps agree to a few bf16 ulps of the step size
        assert (param.detach().double() - want).abs().max() < 0.03 * step, shape


def test_match_rms_adamw_gives_an_update_rms_of_a_fifth_of_the_lr():
    torch.manual_seed(1)
    for shape in [(64, 64), (256, 64), (64, 192)]:
        param = torch.nn.Parameter(torch.zeros(shape))
        opt = MuonWithAdamW([{"params": [param], "muon": True, "weight_decay": 0.0}],
                            muon={"lr": 1.0, "momentum": 0.0, "nesterov": False, "adjust_lr_fn": "match_rms_adamw"},
                            adamw={})
        param.grad = torch.randn(shape)
        opt.step()
        rms = param.detach().pow(2).mean().sqrt().item()
        assert 0.15 < rms < 0.25, (shape, rms)  # 0.2 x (RMS of an orthogonal-ish matrix x sqrt(max dim)) ~ 0.2


# the tiny model's parameters (2 layers, width 32): Muon gets exactly the attention and MLP projections
BLOCK_MATRICES = [f"model.layers.{i}.{m}.weight" for i in (0, 1)
                  for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
ADAMW_PRE_LN = ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                *(f"model.layers.{i}.{n}.weight" for i in (0, 1) for n in ("input_layernorm", "post_attention_layernorm"))]
ADAMW_HC = [*ADAMW_PRE_LN, *(f"model.layers.{i}.{hc}.{p}" for i in (0, 1) for hc in ("attn_hc", "mlp_hc")
                             for p in ("static_alpha", "static_beta"))]


def split_by_name(model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[set[str], set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in opt.param_groups if g.get("muon") for p in g["params"]}
    adamw = {names[id(p)] for g in opt.param_groups if not g.get("muon") for p in g["params"]}
    return muon, adamw


@pytest.mark.parametrize("scheme, adamw", [([], ADAMW_PRE_LN), (["model.residual=hc"], ADAMW_HC)])
def test_muon_takes_the_block_projections_and_adamw_everything_else(scheme, adamw):
    model = build_tiny_model(tiny_config(*scheme))
    opt = build_optimizer(model, TrainConfig(optimizer="muon", weight_decay=0.1))
    muon, rest = split_by_name(model, opt)
    assert muon == set(BLOCK_MATRICES)
    assert rest == set(adamw)  # hyper-connections' static_alpha is 2-D, and still AdamW's
    decayed = {n for n, p in model.named_parameters()
               for g in opt.param_groups if any(p is q for q in g["params"]) and g["weight_decay"] > 0}
    assert decayed == {*BLOCK_MATRICES, "model.embed_tokens.weight", "lm_head.weight",
                       *(n for n in adamw if "static_alpha" in n)}


def test_muon_groups_follow_the_schedule_depth_scales_and_muon_lr():
    model = build_tiny_model(tiny_config("model.residual=depth_scaled", "model.depth_hparams=true",
                                         "model.depth_base_layers=1", "model.depth_alpha=0.5"))
    from cod_train.train.optim import depth_hparam_scales

    block_scale, _ = depth_hparam_scales(model)
    assert block_scale != 1.0
    opt = build_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=2e-2))
    set_lr(opt, 5e-4)  # the engine's per-step call: the schedule's lr times each group's scale
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            in_block = ".layers." in names[id(p)]
            want = 5e-4 * (block_scale if in_block else 1.0) * (20.0 if group.get("muon") else 1.0)
            assert group["lr"] == pytest.approx(want), names[id(p)]


@pytest.mark.parametrize("key, value", [("muon_momentum", 1.0), ("muon_ns_steps", 0),
                                        ("muon_adjust_lr", "spectral"), ("muon_lr", -1.0)])
def test_bad_muon_settings_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=f"train.{key}"):
        TrainConfig(optimizer="muon", **{key: value}).validate()


def test_muon_under_deepspeed_is_refused_up_front(capsys, tmp_path):
    cfg = PretrainConfig(train=TrainConfig(optimizer="muon"))
    cfg.distributed.engine = "deepspeed"
    with pytest.raises(ConfigError, match="distributed.engine=single|ddp|fsdp"):
        cfg.validate()
    code, err = cod_pretrain_stderr(capsys, f"run_dir={tmp_path / 'run'}", *tiny_args(
        "train.optimizer=muon", "distributed=deepspeed", "train.max_steps=1"))
    assert code == 2
    assert "train.optimizer=muon" in one_error_line(err)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_resumed_muon_run_gives_the_straight_runs_losses(tmp_path):
    muon = ["train.optimizer=muon", "train.weight_decay=0.1"]
    run(f"run_dir={tmp_path / 'straight'}", *muon)
    step3 = tmp_path / "straight" / "checkpoints" / "step_0000003"
    run(f"run_dir={tmp_path / 'resumed'}", *muon, f"resume={step3}")
    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert sorted(resumed) == [4, 5, 6]
    assert all(resumed[s] == straight[s] for s in (4, 5, 6)), (resumed, straight)
    run(f"run_dir={tmp_path / 'adamw'}", "train.weight_decay=0.1")
    assert losses(tmp_path / "adamw")[6] != straight[6]  # Muon is what ran


@pytest.mark.slow
def test_an_optimizer_sweep_runs_both_and_the_report_labels_them(tmp_path):
    import sys

    from cod_train.report import collect
    from tests.helpers.cli import TINY
    from tests.helpers.processes import run_checked

    sweep = tmp_path / "sweep"
    run_checked([sys.executable, "-m", "cod_train.cli.pretrain", "-m", "train.optimizer=adamw,muon", *TINY,
                 "train.max_steps=2", "train.eval_every=0", "train.ckpt_every=0", "train.export_hf=false",
                 f"hydra.sweep.dir={sweep}"], timeout=300)
    run_dirs = sorted(p.parent for p in sweep.glob("*/config.yaml"))
    assert len(run_dirs) == 2
    assert [r.label for r in collect([str(d) for d in run_dirs]).runs] == ["pre_ln optimizer=adamw",
                                                                            "pre_ln optimizer=muon"]
