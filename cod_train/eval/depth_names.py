"""Names of the depth analyses and their files (no torch import: cod-report reads these too)."""

from __future__ import annotations

# diagnostic name (analyze.diagnostics) -> file stem under run_dir/analysis/
DIAG_FILES = {
    "variance": "layer_variance",
    "angular": "angular_distance",
    "pruning": "layer_pruning",
    "grad_norms": "grad_norms",
    "block_influence": "block_influence",
    "logit_lens": "logit_lens",
    "sublayer": "sublayer_contribution",
    "skip_effect": "skip_effect",
}
SUMMARY_FILE = "depth_summary"  # analysis/depth_summary.json: one summary per model (depth_summary.py)
