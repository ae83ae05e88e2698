"""Hyper-Connections (Zhu et al., ICLR 2025, arXiv 2409.19606): n = `hc_streams` residual streams H; each
sub-layer F reads h = pre^T H and writes H' = res^T H + post^T F(h), static (SHC) or input-dependent
(`hc_dynamic`, DHC). Defined on Pre-Norm blocks (pre_ln, lns). The machinery (weights, fp32 read / write,
memory) is `cod_train.model.hyper_connections`; mHC (`residual=mhc`) is its subclass in `mhc.py`."""

from __future__ import annotations

from typing import Any, ClassVar

from cod_train.model.zoo import Residual, axis, register_residual

HC_COLLAPSES = ("sum", "mean", "head")


@register_residual
class HyperConnections(Residual):
    name = "hc"
    figures = {"hyper_connections": "cod_train.report.plots:plot_hyper_connections"}
    keys = ("hc_streams", "hc_dynamic", "hc_collapse")
    label_keys = ("hc_dynamic", "hc_streams")
    summary = "n parallel residual streams with learned read / write / mix weights"
    title = "Hyper-Connections"
    tags = ("hyper-connections",)
    equations = "h = pre^T H,  H' = res^T H + post^T F(h)  (n = hc_streams streams H)"
    paper = "Zhu et al. 2025, arXiv 2409.19606"
    multi_stream = True
    placements = ("pre_ln", "lns")
    placement_reason = "Pre-Norm blocks (the HC / mHC papers)"
    default_collapse: ClassVar[str] = "sum"  # the HC paper sums the streams before the final norm

    def label(self, axes: Any) -> str:
        dynamic = "d" if axis(axes, "hc_dynamic") and self.name == "hc" else ""
        return f"{dynamic}{self.name}{axis(axes, 'hc_streams')}"

    def key_problems(self, axes: Any) -> list[str]:
        if self.name != "hc":  # the keys shared with mhc are checked once, here
            return []
        problems, chosen = [], axis(axes, "residual")
        collapse, streams = axis(axes, "hc_collapse"), axis(axes, "hc_streams")
        if axis(axes, "hc_dynamic") and chosen != "hc":
            problems.append("hc_dynamic=true (input-dependent HC weights) belongs to residual=hc; mhc is always "
                            "dynamic")
        if collapse is not None and chosen not in ("hc", "mhc"):
            problems.append(f"hc_collapse={collapse} belongs to residual=hc or mhc")
        if collapse is not None and collapse not in HC_COLLAPSES:
            problems.append(f"unknown hc_collapse {collapse!r}; valid: {', '.join(HC_COLLAPSES)}")
        if not isinstance(streams, int) or streams < 1:
            problems.append(f"hc_streams must be a positive integer (the HC papers use 2 to 8), got {streams!r}")
        return problems

    def collapse(self, config: Any) -> str:
        """How the streams become one before the final norm (`hc_collapse`; null = the scheme's own)."""
        return config.hc_collapse if config.hc_collapse is not None else self.default_collapse

    def card_phrase(self, axes: Any) -> str:
        return (f"residual `{self.name}`, {self.title} over {axis(axes, 'hc_streams')} residual streams (collapsed "
                f"into one by `{axis(axes, 'hc_collapse') or self.default_collapse}` before the final norm)")

    def card_axes(self, axes: Any) -> dict[str, Any]:
        collapse = axis(axes, "hc_collapse") or self.default_collapse
        return {"hc_streams": axis(axes, "hc_streams"), "hc_collapse": collapse,
                "hc_dynamic": axis(axes, "hc_dynamic")}

    def connection(self, config: Any, sublayer: int) -> Any:
        from cod_train.model.hyper_connections import HyperConnection

        return HyperConnection(config, sublayer)

    def build_layer(self, block: Any, config: Any) -> None:
        k = 2 * (block.depth - 1)
        block.attn_hc, block.mlp_hc = self.connection(config, k), self.connection(config, k + 1)

    def build_model(self, model: Any, config: Any) -> None:
        from cod_train.model.hyper_connections import HyperHead

        model.hc_head = HyperHead(config, self.collapse(config))

    def layer_forward(self, b: Any, x: Any, attn: Any) -> Any:
        from cod_train.model.hyper_connections import hyper_block

        return hyper_block(b, x, attn)

    def open(self, model: Any, x: Any) -> Any:
        return model.hc_head.expand(x, model.config.hc_streams)

    def close(self, model: Any, stream: Any) -> Any:
        return model.hc_head(stream)

    def weight_macs(self, config: Any) -> int:
        """Multiply-adds per token of one sub-layer's input-dependent weights."""
        n, d = config.hc_streams, config.hidden_size
        return n * d * (n + 2) if config.hc_dynamic else 0

    def extra_macs(self, config: Any) -> int:
        """Per sub-layer: the read (n d), the mix (n^2 d), the write (n d) and the weights; then the collapse."""
        n, d, L = config.hc_streams, config.hidden_size, config.num_hidden_layers
        per_sublayer = n * d + n * n * d + n * d + self.weight_macs(config)
        collapse = n * d * n + n * d if self.collapse(config) == "head" else n * d
        return 2 * L * per_sublayer + collapse

    def learned_scalars(self, backbone: Any, value: Any = None, batch: Any = None) -> dict[str, Any]:
        from cod_train.model.hyper_connections import hyper_connection_stats

        return hyper_connection_stats(backbone, batch, value=value)

    def recorder(self, backbone: Any, mask: Any) -> Any:
        from cod_train.model.hyper_connections import WeightMeans

        return WeightMeans(backbone, mask)

    def analyses(self, backbone: Any, batch: Any) -> dict[str, Any]:
        from cod_train.model.hyper_connections import hyper_connection_map

        return {"hc_connection_map": hyper_connection_map(backbone, batch)}
