"""DenseFormer (Pagliardini et al. 2024, arXiv 2402.02622): after block i, the stream the next block reads is a
depth-weighted average (DWA) of the embedding and every block output so far, X_i = sum_{j<=i} alpha_ij B_j (B_0 the
embedding output, B_i = block i applied to X_{i-1} with its placement's own residual sums), the weights
initialized to the identity (alpha_ii = 1, the rest 0: a plain model at init). The k x p variant
(`denseformer_dilation` k, `denseformer_period` p): a DWA follows every p-th block only (the others pass B_i on),
and reads only the depths j with i - j divisible by k. The machinery (the history stream, the averages) is
`cod_train.model.denseformer`."""

from __future__ import annotations

from typing import Any

from cod_train.model.zoo import Residual, axis, register_residual

KEYS = ("denseformer_dilation", "denseformer_period")


@register_residual
class DenseFormer(Residual):
    name = "denseformer"
    keys = KEYS
    label_keys = KEYS
    summary = "a learned depth-weighted average of the embedding and every earlier block output after each block"
    equations = ("B_i = block_i(X_{i-1}),  X_i = sum_{j<=i, (i-j) mod k = 0} alpha_ij B_j after every p-th block "
                 "(else X_i = B_i); B_0 = embedding; init alpha_ii = 1, others 0")
    paper = "Pagliardini et al. 2024, arXiv 2402.02622"
    layer_reads_history = True
    placements = ("pre_ln", "lns")
    placement_reason = "Pre-LN blocks (the paper's; each sub-layer reads the stream through its own norm)"

    def label(self, axes: Any) -> str:
        k, p = axis(axes, "denseformer_dilation"), axis(axes, "denseformer_period")
        return "denseformer" if (k, p) == (1, 1) else f"denseformer{k}x{p}"

    def key_problems(self, axes: Any) -> list[str]:
        problems = []
        for key in KEYS:
            value = axis(axes, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{key} must be a positive integer (the paper's k x p DenseFormers use 1 to 8), "
                                f"got {value!r}")
            elif value != 1 and axis(axes, "residual") != self.name:
                problems.append(f"{key}={value} belongs to residual=denseformer")
        return problems

    def card_axes(self, axes: Any) -> dict[str, Any]:
        return {key: axis(axes, key) for key in KEYS}

    def card_phrase(self, axes: Any) -> str:
        k, p = axis(axes, "denseformer_dilation"), axis(axes, "denseformer_period")
        return (f"residual `denseformer`, a {k}x{p}-DenseFormer (a learned depth-weighted average of the earlier "
                "block outputs after each block)")

    def build_layer(self, block: Any, config: Any) -> None:
        from cod_train.model.denseformer import DepthWeightedAverage, dwa_sources, has_dwa

        if has_dwa(block.depth, config.denseformer_period):
            block.denseformer_dwa = DepthWeightedAverage(dwa_sources(block.depth, config.denseformer_dilation))

    def layer_forward(self, b: Any, x: Any, attn: Any) -> Any:
        from cod_train.model.denseformer import dense_block

        return dense_block(b, x, attn)

    def open(self, model: Any, x: Any) -> Any:
        from cod_train.model.denseformer import open_history

        return open_history(x)

    def close(self, model: Any, stream: Any) -> Any:
        from cod_train.model.denseformer import current

        return current(stream)

    def extra_macs(self, config: Any) -> int:
        """One multiply-add per source and channel in each average."""
        from cod_train.model.denseformer import dwa_sources, has_dwa

        k, p, L = config.denseformer_dilation, config.denseformer_period, config.num_hidden_layers
        return sum(len(dwa_sources(i, k)) for i in range(1, L + 1) if has_dwa(i, p)) * config.hidden_size

    def learned_scalars(self, backbone: Any, value: Any = None, batch: Any = None) -> dict[str, Any]:
        """Per layer: the average's weight on the block's own output and on the embedding (None: no average
        there, or the embedding is not among its sources); nothing depends on the input."""
        if batch is not None:
            return {}
        from cod_train.model.denseformer import dwa_weights

        rows = dwa_weights(backbone, value)
        return {"denseformer_dwa.self": [None if r is None else r[i + 1] for i, r in enumerate(rows)],
                "denseformer_dwa.embed": [None if r is None or r[0] is None else r[0] for r in rows]}

    def analyses(self, backbone: Any, batch: Any) -> dict[str, Any]:
        """cod-analyze: the full weight matrix, row l = the average after layer l over depths 0..l (None: not a
        source, or no average after that layer)."""
        from cod_train.model.denseformer import dwa_weights

        return {"denseformer_weights": dwa_weights(backbone)}
