"""The placements (`norm_type`): one module each, registered in `cod_train.model.zoo` on import (in this order,
the order of error messages and tables)."""

import importlib

BUILT_IN = ("pre_ln", "post_ln", "mix_ln", "lns", "deepnorm", "sandwich_ln", "peri_ln", "reordered_ln", "hybrid_ln",
            "hybrid_ln_star", "ngpt")

for _name in BUILT_IN:
    importlib.import_module(f"{__name__}.{_name}")
