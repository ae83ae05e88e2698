"""The residual schemes (`residual`): one module each, registered in `cod_train.model.zoo` on import (in this
order, the order of error messages and tables)."""

import importlib

BUILT_IN = ("plain", "layerscale", "rezero", "depth_scaled", "gpas", "hc", "mhc", "attnres", "denseformer")

for _name in BUILT_IN:
    importlib.import_module(f"{__name__}.{_name}")
