"""Each placement against the plain reference formulation in reference.py."""

import math

import pytest
import torch

from tests.helpers.models import tiny_model
from tests.model.reference import reference_logits


def _perturb_norms(model):
    """Norm weights start at 1; random gains make sure each norm is used where the equations say."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.5 + torch.rand_like(p))


def _check(model, kinds):
    _perturb_norms(model)
    model.eval()
    ids = torch.randint(0, model.config.vocab_size, (10,))
    got = model(input_ids=ids[None]).logits[0].double()
    want = reference_logits(model, ids, kinds)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("norm_type", ["pre_ln", "post_ln", "lns", "deepnorm", "sandwich_ln", "peri_ln"])
def test_placement_matches_reference(norm_type):
    model = tiny_model(norm_type=norm_type)
    kind = {"sandwich_ln": "sandwich", "peri_ln": "sandwich"}.get(norm_type, norm_type)
    _check(model, [kind] * model.config.num_hidden_layers)


@pytest.mark.parametrize("layers,ratio,n_post", [(4, 0.25, 1), (8, 0.25, 2), (12, 0.25, 3), (6, 0.5, 3),
                                                 (5, 0.0, 0), (5, 1.0, 5), (7, 0.3, 2)])
def test_mix_ln_first_floor_ratio_layers_are_post_ln(layers, ratio, n_post):
    assert n_post == math.floor(ratio * layers)
    model = tiny_model(norm_type="mix_ln", num_hidden_layers=layers, mix_ln_ratio=ratio)
    kinds = ["post_ln"] * n_post + ["pre_ln"] * (layers - n_post)
    assert [layer.placement for layer in model.model.layers] == kinds
    if layers <= 6:
        _check(model, kinds)


def test_lns_scale_is_one_over_sqrt_depth_and_final_norm_unscaled():
    model = tiny_model(norm_type="lns", num_hidden_layers=5)
    assert [layer.lns_scale for layer in model.model.layers] == [1 / math.sqrt(d) for d in range(1, 6)]
    # The scale is a plain float: it survives meta-device construction + to_empty().
    assert not any("scale" in name for name, _ in model.named_buffers())
    # Final norm unscaled: output = RMSNorm(last layer's output), no 1/sqrt(L + 1) or other factor.
    out = model.model(input_ids=torch.randint(0, 96, (1, 8)), output_hidden_states=True)
    x_last, eps = out.hidden_states[-1], model.config.rms_norm_eps
    want = model.model.norm.weight * x_last / torch.sqrt(x_last.pow(2).mean(-1, keepdim=True) + eps)
    torch.testing.assert_close(out.last_hidden_state, want, rtol=1e-5, atol=1e-6)


def test_lns_differs_from_pre_ln_only_by_the_scale():
    """Same weights; at depth 1 the factor is 1, so a 1-layer LNS model equals Pre-LN exactly."""
    lns, pre = tiny_model(norm_type="lns", num_hidden_layers=1), tiny_model(norm_type="pre_ln", num_hidden_layers=1)
    pre.load_state_dict(lns.state_dict())
    ids = torch.randint(0, 96, (2, 9))
    torch.testing.assert_close(lns(input_ids=ids).logits, pre(input_ids=ids).logits, rtol=0, atol=0)
    lns2, pre2 = tiny_model(norm_type="lns", num_hidden_layers=2), tiny_model(norm_type="pre_ln", num_hidden_layers=2)
    pre2.load_state_dict(lns2.state_dict())
    assert not torch.allclose(lns2(input_ids=ids).logits, pre2(input_ids=ids).logits)


def test_extra_norms_get_new_names_and_llama_names_are_kept():
    llama_names = set(tiny_model(norm_type="pre_ln").state_dict())
    for norm_type, extra in [("sandwich_ln", {"post_attn_out_norm", "post_mlp_out_norm"}),
                             ("peri_ln", {"post_attn_out_norm", "post_mlp_out_norm", "embed_norm"})]:
        names = set(tiny_model(norm_type=norm_type).state_dict())
        assert llama_names <= names
        added = {n.split(".")[-2] for n in names - llama_names}
        assert added == extra
