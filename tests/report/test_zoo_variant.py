"""cod-report names each run by its whole depth-zoo scheme, so lns and lns + GPAS are two rows."""

from pathlib import Path

import pytest

from cod_train.report.runs import RunData


@pytest.mark.parametrize("model,want", [
    ({"norm_type": "lns"}, "lns"),
    ({"norm_type": "lns", "residual": "gpas", "qk_norm": "head", "norm_fn": "rmsnorm"}, "lns+gpas+qk_head"),
    ({"norm_type": "mix_ln", "norm_fn": "dyt", "mix_ln_ratio": 0.5, "qk_norm": None}, "mix_ln+dyt (ratio 0.5)"),
    ({"norm_type": "hybrid_ln", "qk_norm": "head"}, "hybrid_ln"),  # head is HybridNorm's own q/k/v norm
    ({"norm_type": "pre_ln", "residual": "depth_scaled", "depth_alpha": 0.5}, "pre_ln+depth0.5"),
])
def test_variant_names_the_scheme(model, want):
    assert RunData(path=Path("r"), label="r", config={"model": model}).variant == want
