"""The fused, chunked loss equals the plain cross-entropy in value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from cod_train.model.loss import causal_lm_loss
from tests.helpers.models import tiny_model


def _plain(h, w, t, n):
    logits = (h @ w.t()).float()
    return F.cross_entropy(logits.view(-1, w.shape[0]), t.view(-1), ignore_index=-100, reduction="sum") / n


@pytest.mark.parametrize("chunk", [1, 5, 7, 64])
def test_fused_loss_and_grads_equal_plain(chunk):
    torch.manual_seed(0)
    h = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 50, (3, 7))
    t[0, :3] = -100
    t[2, -1] = -100
    n = (t != -100).sum()
    fused = causal_lm_loss(h, w, t, n, chunk_size=chunk)
    gh, gw = torch.autograd.grad(2.5 * fused, (h, w))
    plain = _plain(h, w, t, n)
    ph, pw = torch.autograd.grad(2.5 * plain, (h, w))
    torch.testing.assert_close(fused.double(), plain.double())
    torch.testing.assert_close(gh, ph, rtol=1e-5, atol=1e-6)  # logits are fp32 on both paths
    torch.testing.assert_close(gw, pw, rtol=1e-5, atol=1e-6)


def test_default_normalization_is_mean_over_valid_tokens():
    logits = torch.randn(2, 4, 10)
    t = torch.tensor([[1, 2, -100, -100], [3, -100, -100, -100]])
    got = causal_lm_loss(None, None, t, logits=logits)
    want = F.cross_entropy(logits.view(-1, 10), t.view(-1), ignore_index=-100)
    torch.testing.assert_close(got, want)


def test_model_fused_and_plain_paths_agree():
    model = tiny_model()
    ids = torch.randint(0, 96, (2, 10))
    grads = []
    for fused in (True, False):
        model.zero_grad()
        model.config.fused_loss = fused
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        assert (out.logits is None) == fused
        grads.append((out.loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fused_loss_under_bf16_autocast_is_close():
    torch.manual_seed(0)
    h = torch.randn(64, 32, requires_grad=True)
    w = torch.randn(100, 32, requires_grad=True)
    t = torch.randint(0, 100, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = causal_lm_loss(h[None], w, t[None], chunk_size=16)
    torch.testing.assert_close(fused, _plain(h, w, t, 64), rtol=2e-2, atol=2e-2)


def _scale_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """|alpha - 1| for the least-squares alpha with got ~ alpha * want: a systematic scale error, which
    per-element rounding (unbiased) does not produce."""
    got, want = got.double().flatten(), want.double().flatten()
    return abs(float(got @ want / (want @ want)) - 1.0)


def test_bf16_fused_gradients_are_not_scaled_by_a_rounded_one_over_n():
    """bf16 weights and hidden states (bf16-pure): the gradients of sum/N must not be off by bf16(1/N) * N."""
    n = 6967.0  # bf16(1/6967) * 6967 = 1.0033: a 0.33% scale error if 1/N were rounded to bf16
    assert abs(torch.tensor(1.0 / n, dtype=torch.bfloat16).item() * n - 1.0) > 2e-3
    torch.manual_seed(0)
    # the reference starts from the bf16-rounded inputs: only the loss's own arithmetic differs
    h = torch.randn(512, 64, dtype=torch.float64).to(torch.bfloat16).double()
    w = (torch.randn(200, 64, dtype=torch.float64) * 0.3).to(torch.bfloat16).double()
    t = torch.randint(0, 200, (1, 512))
    ref_h, ref_w = (x.clone().requires_grad_(True) for x in (h, w))
    want_h, want_w = torch.autograd.grad(_plain(ref_h[None], ref_w, t, n), (ref_h, ref_w))
    bh, bw = (x.to(torch.bfloat16).requires_grad_(True) for x in (h, w))
    got_h, got_w = torch.autograd.grad(causal_lm_loss(bh[None], bw, t, n, chunk_size=128), (bh, bw))
    assert got_h.dtype == got_w.dtype == torch.bfloat16
    # measured: 6e-4 / 4e-5 (bf16 logits); with 1/N rounded to bf16 and a bf16 [V, d] temporary per chunk
    # (the code before): 3.4e-3 / 1.5e-4
    assert _scale_error(got_h, want_h) < 2e-3
    assert _scale_error(got_w, want_w) < 8e-5
    torch.testing.assert_close(got_w.double(), want_w, rtol=2e-2, atol=2e-2 * want_w.abs().max().item())
