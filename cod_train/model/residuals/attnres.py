"""Attention Residuals (Kimi Team 2026, arXiv 2603.15031): the input of each sub-layer is a softmax-weighted sum
over earlier outputs, h = sum_i alpha_i v_i, alpha = softmax_i(w . RMSNorm(v_i)), with one learned pseudo-query
w per sub-layer (init 0: uniform weights) and the key norm's weight g (init 1). Full AttnRes (`attnres`): the
sources are the embedding and every earlier sub-layer output. Block AttnRes (`block_attnres`): layers grouped into
`attnres_blocks` blocks, standard residuals inside a block (its sub-layers add into the block's partial sum), and
the attention over the embedding, the completed blocks and the partial sum. The final norm reads one more
aggregation with its own pseudo-query (`attnres_out`). Defined on Pre-Norm blocks (pre_ln, lns), as the paper.

The stream is the history of outputs (`cod_train.model.history.ResidualHistory`); the modules are
`cod_train.model.attn_res`. Removing layer l (the depth diagnostics) = its outputs never enter the stream: later
readers attend over the remaining sources (Block AttnRes: its block's sum lacks its outputs), each keeping its own
pseudo-query.
"""

from __future__ import annotations

from typing import Any

from cod_train.model.zoo import AXIS_DEFAULTS, Residual, axis, register_residual


@register_residual
class AttnRes(Residual):
    name = "attnres"
    figures = {"attention_residuals": "cod_train.report.plots:plot_depth_attention"}
    title = "Attention Residuals"
    summary = "each sub-layer reads a softmax over depth: all earlier outputs, one learned pseudo-query each"
    equations = ("h_k = sum_i softmax_i(w_k . RMSNorm(v_i)) v_i over v_0 = embedding, v_i = F_i(N(h_i)); "
                 "w_k init 0")
    paper = "Kimi Team 2026, arXiv 2603.15031"
    tags = ("attention-residuals",)
    placements = ("pre_ln", "lns")
    placement_reason = "Pre-Norm blocks (the AttnRes paper)"
    layer_reads_history = True

    def key_problems(self, axes: Any) -> list[str]:
        if self.name != "attnres":  # attnres_blocks is checked once, here
            return []
        blocks, chosen = axis(axes, "attnres_blocks"), axis(axes, "residual")
        problems = []
        if not isinstance(blocks, int) or isinstance(blocks, bool) or blocks < 1:
            problems.append(f"attnres_blocks must be a positive integer (the paper: about 8), got {blocks!r}")
        elif blocks != AXIS_DEFAULTS["attnres_blocks"] and chosen != "block_attnres":
            problems.append(f"attnres_blocks={blocks} belongs to residual=block_attnres")
        return problems

    def slot(self, depth: int, config: Any) -> int | None:
        """Where the layer at 1-based `depth` writes: None = appended (full AttnRes)."""
        return None

    def slots(self, config: Any) -> int:
        """The stream's slots at the first layer (the embedding, then empty blocks)."""
        return 1

    def build_layer(self, block: Any, config: Any) -> None:
        from cod_train.model.attn_res import DepthAttention

        block.attnres_attn, block.attnres_mlp = DepthAttention(config.hidden_size), DepthAttention(config.hidden_size)
        block.attnres_slot, block.attnres_eps = self.slot(block.depth, config), float(config.rms_norm_eps)

    def build_model(self, model: Any, config: Any) -> None:
        from cod_train.model.attn_res import DepthAttention

        model.attnres_out = DepthAttention(config.hidden_size)

    def layer_forward(self, b: Any, x: Any, attn: Any) -> Any:
        from cod_train.model.attn_res import attn_res_layer

        return attn_res_layer(b, x, attn)

    def open(self, model: Any, x: Any) -> Any:
        from cod_train.model.attn_res import open_attn_res_history

        return open_attn_res_history(x, self.slots(model.config), float(model.config.rms_norm_eps))

    def close(self, model: Any, stream: Any) -> Any:
        return model.attnres_out(stream)[0]

    def label(self, axes: Any) -> str:
        return self.name

    def card_phrase(self, axes: Any) -> str:
        return f"residual `{self.name}`, {self.title} (a softmax over depth before every sub-layer and the final norm)"

    def sources(self, config: Any) -> int:
        """Source slots of the last read (embedding included)."""
        return 2 * config.num_hidden_layers + 1

    def extra_macs(self, config: Any) -> int:
        """Per read: a dot product and a weighted sum per source (2 d each); per write: its RMS (d). Full: reader k
        reads k + 1 sources."""
        d, L = config.hidden_size, config.num_hidden_layers
        reads = sum(k + 1 for k in range(2 * L + 1))
        return 2 * d * reads + d * (2 * L + 1)

    def learned_scalars(self, backbone: Any, value: Any = None, batch: Any = None) -> dict[str, Any]:
        from cod_train.model.attn_res import attn_res_query_norms, record_attn_res_weights

        out = attn_res_query_norms(backbone, value)
        if batch is not None:
            out.update(record_attn_res_weights(backbone, batch).stats())
        return out

    def recorder(self, backbone: Any, mask: Any) -> Any:
        from cod_train.model.attn_res import AttnResWeights

        return AttnResWeights(backbone, mask)

    def analyses(self, backbone: Any, batch: Any) -> dict[str, Any]:
        """`attnres_weight_map` [2L + 1 readers][sources]: the token mean of each reader's weight per source slot
        (None: not read), `attnres_weight_spread` its token standard deviation, `attnres_sources` what a slot is."""
        from cod_train.model.attn_res import record_attn_res_weights

        maps = record_attn_res_weights(backbone, batch).maps()
        if maps is None:
            return {}
        return {"attnres_weight_map": maps[0], "attnres_weight_spread": maps[1], "attnres_sources": self.name}


