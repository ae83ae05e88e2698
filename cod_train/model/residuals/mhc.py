"""Manifold-constrained Hyper-Connections (mHC; Xie et al., DeepSeek, arXiv 2512.24880): hyper-connections
whose stream mixing is doubly stochastic (Sinkhorn-Knopp, `hc_sinkhorn_iters`) and whose weights are always
input-dependent; the streams collapse through a learned head (`hc_head`, DeepSeek-V4) by default."""

from __future__ import annotations

from typing import Any

from cod_train.model.residuals.hc import HyperConnections
from cod_train.model.zoo import axis, register_residual


@register_residual
class ManifoldHyperConnections(HyperConnections):
    name = "mhc"
    keys = ("hc_streams", "hc_sinkhorn_iters", "hc_collapse")
    summary = "hyper-connections with a doubly stochastic stream mixing (Sinkhorn-Knopp)"
    title = "manifold-constrained Hyper-Connections (mHC)"
    equations = "h = pre^T H,  H' = res^T H + post^T F(h),  res doubly stochastic (Sinkhorn-Knopp)"
    paper = "Xie et al. 2025, arXiv 2512.24880"
    default_collapse = "head"

    def key_problems(self, axes: Any) -> list[str]:
        iters = axis(axes, "hc_sinkhorn_iters")
        if isinstance(iters, int) and iters >= 1:
            return []
        return [f"hc_sinkhorn_iters must be a positive integer (mHC uses 20), got {iters!r}"]

    def card_axes(self, axes: Any) -> dict[str, Any]:
        return {"hc_streams": axis(axes, "hc_streams"), "hc_collapse": axis(axes, "hc_collapse") or "head",
                "hc_sinkhorn_iters": axis(axes, "hc_sinkhorn_iters")}

    def connection(self, config: Any, sublayer: int) -> Any:
        from cod_train.model.hyper_connections import ManifoldHyperConnection

        return ManifoldHyperConnection(config)

    def weight_macs(self, config: Any) -> int:
        n, d = config.hc_streams, config.hidden_size
        return n * d * (n + 2) * n
