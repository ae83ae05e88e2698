"""Hyper-connections in bf16 (issue 22, item 2): what the training forward keeps for the backward, and the precision
of the connection weights under autocast. bf16-mixed = autocast over fp32 parameters (as the single / DDP engines
run it), bf16-pure = parameters in bf16; the forward is the training loop's call."""

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cod_train.config import ModelConfig
from cod_train.model import build_model
from cod_train.model.hyper_connections import connection_modules, hyper_sublayer
from tests.helpers.hc_reference import perturb_hc, sublayer
from tests.model.zoo_reference import params

SHAPE = dict(hidden_size=32, intermediate_size=88, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=3,
             max_position_embeddings=64)
HYPER = {"hc": dict(residual="hc"), "hc_dynamic": dict(residual="hc", hc_dynamic=True, hc_collapse="head"),
         "mhc": dict(residual="mhc")}
B, T, VOCAB = 2, 16, 96


def make(precision: str, **axes):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**SHAPE, **axes}), VOCAB)
    perturb_hc(model)
    return model.to(torch.bfloat16) if precision == "bf16-pure" else model


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else contextlib.nullcontext()


def saved_for_backward(model, precision: str, seq: int = T) -> list[tuple]:
    """(dtype, shape, storage bytes, layer) of every tensor the training forward saves for the backward, each
    storage once; layer: the index of the decoder layer the forward was in when it was first saved."""
    inside, seen = [-1], {}
    handles = [m.register_forward_pre_hook(lambda _m, _a, i=i: inside.__setitem__(0, i))
               for i, m in enumerate(model.model.layers)]

    def pack(t):
        st = t.untyped_storage()
        seen.setdefault(st.data_ptr(), (t.dtype, tuple(t.shape), st.nbytes(), inside[0]))
        return t

    ids = torch.randint(0, VOCAB, (B, seq), generator=torch.Generator().manual_seed(0))
    with autocast(precision), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids, shift_labels=ids, num_items_in_batch=B * seq).loss
    loss.backward()
    for h in handles:
        h.remove()
    return list(seen.values())


def n_wide_fp32(saved, n: int) -> list[tuple]:
    """Saved fp32 tensors of the n-wide streams' size (B T n d)."""
    return [s for s in saved if s[0] == torch.float32 and s[1][-2:] in ((n, SHAPE["hidden_size"]),
                                                                          (T, n * SHAPE["hidden_size"]))]


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-pure"])
@pytest.mark.parametrize("scheme", list(HYPER))
def test_bf16_training_forward_keeps_no_fp32_copy_of_the_streams(scheme, precision):
    """In fp32 the streams themselves are kept (the detector sees them); in bf16 nothing fp32 of their size is."""
    n = 4
    assert n_wide_fp32(saved_for_backward(make("fp32", **HYPER[scheme]), "fp32"), n)
    assert n_wide_fp32(saved_for_backward(make(precision, **HYPER[scheme]), precision), n) == []


WIDE = dict(SHAPE, hidden_size=256, intermediate_size=688)