@register_residual
class BlockAttnRes(AttnRes):
    name = "block_attnres"
    title = "Block Attention Residuals"
    summary = "layers in blocks: standard residuals inside, a softmax over the block sums (and the partial sum) across"
    equations = ("b_n = sum of block n's sub-layer outputs; h_k = sum_j softmax_j(w_k . RMSNorm(b_j)) b_j over "
                 "b_0 = embedding, the completed blocks and the partial b_n; w_k init 0")
    keys = ("attnres_blocks",)
    label_keys = ("attnres_blocks",)

    def label(self, axes: Any) -> str:
        return f"{self.name}{axis(axes, 'attnres_blocks')}"

    def shape_problems(self, axes: Any, num_hidden_layers: int) -> list[str]:
        blocks = axis(axes, "attnres_blocks")
        if isinstance(blocks, int) and blocks > num_hidden_layers:
            return [f"attnres_blocks={blocks} exceeds num_hidden_layers={num_hidden_layers}: use at most "
                    f"{num_hidden_layers} (one layer per block) or residual=attnres (one source per sub-layer)"]
        return []

    def slot(self, depth: int, config: Any) -> int | None:
        """Block n = 1..N of the layer at 1-based `depth` (layers split into N contiguous, near-equal blocks)."""
        return (depth - 1) * config.attnres_blocks // config.num_hidden_layers + 1

    def slots(self, config: Any) -> int:
        return config.attnres_blocks + 1

    def sources(self, config: Any) -> int:
        return config.attnres_blocks + 1

    def card_axes(self, axes: Any) -> dict[str, Any]:
        return {"attnres_blocks": axis(axes, "attnres_blocks")}

    def extra_macs(self, config: Any) -> int:
        """Each of the 2L + 1 reads over at most N + 1 sources (2 d each); each write adds into its block and
        takes the block's RMS (2 d)."""
        d, L, n = config.hidden_size, config.num_hidden_layers, config.attnres_blocks
        reads = sum(min(self.slot(k // 2 + 1, config) or 0, n) + 1 for k in range(2 * L)) + n + 1
        return 2 * d * reads + 2 * d * 2 * L
