"""The fast paths compute what the plain paths compute: compiled blocks, the default-chunked loss, the kernels
flag. Correctness only; speed lives in scripts/bench.py."""

import copy

import pytest
import torch
import torch.nn.functional as F

from cod_train.model import kernels
from cod_train.model.loss import causal_lm_loss, default_chunk_size
from tests.helpers.models import tiny_model


def _step(model, ids):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_same_step(got, want, rtol=1e-4, atol=1e-5):
    torch.testing.assert_close(got[0], want[0], rtol=rtol, atol=atol)
    for name, g in want[1].items():
        torch.testing.assert_close(got[1][name], g, rtol=rtol, atol=atol, msg=name)


def test_compiled_blocks_match_eager():
    """Each decoder block compiled by inductor, as the engines do with `distributed.compile=true`: one graph
    per block (fullgraph: no graph breaks), shared by the blocks, and eager's loss and gradients. One tiny
    model and one compilation, since inductor's C++ code generation is slow on small CPUs."""
    torch._dynamo.reset()
    model = tiny_model(num_hidden_layers=2)
    ids = torch.randint(0, 96, (2, 12))
    want = _step(model, ids)
    for layer in model.model.layers:
        layer.compile(fullgraph=True)
    _assert_same_step(_step(model, ids), want)


@pytest.mark.parametrize("ignored", [False, True])
def test_default_chunking_equals_plain(ignored):
    """The default chunk size (several chunks here) and the no-ignored-target shortcut give the plain loss."""
    torch.manual_seed(0)
    n = 2 * default_chunk_size(torch.device("cpu")) + 37
    h = torch.randn(1, n, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(40, 16, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 40, (1, n))
    if ignored:
        t[0, ::5] = -100
    fused = causal_lm_loss(h, w, t)
    gh, gw = torch.autograd.grad(fused, (h, w))
    plain = F.cross_entropy((h @ w.t()).float()[0], t[0], ignore_index=-100)
    ph, pw = torch.autograd.grad(plain, (h, w))
    torch.testing.assert_close(fused.double(), plain.double())
    torch.testing.assert_close(gh, ph, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gw, pw, rtol=1e-5, atol=1e-7)


def test_fused_loss_refuses_a_second_backward():
    """Gradients are scaled in place in the backward: a second backward must fail, not return wrong values."""
    h = torch.randn(6, 8, requires_grad=True)
    w = torch.randn(20, 8, requires_grad=True)
    loss = causal_lm_loss(h[None], w, torch.randint(0, 20, (1, 6)))
    torch.autograd.grad(loss, (h, w), retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        torch.autograd.grad(loss, (h, w))


def test_use_kernels_without_cuda_is_the_plain_model():
    """On CPU (or without liger_kernel) the flag changes nothing: same parameters, same loss and gradients."""
    plain = tiny_model()
    config = copy.deepcopy(plain.config)
    config.use_kernels = True
    flagged = type(plain)(config)
    flagged.load_state_dict(plain.state_dict())
    assert [n for n, _ in flagged.named_parameters()] == [n for n, _ in plain.named_parameters()]
    ids = torch.randint(0, 96, (2, 10))
    _assert_same_step(_step(flagged, ids), _step(plain, ids), rtol=0, atol=0)


@pytest.mark.skipif(not kernels.liger_available(), reason="needs CUDA and liger_kernel")
def test_kernels_match_plain_on_cuda():
    plain = tiny_model().cuda()
    config = copy.deepcopy(plain.config)
    config.use_kernels = True
    fast = type(plain)(config).cuda()
    fast.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 96, (2, 16), device="cuda")
    _assert_same_step(_step(fast, ids), _step(plain, ids), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("has_accum_dtype", [True, False])
def test_liger_loss_accumulates_a_bf16_lm_head_gradient_in_fp32(monkeypatch, has_accum_dtype):
    """A bf16 lm_head (bf16-pure) goes to Liger's fused loss only with ``accum_dtype=float32``; a Liger release
    without that parameter would accumulate the gradient in bf16, so our own fused loss (fp32) is used instead."""
    from types import SimpleNamespace

    from cod_train.model.loss import causal_lm_loss

    calls: list[dict] = []

    def with_accum(h, w, t, ignore_index=-100, reduction="mean", accum_dtype=None):
        calls.append({"accum_dtype": accum_dtype})
        return (h.float() @ w.float().t()).logsumexp(-1).sum()

    def without_accum(h, w, t, ignore_index=-100, reduction="mean"):
        calls.append({})
        return (h.float() @ w.float().t()).logsumexp(-1).sum()

    fake = SimpleNamespace(liger_fused_linear_cross_entropy=with_accum if has_accum_dtype else without_accum)
    monkeypatch.setattr(kernels, "_functional", lambda: fake)
    kernels.fp32_weight_grad.cache_clear()
    try:
        h = torch.randn(2, 3, 8, dtype=torch.bfloat16)
        w = torch.randn(11, 8, dtype=torch.bfloat16)
        t = torch.randint(0, 11, (2, 3))
        causal_lm_loss(h, w, t, 6.0, use_kernels=True)
        assert calls == ([{"accum_dtype": torch.float32}] if has_accum_dtype else [])
        calls.clear()
        causal_lm_loss(h.float(), w.float(), t, 6.0, use_kernels=True)  # fp32 weight: Liger either way
        assert len(calls) == 1 and calls[0].get("accum_dtype") is None
    finally:
        kernels.fp32_weight_grad.cache_clear()