def activation_bytes_per_token(scheme: str, precision: str) -> float:
    """Bytes the middle layer keeps per token: the difference between 2 x 32 and 2 x 16 tokens (the weights and
    autocast's weight copies, kept once per forward, cancel), at d = 256 (the issue's width)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**WIDE, **HYPER.get(scheme, {})}), VOCAB)
    model = model.to(torch.bfloat16) if precision == "bf16-pure" else model
    kept = [sum(s[2] for s in saved_for_backward(model, precision, seq) if s[3] == 1) for seq in (16, 32)]
    return (kept[1] - kept[0]) / (B * 16)


@pytest.mark.parametrize("scheme", list(HYPER))
def test_bf16_saved_bytes_per_layer_against_pre_ln_are_no_worse_than_in_fp32(scheme):
    ratio = {p: activation_bytes_per_token(scheme, p) / activation_bytes_per_token("pre_ln", p)
             for p in ("fp32", "bf16-mixed", "bf16-pure")}
    assert ratio["bf16-mixed"] <= ratio["fp32"] + 0.02, ratio
    assert ratio["bf16-pure"] <= ratio["fp32"] + 0.02, ratio


class MatmulDtypes(TorchDispatchMode):
    """The dtypes of the matrix products run while active."""

    OPS = ("mm", "bmm", "addmm", "baddbmm", "matmul", "linear")

    def __init__(self):
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.OPS:
            self.dtypes |= {a.dtype for a in args if isinstance(a, torch.Tensor)}
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("scheme", ["hc_dynamic", "mhc"])
def test_connection_weights_run_in_fp32_under_autocast(scheme):
    """Through the full forward under autocast: every matrix product of the weight modules (mHC's projection of the
    normalized flattened streams, DHC's N(H) W, the head's projection) is fp32, while the model's own linears run
    in bf16 (the capture sees autocast)."""
    model = make("fp32", **HYPER[scheme])
    ids = torch.randint(0, VOCAB, (B, T))
    everything, connections = MatmulDtypes(), MatmulDtypes()
    hooks = []
    for module in [*connection_modules(model), model.model.hc_head]:
        hooks.append(module.register_forward_pre_hook(lambda *_: [connections.__enter__()] and None))
        hooks.append(module.register_forward_hook(lambda *_: connections.__exit__(None, None, None)))
    with torch.autocast("cpu", dtype=torch.bfloat16), everything:
        model(input_ids=ids, labels=ids).loss.backward()
    for h in hooks:
        h.remove()
    assert torch.bfloat16 in everything.dtypes
    assert connections.dtypes == {torch.float32}


@pytest.mark.parametrize("scheme", list(HYPER))
def test_sublayer_connections_under_autocast_give_the_fp32_result(scheme):
    """pre, post, res and H' = res^T H + post^T F(pre^T H) of a sub-layer (F = a fixed map) under autocast against
    the same without autocast: the projection, Sinkhorn, sigmoids, read and write in fp32 agree to 1e-6 where
    bf16 rounding is ~4e-3; DHC's tanh terms come from the bf16 copy of the streams kept for the backward (their
    scale s = 0.01..0.3 keeps that below 1e-4)."""
    model = make("fp32", **HYPER[scheme])
    hc = model.model.layers[1].mlp_hc
    streams = torch.randn(B, T, 4, SHAPE["hidden_size"], generator=torch.Generator().manual_seed(3))

    def sub(s):
        return hyper_sublayer(hc, s, lambda h: 0.5 * torch.tanh(h))  # elementwise: autocast leaves it in fp32

    with torch.no_grad():
        want, want_weights = sub(streams), hc(streams)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, got_weights = sub(streams), hc(streams)
    tol = 1e-4 if scheme == "hc_dynamic" else 1e-6
    torch.testing.assert_close(got_weights, want_weights, rtol=tol, atol=tol)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-pure"])
@pytest.mark.parametrize("scheme", list(HYPER))
def test_sublayer_gradients_in_bf16_match_the_plain_float64_formulation(scheme, precision):
    """The hand-written backwards (projection, read, write, Sinkhorn's recomputation, DHC's recomputed terms) with
    bf16 streams (bf16-pure: parameters in bf16 too) or under autocast (fp32 streams, gradients from their bf16
    copy), against autograd through tests/helpers/hc_reference.py's float64 `sublayer` on the same values
    (streams and parameters exactly representable in bf16). bf16-pure rounds the read, the output and the
    streams' gradient to bf16 (~4e-3); under autocast the copy is exact here, so fp32 accuracy, except that DHC's
    recomputed N(H) of the bf16 copy is rounded to bf16 by the norm (as for any bf16 input; measured 2e-3)."""
    model = make(precision, **HYPER[scheme])
    hc, prefix = model.model.layers[1].mlp_hc, "model.layers.1.mlp_hc."
    with torch.no_grad():
        for param in hc.parameters():
            param.copy_(param.to(torch.bfloat16))
    g = torch.Generator().manual_seed(4)
    streams = torch.randn(1, T, 4, SHAPE["hidden_size"], generator=g).to(torch.bfloat16)
    weight = torch.randn(1, T, 4, SHAPE["hidden_size"], generator=g)
    x = streams.clone() if precision == "bf16-pure" else streams.float()
    x.requires_grad_()
    with autocast(precision):
        out = hyper_sublayer(hc, x, lambda h: 0.5 * torch.tanh(h))
    (out.float() * weight).sum().backward()

    sd = params(model, requires_grad=True)
    ref_streams = [streams[0, :, j].double().requires_grad_() for j in range(4)]
    ref = sublayer(ref_streams, sd, prefix, model.config, lambda h: 0.5 * torch.tanh(h))
    sum((ref[i] * weight[0, :, i]).sum() for i in range(4)).backward()
    tol = 2e-2 if precision == "bf16-pure" or scheme == "hc_dynamic" else 1e-4
    pairs = [(name, hc.get_parameter(name).grad, sd[prefix + name].grad) for name, _ in hc.named_parameters()]
    pairs.append(("streams", x.grad[0], torch.stack([s.grad for s in ref_streams], dim=1)))
    for name, got, want in pairs:
        assert (got.double() - want).abs().max() <= tol * want.abs().max() + 1e-9, name
