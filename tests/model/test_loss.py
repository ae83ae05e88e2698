"""The fused, chunked loss equals the plain cross-entropy in value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from cod_train.model.loss import causal_lm_loss


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


def test_model_fused_and_plain_paths_agree(tiny_model):
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
