"""The depth diagnostics, each declared once: its name (``analyze.diagnostics``), its file under
``run_dir/analysis/``, its figure, its report section, its keys in ``metrics.jsonl`` and how it is computed.

No torch import: cod-report and the config check read this. The computation of a ``capture`` diagnostic is a
class in :mod:`cod_train.eval.depth_capture` named by ``accumulator``: ``per_batch(capture)`` adds one batch of
the shared hooked forward, ``finish()`` reduces to the JSON entry; training logs the entry's fields named in
``metrics``. ``removal`` diagnostics share the prefix-cached sweep (:mod:`cod_train.eval.depth_cache`),
``gradients`` runs backward passes (:func:`cod_train.eval.diagnostics.layer_grad_norms`).
"""

from __future__ import annotations

from dataclasses import dataclass

DIAG_PREFIX = "diag/"
SUMMARY_FILE = "depth_summary"  # analysis/depth_summary.json: one summary per model (depth_summary.py)


@dataclass(frozen=True)
class Diagnostic:
    name: str  # analyze.diagnostics=[...]
    file: str  # run_dir/analysis/<file>.json and .png; the JSON's "diagnostic"
    source: str  # "capture" (one hooked forward per batch), "removal" or "gradients"
    plot: str | None  # the figure: a function of cod_train.report.plots (entries, path) -> path | None
    title: str  # cod-report's section heading
    about: str  # cod-report's one-paragraph explanation
    accumulator: str | None = None  # capture: the class in cod_train.eval.depth_capture
    metrics: tuple[tuple[str, str], ...] = ()  # training: (metrics.jsonl key, field of finish()'s entry)


DIAGNOSTICS: tuple[Diagnostic, ...] = (
    Diagnostic(
        "variance", "layer_variance", "capture", "plot_layer_variance", "Per-layer output variance",
        "Variance of the residual stream after each layer; under Pre-LN it grows with depth, LNS bounds it.",
        accumulator="LayerVariance", metrics=(("diag/layer_var", "layer_var"),),
    ),
    Diagnostic(
        "angular", "angular_distance", "capture", "plot_angular_heatmaps", "Angular distance between layers",
        "arccos(cos(h_l, h_{l+n}))/pi on the last token; near 0 = the block of n layers barely changes it.",
        accumulator="AngularDistance",
    ),
    Diagnostic(
        "pruning", "layer_pruning", "removal", "plot_pruning", "Layer pruning",
        "Perplexity increase when one layer is removed; near 0 = the layer can be dropped at little cost.",
    ),
    Diagnostic(
        "grad_norms", "grad_norms", "gradients", "plot_grad_norms", "Gradient norm per layer",
        "L2 norm of each layer's parameter gradients on held-out text.",
        metrics=(("diag/layer_grad_norm", "layer_grad_norm"),),  # training: the step's own gradients
    ),
    Diagnostic(
        "block_influence", "block_influence", "capture", "plot_block_influence", "Block Influence (ShortGPT)",
        "BI_l = 1 - cos(h_{l-1}, h_l) over all tokens; near 0 = the layer barely turns the residual stream.",
        accumulator="BlockInfluence", metrics=(("diag/bi", "bi"),),
    ),
    Diagnostic(
        "logit_lens", "logit_lens", "capture", "plot_logit_lens", "Logit lens",
        "The final norm and lm_head applied to each layer's output: KL to the final prediction and top-1 "
        "agreement with it; the dotted line is the settling layer (agreement >= 50% from there on).",
        accumulator="LogitLens",
        metrics=(("diag/lens_kl", "kl"), ("diag/lens_top1", "top1"), ("diag/settling_depth", "settling_depth")),
    ),
    Diagnostic(
        "sublayer", "sublayer_contribution", "capture", "plot_sublayer", "Sub-layer contribution (Csordas et al.)",
        "||F(x)|| / ||x|| and cos(F(x), x) of the attention (left) and MLP (right) sub-layers, x the sub-layer's "
        "input (for hyper-connection models its own read of the streams, docs/depth.md): how much each writes, "
        "and whether it points along x (cos > 0) or against it (cos < 0).",
        accumulator="SublayerContribution",
        metrics=tuple((f"diag/{k}", k) for k in ("attn_ratio", "attn_cos", "mlp_ratio", "mlp_cos")),
    ),
    Diagnostic(
        "skip_effect", "skip_effect", "removal", "plot_skip_effect", "Skip effect",
        "Removing layer l: relative change of each later layer's output, and KL of the final distribution.",
    ),
)  # fmt: skip

NAMES = tuple(d.name for d in DIAGNOSTICS)
DIAG_FILES = {d.name: d.file for d in DIAGNOSTICS}  # name -> file stem under run_dir/analysis/
IN_TRAINING = tuple(d for d in DIAGNOSTICS if d.metrics)  # logged every train.diag_every steps


def diagnostic(name: str) -> Diagnostic:
    """The diagnostic called ``name``; ValueError listing the valid names."""
    for entry in DIAGNOSTICS:
        if entry.name == name:
            return entry
    raise ValueError(f"unknown diagnostic {name!r}; valid: {', '.join(NAMES)}")


def unknown_names(names: list[str] | tuple[str, ...]) -> list[str]:
    """The names in ``names`` that are no diagnostic, sorted."""
    return sorted(set(names) - set(NAMES))
